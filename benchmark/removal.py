"""The one removal ("masking") operation: what a removed patch or pixel becomes.

Every metric and every removal-based method goes through :meth:`ModelAdapter.masked_probs`
with a :class:`Removal`, so "removal" means the same thing everywhere. Strategies:

- ``drop``: ViT token dropping. Removed patch tokens are left out of the sequence (prefix
  tokens are always kept), which equals masking them out of every attention for CLS
  models; compute is proportional to the kept tokens.
- ``mean``: removed pixels take the value 0 in normalised space (= the dataset mean).
- ``blur``: removed pixels come from a Gaussian blur of the clean image (RISE: kernel 11, sigma 5).
- ``distractor``: removed pixels come from a random training image; ``n_draws`` images are
  drawn per input (seeded by image id) and the probabilities are averaged over draws.

The fill is computed once from the clean image, never from an already perturbed one.
Images here are in the model's normalised input space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .errors import UserError
from .seeding import generator

STRATEGIES = ("drop", "mean", "blur", "distractor")


@dataclass
class Removal:
    strategy: str = "mean"
    n_draws: int = 10
    blur_kernel: int = 11
    blur_sigma: float = 5.0
    seed: int = 0
    distractors: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(
                f"unknown removal strategy '{self.strategy}'. Valid strategies: {', '.join(STRATEGIES)}"
            )
        if self.n_draws < 1:
            raise UserError(f"removal n_draws must be ≥ 1, got {self.n_draws}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise UserError(f"blur kernel must be a positive odd number, got {self.blur_kernel}")
        if self.strategy == "distractor" and (self.distractors is None or len(self.distractors) == 0):
            raise UserError("removal 'distractor' needs a pool of training images (distractors=...)")

    @property
    def draws(self) -> int:
        """Inputs per mask: ``n_draws`` for distractors, else 1."""
        return self.n_draws if self.strategy == "distractor" else 1

    def settings(self) -> dict:
        out = {"strategy": self.strategy}
        if self.strategy == "distractor":
            out.update(n_draws=self.n_draws, seed=self.seed, pool_size=len(self.distractors))
        if self.strategy == "blur":
            out.update(kernel=self.blur_kernel, sigma=self.blur_sigma)
        return out

    def fill(self, x: torch.Tensor, ids: Optional[Sequence[str]] = None) -> torch.Tensor:
        """What removed pixels become, from the clean batch ``x`` (B, 3, H, W): (B, D, 3, H, W)."""
        if self.strategy in ("mean", "drop"):
            return torch.zeros_like(x)[:, None]
        if self.strategy == "blur":
            from torchvision.transforms.functional import gaussian_blur

            return gaussian_blur(x, [self.blur_kernel] * 2, [self.blur_sigma] * 2)[:, None]
        if ids is None:
            raise ValueError("distractor removal needs the image ids to seed its draws")
        pool = self.distractors
        picks = torch.stack([self._pick(len(pool), i) for i in ids])
        return pool[picks.flatten()].to(x.device, x.dtype).view(len(ids), self.n_draws, *x.shape[1:])

    def _pick(self, pool_size: int, image_id: str) -> torch.Tensor:
        g = generator(self.seed, image_id, "distractor")
        if pool_size >= self.n_draws:
            return torch.randperm(pool_size, generator=g)[: self.n_draws]
        return torch.randint(pool_size, (self.n_draws,), generator=g)

    @staticmethod
    def compose(x: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """Keep ``x`` where ``keep`` is set and ``fill`` elsewhere.

        x (n, 3, H, W); keep (n, H, W), bool or float in [0, 1] (soft masks blend);
        fill (n, 3, H, W). Differentiable in ``keep`` when it is float.
        """
        keep = keep[:, None]
        if keep.dtype == torch.bool:
            return torch.where(keep, x, fill)
        return fill + keep * (x - fill)
