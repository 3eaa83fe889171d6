"""Real datasets (imagenette, pets, mura) on small copies built here in the published layouts.

Nothing touches the network: archives are served from ``file://`` URLs (with the pinned checksum
monkeypatched to the test archive's) or read through ``--data-root``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from xaibench import cli
from xaibench.datasets import imagenette, load_dataset, pets
from xaibench.datasets.download import download, extract_archive
from xaibench.datasets.folder import Preprocessing, read_samples
from xaibench.errors import UserError

TINY = "test_resnet"  # timm's smallest CNN (160×160 input, ~0.5 M parameters)


# ------------------------------------------------------------------------------- builders


def _photo(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_imagenette(root: Path, folder: str = "imagenette2-320", n_train: int = 3, n_val: int = 2) -> Path:
    rng = np.random.default_rng(0)
    base = root / folder
    for wnid in imagenette.WNIDS:
        for split, n in (("train", n_train), ("val", n_val)):
            d = base / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                _photo(rng, 30 + 4 * i, 44).save(d / f"{wnid}_{split}{i}.JPEG", quality=90)
    (base / "noisy_imagenette.csv").write_text("path,noisy_labels_0\n")
    return base


def make_pets(root: Path, n_trainval: int = 2, n_test: int = 1) -> Path:
    """images/<Breed>_<n>.jpg, annotations/{trainval,test}.txt, annotations/trimaps/<Breed>_<n>.png.
    Each trimap: pet rectangle (1), a one-pixel boundary band around it (3), background (2)."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    lists = {"trainval": ["#Image CLASS-ID SPECIES BREED ID"], "test": ["#Image CLASS-ID SPECIES BREED ID"]}
    for cid, breed in enumerate(pets.CLASSES, start=1):
        species = 1 if breed[0].isupper() else 2
        for k in range(1, n_trainval + n_test + 1):
            name = f"{breed}_{k}"
            _photo(rng, 24, 32).save(root / "images" / f"{name}.jpg", quality=90)
            tri = np.full((24, 32), 2, np.uint8)
            tri[5:19, 7:25] = 3
            tri[6:18, 8:24] = 1
            Image.fromarray(tri, mode="L").save(root / "annotations" / "trimaps" / f"{name}.png")
            lists["trainval" if k <= n_trainval else "test"].append(f"{name} {cid} {species} 1")
    for key, lines in lists.items():
        (root / "annotations" / f"{key}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_tar(src: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return archive


def md5(path: Path) -> str:
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def save_tiny_weights(path: Path, num_classes: int = 1000, seed: int = 0) -> Path:
    import timm

    torch.manual_seed(seed)
    torch.save(timm.create_model(TINY, num_classes=num_classes).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def nette_root(tmp_path_factory) -> Path:
    return make_imagenette(tmp_path_factory.mktemp("nette"))


@pytest.fixture(scope="module")
def pets_root(tmp_path_factory) -> Path:
    return make_pets(tmp_path_factory.mktemp("pets"))


@pytest.fixture(scope="module")
def weights1000(tmp_path_factory) -> Path:
    return save_tiny_weights(tmp_path_factory.mktemp("w") / "tiny1000.pt")


# ------------------------------------------------------------------------------- imagenette


def test_imagenette_mapping_matches_the_published_imagenet_indices():
    expected = {
        "tench": 0,
        "English springer": 217,
        "cassette player": 482,
        "chain saw": 491,
        "church": 497,
        "French horn": 566,
        "garbage truck": 569,
        "gas pump": 571,
        "golf ball": 574,
        "parachute": 701,
    }
    assert dict(zip(imagenette.CLASSES, imagenette.IMAGENET_INDICES)) == expected
    from timm.data import ImageNetInfo

    info = ImageNetInfo()  # the WordNet ids must sit at those indices of ImageNet-1k
    assert [info.index_to_label_name(i) for i in imagenette.IMAGENET_INDICES] == list(imagenette.WNIDS)


def test_imagenette_splits_labels_and_lazy_loading(nette_root):
    test = load_dataset("imagenette", "test", data_root=str(nette_root.parent))
    assert len(test) == 20 and test.imagenet_indices == imagenette.IMAGENET_INDICES
    assert sorted(test.labels.tolist()) == sorted(list(range(10)) * 2)
    for rec in test.records:  # the label is the WordNet folder's class
        assert imagenette.CLASSES[rec.label] == imagenette.WNIDS[Path(rec.path).parent.name][0]
    train, val = (load_dataset("imagenette", s, data_root=str(nette_root)) for s in ("train", "val"))
    ids_train, ids_val = {r.id for r in train.records}, {r.id for r in val.records}
    assert not ids_train & ids_val and len(ids_train | ids_val) == 30
    # class-mixed order: the first ten images are not all one class
    assert len(set(test.labels[:10].tolist())) > 3
    assert not hasattr(test, "images")  # nothing decoded up front
    sample = test[0]
    assert sample.image.dtype == torch.float32 and sample.image.shape[0] == 3 and sample.mask is None


def test_imagenette_download_from_file_url_checks_and_extracts(nette_root, tmp_path, monkeypatch):
    archive = make_tar(nette_root, tmp_path / "imagenette2-160.tgz", "imagenette2-160")
    monkeypatch.setitem(imagenette.ARCHIVES, "160", (archive.as_uri(), md5(archive)))
    cache = tmp_path / "cache"
    split = load_dataset("imagenette", "test", cache_dir=str(cache), size="160")
    assert len(split) == 20 and Path(split.root).is_relative_to(cache / "datasets" / "imagenette")
    assert not list((cache / "datasets" / "imagenette" / "downloads").iterdir())  # archive removed after use
    again = load_dataset("imagenette", "test", cache_dir=str(cache), size="160")
    assert [r.id for r in again.records] == [r.id for r in split.records]


def test_checksum_mismatch_removes_the_file_and_extracts_nothing(nette_root, tmp_path, monkeypatch):
    archive = make_tar(nette_root, tmp_path / "imagenette2-320.tgz", "imagenette2-320")
    monkeypatch.setitem(imagenette.ARCHIVES, "320", (archive.as_uri(), "md5:" + "0" * 32))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="checksum mismatch.*removed and nothing was extracted"):
        load_dataset("imagenette", "test", cache_dir=str(cache))
    leftovers = [
        p for p in (cache / "datasets" / "imagenette").rglob("*") if p.is_file() and p.name != ".lock"
    ]
    assert leftovers == []


def test_unsafe_archive_members_are_refused_and_nothing_is_left(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"x"
        info = tarfile.TarInfo("ok/fine.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(data))
    target = tmp_path / "out" / "evil"
    with pytest.raises(UserError, match="outside the target folder"):
        extract_archive(archive, target)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "escaped.txt").exists()
    assert list((tmp_path / "out").iterdir()) == [] and not archive.exists()


def test_download_reuses_a_verified_file_and_refetches_a_damaged_one(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    dest = tmp_path / "d" / "file.bin"
    checksum = "md5:" + hashlib.md5(b"hello").hexdigest()
    download(src.as_uri(), dest, checksum)
    dest.write_bytes(b"hellO")  # damaged in the cache
    download(src.as_uri(), dest, checksum)
    assert dest.read_bytes() == b"hello"


def test_missing_data_messages(tmp_path):
    with pytest.raises(UserError, match="no Imagenette found at --data-root .*train/<wnid>"):
        load_dataset("imagenette", "test", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no Oxford-IIIT Pet found .*trimaps"):
        load_dataset("pets", "test", data_root=str(tmp_path))
    with pytest.raises(UserError, match="stanfordmlgroup.github.io/competitions/mura.*--data-root"):
        load_dataset("mura", "test")
    with pytest.raises(UserError, match="no MURA found"):
        load_dataset("mura", "test", data_root=str(tmp_path))


def _run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_run_imagenette_end_to_end_with_local_weights(nette_root, weights1000, tmp_path, capsys):
    args = [
        "--cache-dir",
        str(tmp_path / "cache"),
        "run",
        "--dataset",
        "imagenette",
        "--model",
        TINY,
        "--methods",
        "random,saliency",
        "--metrics",
        "srg",
        "--data-root",
        str(nette_root),
        "--weights",
        str(weights1000),
        "--n-images",
        "5",
        "--batch-size",
        "4",
        "--cardinalities",
        "3",
        "--out",
        str(tmp_path / "res"),
        "--run-id",
        "r",
        "--quiet",
    ]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    run = tmp_path / "res" / "r"
    cfg = json.loads((run / "config.json").read_text())
    assert (
        cfg["model"]["class_indices"] == imagenette.IMAGENET_INDICES
        and cfg["model"]["head"] == "imagenet subset"
    )
    assert cfg["model"]["input_size"] == [160, 160] and cfg["dataset"]["skipped_files"] == []
    assert cfg["methods"]["saliency"]["status"] == "done" and cfg["methods"]["random"]["status"] == "done"
    scores = pd.read_csv(run / "scores.csv")
    assert set(scores.method) == {"random", "saliency"} and scores.image_id.nunique() == 5
    assert scores.target.between(0, 9).all()  # targets index the 10 dataset classes, not ImageNet's 1000
    test = load_dataset("imagenette", "test", data_root=str(nette_root))
    labels = {r.id: r.label for r in test.records}
    assert len({labels[i] for i in set(scores.image_id)}) == 5  # 5 images of 5 classes: a balanced subset


def test_corrupt_image_is_skipped_and_reported(tmp_path, weights1000, capsys):
    root = make_imagenette(tmp_path / "data", n_train=1, n_val=1)
    bad = root / "val" / "n03888257" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    args = [
        "--cache-dir",
        str(tmp_path / "cache"),
        "run",
        "--dataset",
        "imagenette",
        "--model",
        TINY,
        "--methods",
        "random",
        "--metrics",
        "srg",
        "--data-root",
        str(root),
        "--weights",
        str(weights1000),
        "--cardinalities",
        "3",
        "--out",
        str(tmp_path / "res"),
        "--run-id",
        "r",
        "--quiet",
    ]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    assert "1 unreadable image(s) skipped" in err and str(bad) in err
    cfg = json.loads((tmp_path / "res" / "r" / "config.json").read_text())
    assert [p for p, _ in cfg["dataset"]["skipped_files"]] == [str(bad)]
    scores = pd.read_csv(tmp_path / "res" / "r" / "scores.csv")
    assert scores.image_id.nunique() == 10 and not scores.image_id.str.contains("broken").any()


def test_class_mismatch_says_how_to_fix(nette_root, pets_root, weights1000, tmp_path, capsys):
    w5 = save_tiny_weights(tmp_path / "w5.pt", num_classes=5)
    base = [
        "--cache-dir",
        str(tmp_path / "cache"),
        "run",
        "--model",
        TINY,
        "--methods",
        "random",
        "--metrics",
        "srg",
        "--out",
        str(tmp_path / "res"),
        "--quiet",
    ]
    code, _, err = _run(
        base + ["--dataset", "imagenette", "--data-root", str(nette_root), "--weights", str(w5)], capsys
    )
    assert code == 2 and "5 outputs" in err and "subset head" in err and "train classifier" in err
    code, _, err = _run(
        base + ["--dataset", "pets", "--data-root", str(pets_root), "--weights", str(weights1000)], capsys
    )
    assert code == 2 and "37 classes that are not ImageNet classes" in err and "--weights" in err
    assert "xaibench train classifier --dataset pets --model test_resnet" in err


# ------------------------------------------------------------------------------- pets


def test_pets_trimaps_become_masks_with_the_documented_boundary(pets_root):
    test = load_dataset("pets", "test", data_root=str(pets_root))
    assert len(test) == 37 and test.has_masks and test.num_classes == 37
    s = test[0]
    expected = torch.zeros(24, 32, dtype=torch.bool)
    expected[5:19, 7:25] = True  # object (1) and boundary band (3)
    assert torch.equal(s.mask, expected)
    inner = load_dataset("pets", "test", data_root=str(pets_root), boundary="background")[0].mask
    assert inner.sum() == 12 * 16 and inner[6:18, 8:24].all()
    assert pets.CLASSES[s.label] == s.id.rsplit("_", 1)[0]
    tri = torch.tensor([[1, 2, 3]])
    assert pets.trimap_to_mask(tri).tolist() == [[True, False, True]]
    assert pets.trimap_to_mask(tri, "background").tolist() == [[True, False, False]]
    train, val = (load_dataset("pets", sp, data_root=str(pets_root)) for sp in ("train", "val"))
    assert len(train) + len(val) == 74 and not {r.id for r in train.records} & {r.id for r in val.records}


def test_pets_download_of_both_archives(pets_root, tmp_path, monkeypatch):
    a_img = make_tar(pets_root / "images", tmp_path / "images.tar.gz", "images")
    a_ann = make_tar(pets_root / "annotations", tmp_path / "annotations.tar.gz", "annotations")
    monkeypatch.setitem(pets.ARCHIVES, "images", (a_img.as_uri(), md5(a_img)))
    monkeypatch.setitem(pets.ARCHIVES, "annotations", (a_ann.as_uri(), md5(a_ann)))
    split = load_dataset("pets", "test", cache_dir=str(tmp_path / "cache"))
    assert len(split) == 37 and split[3].mask.any()


def test_preprocessing_matches_timm_and_keeps_masks_aligned():
    import timm
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=timm.create_model(TINY))
    pre = Preprocessing.from_timm(config)
    assert pre.input_size == (160, 160) and pre.crop_pct == config["crop_pct"]
    rng = np.random.default_rng(3)
    img = Image.fromarray((rng.random((90, 120, 3)) * 60 + 100).astype(np.uint8))
    ours, _ = pre(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
    t = create_transform(**{k: v for k, v in config.items()}, is_training=False)
    theirs = t(img) * torch.tensor(config["std"]).view(3, 1, 1) + torch.tensor(config["mean"]).view(3, 1, 1)
    assert ours.shape == theirs.shape == (3, 160, 160)
    assert (ours - theirs).abs().mean() < 0.02  # same geometry (PIL vs torch resampling differ slightly)
    # a mask follows exactly the geometry of the image: an object painted white stays under its mask
    image = torch.zeros(3, 90, 120)
    mask = torch.zeros(90, 120, dtype=torch.bool)
    image[:, 30:60, 50:100] = 1.0
    mask[30:60, 50:100] = True
    out_img, out_mask = Preprocessing((40, 40), crop_pct=0.8, interpolation="nearest")(image, mask)
    assert out_mask.shape == (40, 40) and torch.equal(out_img[0] > 0.5, out_mask)


def test_pets_run_with_masks_through_the_cli(pets_root, tmp_path, capsys):
    w37 = save_tiny_weights(tmp_path / "w37.pt", num_classes=37)
    args = [
        "--cache-dir",
        str(tmp_path / "cache"),
        "run",
        "--dataset",
        "pets",
        "--model",
        TINY,
        "--methods",
        "oracle,random",
        "--metrics",
        "rma",
        "--data-root",
        str(pets_root),
        "--weights",
        str(w37),
        "--n-images",
        "4",
        "--out",
        str(tmp_path / "res"),
        "--run-id",
        "r",
        "--quiet",
    ]
    code, _, err = _run(args, capsys)
    assert code == 0, err
    scores = pd.read_csv(tmp_path / "res" / "r" / "scores.csv")
    rma = scores[(scores.method == "oracle") & (scores.metric == "rma")].value
    assert len(rma) == 4 and np.allclose(rma, 100.0)  # the oracle map is the (preprocessed) mask itself


def test_train_classifier_then_run_finds_the_fine_tuned_model(pets_root, weights1000, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    code, _, err = _run(
        [
            "--cache-dir",
            cache,
            "train",
            "classifier",
            "--dataset",
            "pets",
            "--model",
            TINY,
            "--weights",
            str(weights1000),
            "--data-root",
            str(pets_root),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--head-only",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    dirs = list((tmp_path / "cache" / "models").glob("finetune-test_resnet-pets-*"))
    assert len(dirs) == 1 and (dirs[0] / "model.pt").exists() and (dirs[0] / "log.csv").exists()
    state = torch.load(dirs[0] / "model.pt", weights_only=True)
    before = torch.load(weights1000, weights_only=True)
    assert state["fc.weight"].shape == (37, before["fc.weight"].shape[1])
    backbone = [k for k in before if not k.startswith("fc.")]
    assert backbone and all(
        torch.equal(state[k], before[k]) for k in backbone
    )  # head only: backbone untouched
    code, _, err = _run(
        [
            "--cache-dir",
            cache,
            "run",
            "--dataset",
            "pets",
            "--model",
            TINY,
            "--methods",
            "random",
            "--metrics",
            "srg",
            "--cardinalities",
            "3",
            "--n-images",
            "2",
            "--data-root",
            str(pets_root),
            "--out",
            str(tmp_path / "res"),
            "--run-id",
            "r",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    cfg = json.loads((tmp_path / "res" / "r" / "config.json").read_text())
    assert cfg["model"]["head"] == "full" and cfg["model"]["finetuned"]["head_only"] is True


# ------------------------------------------------------------------------------- mura


def test_mura_layout_labels_and_patient_level_split(tmp_path):
    root = tmp_path / "MURA-v1.1"
    rng = np.random.default_rng(2)
    for split, patients in (("train", range(1, 31)), ("valid", range(100, 103))):
        for p in patients:
            for study, kind in ((1, "positive"), (2, "negative")):
                d = root / split / "XR_WRIST" / f"patient{p:05d}" / f"study{study}_{kind}"
                d.mkdir(parents=True)
                Image.fromarray(rng.integers(0, 255, (20, 16), dtype=np.uint8), mode="L").save(
                    d / "image1.png"
                )
                (d / "._image1.png").write_bytes(b"resource fork")  # macOS litter is ignored
    test = load_dataset("mura", "test", data_root=str(tmp_path))
    assert len(test) == 6 and test.classes == ["normal", "abnormal"]
    for rec in test.records:
        assert rec.label == (1 if "_positive" in rec.path else 0)
    s = test[0]
    assert s.image.shape == (3, 20, 16) and torch.equal(s.image[0], s.image[1])  # grey → RGB
    train, val = (load_dataset("mura", sp, data_root=str(root)) for sp in ("train", "val"))
    patients = lambda split: {r.id.split("/")[2] for r in split.records}  # noqa: E731
    assert len(train) + len(val) == 60 and len(val) > 0 and not patients(train) & patients(val)


def test_read_samples_records_each_unreadable_file_once(tmp_path):
    root = make_imagenette(tmp_path, n_train=1, n_val=1)
    bad = root / "val" / "n01440764" / "zzz.JPEG"
    bad.write_bytes(b"garbage")
    split = load_dataset("imagenette", "test", data_root=str(root))
    got = read_samples(split, range(len(split)))
    again = read_samples(split, range(len(split)))
    assert len(got) == len(again) == 10 and split.skipped == [(str(bad), split.skipped[0][1])]
