"""What every dataset yields, and the in-memory split most datasets are loaded into.

A dataset split is a sequence of :class:`Sample`: an RGB image as float32 in [0, 1]
of shape (3, H, W), an integer label, an optional boolean ground-truth mask (H, W)
of the class-defining object, and a string id that is stable across runs (seeds
are derived from it, see :mod:`xaibench.seeding`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch


def _update_tensor(h, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and raw bytes into a hash."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


@dataclass
class Sample:
    image: torch.Tensor  # (3, H, W) float32 in [0, 1]
    label: int
    mask: Optional[torch.Tensor]  # (H, W) bool, or None when the dataset has no masks
    id: str


class DatasetSplit(torch.utils.data.Dataset):
    """Base class of a split: ``split[i] -> Sample``.

    Attributes every split has: ``name`` (dataset name), ``split`` ("train", "val",
    "test"), ``classes`` (class names, index = label), ``has_masks``, and
    ``skipped`` (list of ``(path, reason)`` for files that could not be read).
    """

    name: str = ""
    split: str = ""
    classes: Sequence[str] = ()
    has_masks: bool = False

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 (hex) of the split's content: class names, then every sample's label, image and
        mask. Equal content gives an equal fingerprint whatever the split is called; any changed
        pixel or label changes it. Computed once per split object (subclasses hash faster)."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256(repr(list(self.classes)).encode())
            for i in range(len(self)):
                smp = self[i]
                h.update(f"|{smp.label}|".encode())
                _update_tensor(h, smp.image)
                if smp.mask is not None:
                    _update_tensor(h, smp.mask)
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class TensorSplit(DatasetSplit):
    """A split held in memory: images as uint8 (N, 3, H, W), labels (N,), masks bool (N, H, W)."""

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        images: torch.Tensor,
        labels: torch.Tensor,
        ids: Sequence[str],
        masks: Optional[torch.Tensor] = None,
    ) -> None:
        super().__init__()
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        n = images.shape[0]
        if labels.shape != (n,) or len(ids) != n:
            raise ValueError("images, labels and ids must have the same length")
        if masks is not None and (masks.dtype != torch.bool or masks.shape != (n, *images.shape[2:])):
            raise ValueError(f"masks must be bool (N, H, W), got {masks.dtype} {tuple(masks.shape)}")
        self.name, self.split, self.classes = name, split, list(classes)
        self.images, self.labels, self.masks, self.ids = images, labels.long(), masks, list(ids)
        self.has_masks = masks is not None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Sample:
        mask = self.masks[index] if self.masks is not None else None
        return Sample(self.images[index].float() / 255.0, int(self.labels[index]), mask, self.ids[index])

    def fingerprint(self) -> str:
        """sha256 (hex) of class names, ids, labels, images and masks (the tensors' bytes)."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256(repr(list(self.classes)).encode())
            h.update("\x1f".join(self.ids).encode())
            for t in (self.labels, self.images) + ((self.masks,) if self.masks is not None else ()):
                _update_tensor(h, t)
            self._fingerprint = h.hexdigest()
        return self._fingerprint
