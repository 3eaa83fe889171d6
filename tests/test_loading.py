"""Prefetching decoding gives exactly the serial batches; decoded training copies match."""

from __future__ import annotations

import torch
from test_real_datasets import make_imagenette

from xaibench.datasets import load_dataset
from xaibench.datasets.folder import Preprocessing, attach_preprocessing
from xaibench.loading import decode, decoded, load_batches


class _Size:
    input_size = (32, 32)


def _split(tmp_path):
    root = make_imagenette(tmp_path / "d", n_train=2, n_val=3)
    bad = root / "val" / "n03888257" / "broken.JPEG"
    bad.write_bytes(b"not an image")
    split = attach_preprocessing(load_dataset("imagenette", "test", data_root=str(root)), _Size())
    return split, str(bad)


def test_worker_batches_equal_serial_decoding(tmp_path):
    split, bad = _split(tmp_path)
    groups = [list(range(s, min(len(split), s + 4))) for s in range(0, len(split), 4)]
    serial = [decode(split, g)[0] for g in groups]
    parallel = list(load_batches(split, groups, workers=2))
    assert [[s.id for s in b] for b in parallel] == [[s.id for s in b] for b in serial]
    for a, b in zip(parallel, serial):
        assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))
    assert split.skipped == [(bad, split.skipped[0][1])]  # recorded once, by the main process
    assert sum(len(b) for b in parallel) == len(split) - 1


def test_decoded_copy_is_the_preprocessed_images(tmp_path):
    split, _ = _split(tmp_path)
    copy = decoded(split)
    assert copy is not split and len(copy) == len(split) - 1
    first = split[0]
    assert copy.ids[0] == first.id and copy.labels[0] == first.label
    assert (copy[0].image - first.image).abs().max() <= 0.5 / 255 + 1e-6  # uint8 rounding only
    assert decoded(split) is copy  # decoded once per process
    assert decoded(split, max_bytes=10) is split  # too large: stays on disk
    assert isinstance(split.transform, Preprocessing)
