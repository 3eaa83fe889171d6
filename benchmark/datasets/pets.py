"""``pets``: the Oxford-IIIT Pet dataset (37 cat and dog breeds) with object masks from its trimaps.

Source: https://www.robots.ox.ac.uk/~vgg/data/pets/ — ``images.tar.gz`` (``images/<Breed>_<n>.jpg``)
and ``annotations.tar.gz`` (``annotations/trainval.txt``, ``annotations/test.txt`` with lines
``<image> <class id 1-37> <species> <breed id>``, and ``annotations/trimaps/<image>.png``).
Without ``--data-root`` both archives are downloaded into ``<cache>/datasets/pets/``, checked
against pinned md5s (the values torchvision's loader pins) and unpacked; with ``--data-root
PATH``, PATH holds ``images/`` and ``annotations/``.

Masks. A trimap pixel is 1 (pet), 2 (background) or 3 ("not classified": the band along the
pet's outline, where fur and background mix). ``boundary="object"`` (default) counts the band
as object, ``boundary="background"`` as background. We chose "object" because the band is
drawn around the animal's silhouette and mostly covers its fur edge; an attribution there
is about the pet, not the background. The choice is recorded in the run's config.

Splits: ``test`` = the official ``test.txt``; ``val`` = a fixed 10% of ``trainval.txt`` chosen
by a hash of the image name; ``train`` = the other 90%. Labels are the class ids − 1, in the
order of :data:`CLASSES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError
from . import register_dataset
from .download import fetch_archive, is_fetched
from .folder import ImageFileSplit, ImageRecord, decode_label_image, holdout

CLASSES = [
    "Abyssinian",
    "american_bulldog",
    "american_pit_bull_terrier",
    "basset_hound",
    "beagle",
    "Bengal",
    "Birman",
    "Bombay",
    "boxer",
    "British_Shorthair",
    "chihuahua",
    "Egyptian_Mau",
    "english_cocker_spaniel",
    "english_setter",
    "german_shorthaired",
    "great_pyrenees",
    "havanese",
    "japanese_chin",
    "keeshond",
    "leonberger",
    "Maine_Coon",
    "miniature_pinscher",
    "newfoundland",
    "Persian",
    "pomeranian",
    "pug",
    "Ragdoll",
    "Russian_Blue",
    "saint_bernard",
    "samoyed",
    "scottish_terrier",
    "shiba_inu",
    "Siamese",
    "Sphynx",
    "staffordshire_bull_terrier",
    "wheaten_terrier",
    "yorkshire_terrier",
]
ARCHIVES = {
    "images": (
        "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
        "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c",
    ),
    "annotations": (
        "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
        "md5:95a8c909bbe2e81eed6a22bccdf3f68f",
    ),
}
TRIMAP_OBJECT, TRIMAP_BACKGROUND, TRIMAP_BOUNDARY = 1, 2, 3
BOUNDARY_CHOICES = ("object", "background")

LAYOUT = (
    "expected <root>/images/<Breed>_<n>.jpg, <root>/annotations/trainval.txt, <root>/annotations/test.txt "
    "and <root>/annotations/trimaps/<Breed>_<n>.png (the two archives images.tar.gz and annotations.tar.gz "
    "from https://www.robots.ox.ac.uk/~vgg/data/pets/ unpacked side by side)"
)


def trimap_to_mask(trimap: torch.Tensor, boundary: str = "object") -> torch.Tensor:
    """Trimap (H, W) with values 1/2/3 → boolean object mask."""
    if boundary not in BOUNDARY_CHOICES:
        raise UserError(f"unknown pets boundary handling '{boundary}'. Valid: {', '.join(BOUNDARY_CHOICES)}")
    mask = trimap == TRIMAP_OBJECT
    if boundary == "object":
        mask |= trimap == TRIMAP_BOUNDARY
    return mask


def _find(base: Path, sub: str) -> Optional[Path]:
    """``base/sub`` or, for a download, ``base/<archive stem>/sub``."""
    for candidate in (base / sub, base / sub / sub):
        if candidate.is_dir():
            return candidate
    return None


def _read_list(path: Path):
    entries = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            image, class_id = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise UserError(f"{path}: cannot parse line '{line}'; {LAYOUT}")
        if (
            not 1 <= class_id <= len(CLASSES)
            or image.rsplit("_", 1)[0].lower() != CLASSES[class_id - 1].lower()
        ):
            raise UserError(
                f"{path}: image '{image}' has class id {class_id}, which is not its breed; {LAYOUT}"
            )
        entries.append((image, class_id - 1))
    return entries


@register_dataset("pets")
def load_pets(
    split: str,
    *,
    data_root: Optional[str] = None,
    cache_dir: Optional[str] = None,
    boundary: str = "object",
    **_ignored,
) -> ImageFileSplit:
    """Oxford-IIIT Pet: 37 breeds, object masks from trimaps (download with checksums, or --data-root)."""
    if boundary not in BOUNDARY_CHOICES:
        raise UserError(f"unknown pets boundary handling '{boundary}'. Valid: {', '.join(BOUNDARY_CHOICES)}")
    if data_root:
        base = Path(data_root).expanduser()
        images, annotations = _find(base, "images"), _find(base, "annotations")
        if images is None or annotations is None:
            raise UserError(
                f"no Oxford-IIIT Pet found at --data-root {data_root}: {LAYOUT}. "
                f"Leave out --data-root to download it into the cache"
            )
    else:
        dirs = {
            key: fetch_archive("pets", url, checksum, cache_dir=cache_dir)
            for key, (url, checksum) in ARCHIVES.items()
        }
        images, annotations = _find(dirs["images"], "images"), _find(dirs["annotations"], "annotations")
        if images is None or annotations is None:
            raise UserError(
                f"the Oxford-IIIT Pet archives unpacked into {dirs['images'].parent} do not have "
                f"the expected layout: {LAYOUT}"
            )
    list_file = annotations / ("test.txt" if split == "test" else "trainval.txt")
    if not list_file.exists():
        raise UserError(f"Oxford-IIIT Pet at {annotations.parent} has no {list_file.name}; {LAYOUT}")
    entries = _read_list(list_file)
    if split != "test":
        entries = [(image, label) for image, label in entries if holdout(image) == (split == "val")]
    records = [
        ImageRecord(str(images / f"{image}.jpg"), label, image, str(annotations / "trimaps" / f"{image}.png"))
        for image, label in entries
    ]
    if not records:
        raise UserError(
            f"Oxford-IIIT Pet at {annotations.parent} has no images for split '{split}'; {LAYOUT}"
        )

    def read_mask(path: str) -> torch.Tensor:
        return trimap_to_mask(decode_label_image(path), boundary)

    out = ImageFileSplit("pets", split, CLASSES, records, root=str(images.parent), mask_fn=read_mask)
    out.options = {"boundary": boundary}
    return out


load_pets.classes = CLASSES
load_pets.has_masks = True
#: images per split (train/val: about, from the 90/10 hash split of trainval)
load_pets.sizes = {"test": 3669, "train": 3312, "val": 368}


def needs(*, data_root: Optional[str] = None, cache_dir: Optional[str] = None, **_):
    """What a run still needs: None (the data is here), a problem, or (url, bytes) to download."""
    if data_root:
        base = Path(data_root).expanduser()
        if _find(base, "images") is None or _find(base, "annotations") is None:
            return f"no Oxford-IIIT Pet found at --data-root {data_root}: {LAYOUT}"
        return None
    missing = [url for url, _ in ARCHIVES.values() if not is_fetched("pets", url, cache_dir)]
    return (missing[0], 811_000_000) if missing else None


load_pets.needs = needs
