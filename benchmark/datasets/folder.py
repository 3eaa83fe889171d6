"""Image files on disk as a lazy split, and the model's preprocessing applied to them.

:class:`ImageFileSplit` holds only a list of :class:`ImageRecord` (path, label, id, optional
mask file); an image is decoded when it is indexed, so a split of real photographs costs
memory for one batch only. Records are ordered by a hash of their id: the order is stable
across runs and machines and mixes the classes, so ``--n-images 100`` takes a class-mixed
subset rather than 100 images of the first class.

:class:`Preprocessing` is what a timm model's data config asks for (resize so that the crop
is ``crop_pct`` of the resized image, centre crop to the input size); the ground-truth mask
goes through the same geometry with nearest-neighbour resampling, so image and mask stay
aligned. :func:`attach_preprocessing` gives a split the model's preprocessing.

An image that cannot be decoded raises :class:`CorruptImage`; :func:`read_samples` (what the
harness uses) skips it and records ``(path, reason)`` in ``split.skipped``.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .base import DatasetSplit, Sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_READ_THREADS = max(1, min(8, os.cpu_count() or 1))


class CorruptImage(Exception):
    """An image (or its mask) file that cannot be decoded."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class ImageRecord:
    path: str
    label: int
    id: str
    mask_path: Optional[str] = None


def stable_order_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def holdout(text: str, fraction_tenths: int = 1) -> bool:
    """Deterministic 10%-per-tenth holdout by hash (independent of the seed and of other files)."""
    return int(stable_order_key("holdout:" + text)[:8], 16) % 10 < fraction_tenths


def list_images(directory: Path) -> List[Path]:
    """Image files under ``directory`` (recursive, sorted), macOS ``._`` resource forks excluded."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("._") and p.is_file()
    )


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """Resize + centre crop as in timm's evaluation transform, for images and masks alike.

    ``crop_mode`` ``center``: the image is resized (aspect kept) so that its shorter side is
    ``floor(size / crop_pct)`` (for a non-square input the two sides are scaled separately),
    then centre-cropped to ``input_size``. ``squash``: resized to ``floor(input_size / crop_pct)``
    without keeping the aspect ratio, then cropped. timm's ``border`` mode is treated as ``center``.
    Images use ``interpolation`` (antialiased); masks always nearest.
    """

    input_size: Tuple[int, int]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    crop_mode: str = "center"

    @classmethod
    def from_timm(cls, config: dict) -> "Preprocessing":
        size = tuple(int(s) for s in config["input_size"][-2:])
        interp = config.get("interpolation", "bilinear")
        return cls(
            size,
            float(config.get("crop_pct") or 1.0),
            interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear",
            config.get("crop_mode") or "center",
        )

    def _resized_size(self, h: int, w: int) -> Tuple[int, int]:
        th, tw = self.input_size
        sh, sw = math.floor(th / self.crop_pct), math.floor(tw / self.crop_pct)
        if self.crop_mode == "squash":
            return sh, sw
        if sh == sw:  # shorter side to the scale size, aspect ratio kept
            if h <= w:
                return sh, max(sh, int(round(w * sh / h)))
            return max(sw, int(round(h * sw / w))), sw
        scale = max(sh / h, sw / w)
        return max(sh, int(round(h * scale))), max(sw, int(round(w * scale)))

    def __call__(
        self, image: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """image (3, H, W) float in [0, 1], mask (H, W) bool → both at ``input_size``."""
        h, w = image.shape[-2:]
        rh, rw = self._resized_size(h, w)
        if (rh, rw) != (h, w):
            mode = self.interpolation
            image = F.interpolate(
                image[None],
                size=(rh, rw),
                mode=mode,
                antialias=mode != "nearest",
                align_corners=False if mode != "nearest" else None,
            )[0]
            image = image.clamp(0, 1)
            if mask is not None:
                mask = F.interpolate(mask[None, None].float(), size=(rh, rw), mode="nearest")[0, 0] > 0.5
        th, tw = self.input_size
        top, left = (rh - th) // 2, (rw - tw) // 2
        image = image[:, top : top + th, left : left + tw]
        if mask is not None:
            mask = mask[top : top + th, left : left + tw]
        return image.contiguous(), None if mask is None else mask.contiguous()


# ----------------------------------------------------------------------------------- decoding


def decode_image(path: str) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]; grey, palette and CMYK images become RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
            w, h = im.size
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
        raise CorruptImage(str(path), f"{type(exc).__name__}: {exc}") from exc
    return arr.view(h, w, 3).permute(2, 0, 1).float().div_(255.0)


def decode_label_image(path: str) -> torch.Tensor:
    """A single-channel label image (e.g. a trimap) as an integer tensor (H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                im = im.convert("L")
            w, h = im.size
            data = im.tobytes() if im.mode in ("L", "P") else im.convert("I").tobytes()
            dtype = torch.uint8 if im.mode in ("L", "P") else torch.int32
    except Exception as exc:
        raise CorruptImage(str(path), f"{type(exc).__name__}: {exc}") from exc
    return torch.frombuffer(bytearray(data), dtype=dtype).view(h, w).long()


class ImageFileSplit(DatasetSplit):
    """A split of image files, decoded on access.

    ``mask_fn(path) -> bool (H, W)`` reads a record's mask file (datasets with masks only).
    ``transform`` (a :class:`Preprocessing`, set by :func:`attach_preprocessing`) brings
    images and masks to the model's input size; without it images keep their own size.
    """

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        records: Sequence[ImageRecord],
        *,
        root: Optional[str] = None,
        mask_fn: Optional[Callable[[str], torch.Tensor]] = None,
        imagenet_indices: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        self.name, self.split, self.classes = name, split, list(classes)
        self.records = sorted(records, key=lambda r: stable_order_key(r.id))
        self.root = root
        self.mask_fn = mask_fn
        self.has_masks = mask_fn is not None
        self.imagenet_indices = list(imagenet_indices) if imagenet_indices is not None else None
        self.transform: Optional[Preprocessing] = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([r.label for r in self.records], dtype=torch.long)

    def fingerprint(self) -> str:
        """sha256 (hex) of the files behind the split: class names, then per record (in the split's
        order) its label, id, and (path relative to ``root``, size, sha256 of the content) of its
        image and of its mask file. Renaming the root directory keeps it; any changed byte, file
        or label changes it. The files are hashed once per split object, in threads."""
        if getattr(self, "_fingerprint", None) is None:

            def describe(path: Optional[str]) -> str:
                if path is None:
                    return "-"
                rel = os.path.relpath(path, self.root) if self.root else os.path.basename(path)
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                return f"{rel}:{os.path.getsize(path)}:{h.hexdigest()}"

            paths = [p for r in self.records for p in (r.path, r.mask_path)]
            with ThreadPoolExecutor(_READ_THREADS) as pool:
                parts = list(pool.map(describe, paths))
            h = hashlib.sha256(repr(list(self.classes)).encode())
            for i, rec in enumerate(self.records):
                h.update(f"\x1e{rec.label}\x1f{rec.id}\x1f{parts[2 * i]}\x1f{parts[2 * i + 1]}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __getitem__(self, index: int) -> Sample:
        rec = self.records[index]
        image = decode_image(rec.path)
        mask = None
        if self.mask_fn is not None:
            mask = self.mask_fn(rec.mask_path)
            if tuple(mask.shape) != tuple(image.shape[1:]):
                raise CorruptImage(
                    rec.mask_path, f"mask is {tuple(mask.shape)}, image {tuple(image.shape[1:])}"
                )
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return Sample(image, rec.label, mask, rec.id)


def read_samples(split: DatasetSplit, indices: Sequence[int]) -> List[Sample]:
    """``[split[i] for i in indices]``, decoded in threads, without the images that cannot be read
    (each recorded once as ``(path, reason)`` in ``split.skipped``)."""
    indices = list(indices)
    if not isinstance(split, ImageFileSplit):
        return [split[i] for i in indices]

    def read(i: int):
        try:
            return split[i]
        except CorruptImage as exc:
            return exc

    if len(indices) > 1 and _READ_THREADS > 1:
        with ThreadPoolExecutor(_READ_THREADS) as pool:
            results = list(pool.map(read, indices))
    else:
        results = [read(i) for i in indices]
    out = []
    known = {p for p, _ in split.skipped}
    for r in results:
        if isinstance(r, CorruptImage):
            if r.path not in known:
                split.skipped.append((r.path, r.reason))
                known.add(r.path)
        else:
            out.append(r)
    return out


def attach_preprocessing(split: DatasetSplit, adapter) -> DatasetSplit:
    """Give an image-file split the model's preprocessing (the adapter's ``preprocessing``
    attribute when it has one, else resize-and-centre-crop to its input size)."""
    if isinstance(split, ImageFileSplit):
        split.transform = getattr(adapter, "preprocessing", None) or Preprocessing(tuple(adapter.input_size))
    return split
