"""``imagenette``: fast.ai's Imagenette 2, ten easily told-apart ImageNet classes.

Archives (https://github.com/fastai/imagenette), by ``size``: ``160`` (shorter side 160 px),
``320`` (default: enough for 224-px models) and ``full``. Each unpacks to
``imagenette2[-SIZE]/{train,val}/<WordNet id>/*.JPEG``. Without ``--data-root`` the archive is
downloaded once into ``<cache>/datasets/imagenette/``, checked against its pinned md5 (the
value the archive's publisher-side loaders pin) and unpacked; with ``--data-root PATH`` the
copy at PATH is used as it is (PATH holds ``train/`` and ``val/``, or is their parent's
parent, e.g. the directory that holds ``imagenette2-320/``).

Splits (Imagenette has train and val only): ``test`` = the official ``val/`` folder (what is
scored); ``val`` = a fixed 10% of ``train/`` chosen by a hash of each file's path; ``train`` =
the other 90%. Labels 0–9 follow :data:`CLASSES`; :data:`IMAGENET_INDICES` gives each class's
ImageNet-1k index, so an ImageNet classifier is evaluated with its head restricted to these
ten logits, without training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserError
from . import register_dataset
from .download import fetch_archive, is_fetched
from .folder import ImageFileSplit, ImageRecord, holdout, list_images

# WordNet id → (class name, ImageNet-1k index)
WNIDS = {
    "n01440764": ("tench", 0),
    "n02102040": ("English springer", 217),
    "n02979186": ("cassette player", 482),
    "n03000684": ("chain saw", 491),
    "n03028079": ("church", 497),
    "n03394916": ("French horn", 566),
    "n03417042": ("garbage truck", 569),
    "n03425413": ("gas pump", 571),
    "n03445777": ("golf ball", 574),
    "n03888257": ("parachute", 701),
}
CLASSES = [name for name, _ in WNIDS.values()]
IMAGENET_INDICES = [index for _, index in WNIDS.values()]

ARCHIVES = {
    "160": (
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
        "md5:e793b78cc4c9e9a4ccc0c1155377a412",
    ),
    "320": (
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
        "md5:3df6f0d01a2c9592104656642f5e78a3",
    ),
    "full": (
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",
        "md5:fe2fc210e6bb7c5664d602c3cd71e612",
    ),
}
DEFAULT_SIZE = "320"
#: approximate archive sizes in bytes (for the preflight's disk-space check)
ARCHIVE_BYTES = {"160": 99_000_000, "320": 341_000_000, "full": 1_557_000_000}


def _layout_help(size: str) -> str:
    url = ARCHIVES.get(size, ARCHIVES[DEFAULT_SIZE])[0]
    return (
        f"expected the layout of {url.rsplit('/', 1)[-1]} ({url}): <root>/train/<wnid>/*.JPEG and "
        f"<root>/val/<wnid>/*.JPEG with the WordNet ids {', '.join(WNIDS)}"
    )


def find_root(path: Path) -> Optional[Path]:
    """``path`` if it holds ``train/`` and ``val/``, else an ``imagenette*`` folder below it that does."""
    if (path / "train").is_dir() and (path / "val").is_dir():
        return path
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.name.startswith("imagenette") and child.is_dir():
                found = find_root(child)
                if found is not None:
                    return found
    return None


def _records(root: Path, folder: str):
    records = []
    base = root / folder
    for label, wnid in enumerate(WNIDS):
        directory = base / wnid
        if not directory.is_dir():
            raise UserError(
                f"imagenette at {root} has no folder {folder}/{wnid} ({CLASSES[label]}); "
                f"{_layout_help(DEFAULT_SIZE)}"
            )
        for p in list_images(directory):
            records.append(ImageRecord(str(p), label, f"{folder}/{wnid}/{p.stem}"))
    return records


@register_dataset("imagenette")
def load_imagenette(
    split: str,
    *,
    data_root: Optional[str] = None,
    cache_dir: Optional[str] = None,
    size: str = DEFAULT_SIZE,
    **_ignored,
) -> ImageFileSplit:
    """fast.ai Imagenette 2 (10 ImageNet classes; downloaded with a pinned checksum, or --data-root)."""
    size = str(size).lower().removesuffix("px")
    if size not in ARCHIVES:
        raise UserError(f"unknown imagenette size '{size}'. Valid sizes: {', '.join(ARCHIVES)}")
    if data_root:
        root = find_root(Path(data_root).expanduser())
        if root is None:
            raise UserError(
                f"no Imagenette found at --data-root {data_root}: {_layout_help(size)}. "
                f"Leave out --data-root to download it into the cache"
            )
    else:
        url, checksum = ARCHIVES[size]
        extracted = fetch_archive("imagenette", url, checksum, cache_dir=cache_dir)
        root = find_root(extracted)
        if root is None:
            raise UserError(
                f"the archive {url} unpacked into {extracted} does not have the Imagenette "
                f"layout: {_layout_help(size)}"
            )
    if split == "test":
        records = _records(root, "val")
    else:
        records = [r for r in _records(root, "train") if holdout(r.id) == (split == "val")]
    if not records:
        raise UserError(f"imagenette at {root} has no images for split '{split}'; {_layout_help(size)}")
    return ImageFileSplit(
        "imagenette", split, CLASSES, records, root=str(root), imagenet_indices=IMAGENET_INDICES
    )


load_imagenette.classes = CLASSES
load_imagenette.has_masks = False
#: images per split of the 320 px release (train/val: about, from the 90/10 hash split)
load_imagenette.sizes = {"test": 3925, "train": 8522, "val": 947}
load_imagenette.imagenet_indices = IMAGENET_INDICES


def needs(*, data_root: Optional[str] = None, cache_dir: Optional[str] = None, size: str = DEFAULT_SIZE, **_):
    """What a run still needs: None (the data is here), a problem, or (url, bytes) to download."""
    if data_root:
        if find_root(Path(data_root).expanduser()) is None:
            return f"no Imagenette found at --data-root {data_root}: {_layout_help(size)}"
        return None
    url, _ = ARCHIVES[size]
    if is_fetched("imagenette", url, cache_dir):
        return None
    return url, ARCHIVE_BYTES[size]


load_imagenette.needs = needs
