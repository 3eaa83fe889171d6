"""``mura``: Stanford's MURA musculoskeletal radiographs, a binary task (normal / abnormal) per image.

MURA cannot be downloaded without registering, so there is no download: request it at
https://stanfordmlgroup.github.io/competitions/mura/, unpack ``MURA-v1.1.zip`` and pass
``--data-root PATH``, where PATH is the ``MURA-v1.1`` folder or the folder that holds it.
Layout: ``MURA-v1.1/{train,valid}/XR_<BODY PART>/patient<id>/study<n>_{positive,negative}/image<k>.png``.
Every image takes its study's label: ``positive`` → ``abnormal`` (1), ``negative`` → ``normal`` (0).
Radiographs are greyscale and become RGB by repeating the channel.

Splits: ``test`` = the official ``valid/`` folder (MURA's test set is not public); ``val`` = the
images of a fixed 10% of the *patients* of ``train/`` (chosen by a hash of the patient id, so
no patient is in both); ``train`` = the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserError
from . import register_dataset
from .folder import ImageFileSplit, ImageRecord, holdout, list_images

CLASSES = ["normal", "abnormal"]
URL = "https://stanfordmlgroup.github.io/competitions/mura/"
HOW_TO_GET = (
    f"MURA needs a registration and cannot be downloaded automatically: request it at {URL}, unpack "
    f"MURA-v1.1.zip and pass --data-root PATH, where PATH is the MURA-v1.1 folder (or its parent) with "
    f"the layout MURA-v1.1/{{train,valid}}/XR_<BODY PART>/patient<id>/study<n>_{{positive,negative}}/"
    f"image<k>.png"
)


def find_root(path: Path) -> Optional[Path]:
    for candidate in (path, path / "MURA-v1.1"):
        if (candidate / "train").is_dir() and (candidate / "valid").is_dir():
            return candidate
    return None


def _label(study: str) -> Optional[int]:
    if study.endswith("_positive"):
        return 1
    if study.endswith("_negative"):
        return 0
    return None


@register_dataset("mura")
def load_mura(split: str, *, data_root: Optional[str] = None, **_ignored) -> ImageFileSplit:
    """Stanford MURA radiographs, normal vs abnormal (needs a manual download: --data-root)."""
    if not data_root:
        raise UserError(HOW_TO_GET)
    root = find_root(Path(data_root).expanduser())
    if root is None:
        raise UserError(f"no MURA found at --data-root {data_root}. {HOW_TO_GET}")
    folder = root / ("valid" if split == "test" else "train")
    records = []
    for p in list_images(folder):
        rel = p.relative_to(root)
        parts = rel.parts  # (train|valid, XR_*, patientN, studyN_label, imageK.png)
        label = _label(parts[-2]) if len(parts) == 5 else None
        if label is None:
            continue  # not an image of the documented layout
        if split != "test" and holdout(parts[2]) != (split == "val"):
            continue
        records.append(ImageRecord(str(p), label, rel.with_suffix("").as_posix()))
    if not records:
        raise UserError(f"MURA at {root} has no images for split '{split}' in {folder}. {HOW_TO_GET}")
    return ImageFileSplit("mura", split, CLASSES, records, root=str(root))


load_mura.classes = CLASSES
load_mura.has_masks = False


def needs(*, data_root: Optional[str] = None, **_):
    """What a run still needs: None, or why MURA cannot be read (it is never downloaded)."""
    if not data_root:
        return HOW_TO_GET
    if find_root(Path(data_root).expanduser()) is None:
        return f"no MURA found at --data-root {data_root}. {HOW_TO_GET}"
    return None


load_mura.needs = needs
