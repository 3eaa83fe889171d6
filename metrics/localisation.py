"""Relevance Mass Accuracy and Relevance Rank Accuracy (Arras et al. 2022; Naouar et al. 2025, Salvage,
Appendix A.1), ×100.

The map is taken at pixel level (patch maps upsampled, nearest) against the ground-truth mask.

- RMA = Σ_{mask} R⁺ / Σ R⁺, R⁺ the positive part of the map.
- RRA = |top-K pixels ∩ mask| / K with K = |mask|, pixels ranked by the (signed) map. Pixels
  tied with the K-th value count by their expected share: if g pixels lie strictly above it
  (g_in of them in the mask) and t pixels equal it (t_in in the mask), RRA =
  (g_in + (K − g)·t_in/t)/K — the mean over all ways of breaking the tie, deterministic.

An empty mask, or (RMA) a map without positive relevance, gives NaN — never 0; the
leaderboard counts NaNs per cell (``n_nan``).
"""

from __future__ import annotations

import torch

from .base import UP, Metric, MetricResult, register_metric
from .ranking import pixel_maps

NAN = float("nan")


def relevance_mass_accuracy(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """maps (B, n) float, masks (B, n) bool → (B,) RMA in [0, 1] (NaN: empty mask or Σ R⁺ = 0)."""
    pos = maps.clamp_min(0)
    total = pos.sum(1)
    inside = (pos * masks).sum(1)
    ok = (total > 0) & masks.any(1)
    return torch.where(
        ok, inside / torch.where(ok, total, torch.ones_like(total)), torch.full_like(total, NAN)
    )


def relevance_rank_accuracy(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """maps (B, n) float, masks (B, n) bool → (B,) RRA in [0, 1] (expected share at ties; NaN: empty mask)."""
    K = masks.sum(1)
    ok = K > 0
    kth = maps.sort(dim=1, descending=True).values.gather(1, (K - 1).clamp_min(0)[:, None])
    above, tied = maps > kth, maps == kth
    g = above.sum(1).double()
    g_in = (above & masks).sum(1).double()
    t = tied.sum(1).double()
    t_in = (tied & masks).sum(1).double()
    Kd = K.double()
    rra = (g_in + (Kd - g) * t_in / t.clamp_min(1)) / Kd.clamp_min(1)
    return torch.where(ok, rra, torch.full_like(rra, NAN)).to(maps.dtype)


@register_metric("rma")
class RelevanceAccuracy(Metric):
    """Relevance mass and rank accuracy of the map inside the object mask (Arras et al. 2022)."""

    provides = ("rma", "rra")
    directions = {"rma": UP, "rra": UP}
    category = "localisation"
    labels = {"rma": "RMA", "rra": "RRA"}
    needs_masks = True

    def compute(self, ctx, batch, attribution, explain=None):
        masks = batch.masks.flatten(1).bool()
        maps = pixel_maps(attribution, batch.masks.shape[-2:]).to(masks.device)
        return MetricResult(
            scores={
                "rma": 100 * relevance_mass_accuracy(maps, masks),
                "rra": 100 * relevance_rank_accuracy(maps, masks),
            }
        )
