"""Decoding that keeps up with the model: prefetching workers, and decoded copies for training.

:func:`load_batches` yields the samples of consecutive index groups (batches). For image files
it decodes them in ``torch.utils.data.DataLoader`` worker processes, a few batches ahead, so
that JPEG decoding and resizing overlap the model's work; the batches and their order are the
same as decoding them one by one (unreadable files are skipped and recorded in the split's
``skipped`` by the main process). In-memory splits need no decoding.

:func:`decoded` gives a training loop that revisits a split every epoch an in-memory copy of it:
every image decoded once (with the workers) and preprocessed to the model's input, stored as
uint8 like any in-memory split, when it fits ``max_bytes``; unreadable images are left out.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from .datasets.base import DatasetSplit, Sample, TensorSplit
from .datasets.folder import CorruptImage, ImageFileSplit
from .log import bar

log = logging.getLogger(__name__)

#: decoded training copies up to this size are kept in memory
DECODED_MAX_BYTES = 4 * 2**30


def default_workers() -> int:
    return min(4, max(1, (os.cpu_count() or 1) // 2))


def decode(split: DatasetSplit, indices: Sequence[int]) -> Tuple[List[Sample], List[Tuple[str, str]]]:
    """The readable samples of ``indices`` and the (path, reason) of the unreadable ones."""
    samples, skipped = [], []
    for i in indices:
        try:
            samples.append(split[int(i)])
        except CorruptImage as exc:
            skipped.append((exc.path, exc.reason))
    return samples, skipped


class _Groups(torch.utils.data.Dataset):
    def __init__(self, split: DatasetSplit, groups: Sequence[Sequence[int]]) -> None:
        self.split, self.groups = split, list(groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int):
        return decode(self.split, self.groups[k])


def _identity(item):
    return item


def load_batches(
    split: DatasetSplit, groups: Sequence[Sequence[int]], workers: Optional[int] = None
) -> Iterator[List[Sample]]:
    """The readable samples of each index group, in order (decoded ahead by worker processes)."""
    workers = default_workers() if workers is None else workers
    if not isinstance(split, ImageFileSplit) or workers == 0 or len(groups) < 2:
        items = (decode(split, g) for g in groups)
    else:
        items = torch.utils.data.DataLoader(
            _Groups(split, groups),
            batch_size=None,
            num_workers=workers,
            prefetch_factor=2,
            collate_fn=_identity,
        )
    known = {p for p, _ in split.skipped}
    for samples, skipped in items:
        for path, reason in skipped:
            if path not in known:
                split.skipped.append((path, reason))
                known.add(path)
        yield samples


_DECODED: dict = {}


def decoded(split: DatasetSplit, max_bytes: int = DECODED_MAX_BYTES) -> DatasetSplit:
    """An in-memory copy of an image-file split at its model's input size (uint8), or the split
    itself when it already is in memory or its copy would exceed ``max_bytes``."""
    if not isinstance(split, ImageFileSplit) or split.transform is None:
        return split
    h, w = split.transform.input_size
    if len(split) * 3 * h * w > max_bytes:
        log.info(
            f"{split.name}/{split.split}: too large to keep decoded ({len(split)} images); decoding per batch"
        )
        return split
    key = (split.fingerprint(), split.transform)
    if key not in _DECODED:
        groups = [list(range(s, min(len(split), s + 64))) for s in range(0, len(split), 64)]
        samples = [
            s
            for batch in bar(load_batches(split, groups), total=len(groups), desc="decoding images")
            for s in batch
        ]
        images = torch.stack([(s.image * 255).round().to(torch.uint8) for s in samples])
        masks = torch.stack([s.mask for s in samples]) if split.has_masks else None
        labels = torch.tensor([s.label for s in samples])
        copy = TensorSplit(
            split.name, split.split, split.classes, images, labels, [s.id for s in samples], masks
        )
        copy.skipped = list(split.skipped)
        copy.imagenet_indices = getattr(split, "imagenet_indices", None)
        _DECODED[key] = copy
    return _DECODED[key]
