"""The one result type of every attribution method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

LEVELS = ("pixel", "patch")


@dataclass
class Attribution:
    """Raw, signed attribution maps of a batch.

    ``maps`` is float32 (B, h, w); ``level`` says whether (h, w) is the input's pixel
    grid or the model's patch grid. Normalisation (abs, min-max, ...) belongs to the
    metric that needs it, never to the method.
    """

    maps: torch.Tensor
    level: str
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if self.maps.ndim != 3:
            raise ValueError(f"attribution maps must be (B, h, w), got shape {tuple(self.maps.shape)}")
        self.maps = self.maps.detach().float()

    def __len__(self) -> int:
        return self.maps.shape[0]

    def to_patches(self, grid: Tuple[int, int]) -> torch.Tensor:
        """(B, gh, gw): patch maps as they are; pixel maps averaged over each patch."""
        if self.level == "patch":
            if tuple(self.maps.shape[1:]) != tuple(grid):
                raise ValueError(
                    f"patch map of shape {tuple(self.maps.shape[1:])} does not match grid {grid}"
                )
            return self.maps
        h, w = self.maps.shape[1:]
        if h % grid[0] or w % grid[1]:
            return F.adaptive_avg_pool2d(self.maps[:, None], grid)[:, 0]
        return F.avg_pool2d(self.maps[:, None], (h // grid[0], w // grid[1]))[:, 0]

    def to_pixels(self, size: Tuple[int, int], mode: str = "nearest") -> torch.Tensor:
        """(B, H, W): patch maps upsampled (nearest keeps each patch's value exactly); pixel maps
        resized only if their size differs."""
        if tuple(self.maps.shape[1:]) == tuple(size):
            return self.maps
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        return F.interpolate(self.maps[:, None], size=tuple(size), mode=mode, **kwargs)[:, 0]

    def patch_scores(self, grid: Tuple[int, int]) -> torch.Tensor:
        """(B, P) patch scores in row-major patch order (the order of the removal masks)."""
        return self.to_patches(grid).flatten(1)

    def index(self, idx) -> "Attribution":
        return Attribution(self.maps[idx], self.level, dict(self.meta))

    @staticmethod
    def cat(parts) -> "Attribution":
        parts = list(parts)
        levels = {p.level for p in parts}
        if len(levels) != 1:
            raise ValueError(f"cannot concatenate attributions of levels {levels}")
        return Attribution(torch.cat([p.maps for p in parts]), parts[0].level, dict(parts[0].meta))


def minmax(values: torch.Tensor) -> torch.Tensor:
    """Per-row min-max normalisation of (B, n) to [0, 1]; a constant row becomes zeros."""
    lo = values.min(dim=1, keepdim=True).values
    hi = values.max(dim=1, keepdim=True).values
    span = hi - lo
    return torch.where(
        span > 0, (values - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(values)
    )
