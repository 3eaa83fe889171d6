"""Mutual information between a map and the ground-truth mask ("Sampling Matters in
Explanations: Towards Robust Attribution Analysis with Feature Suppression", §3.1, §9.2), in nats.

Per image: the pixel-level map (patch maps upsampled, nearest), absolute value, min-max
normalised (a constant map becomes zeros), cut into 20 equal-width bins on [0, 1] (1.0 in the
last bin); MI = Σ p(b, m) log(p(b, m) / (p(b) p(m))) over pixels, the plug-in estimator that
``sklearn.metrics.mutual_info_score`` computes. The "MI / MI(IG)" ratio of dataset means is a
leaderboard column (it needs Integrated Gradients in the same run), built from these scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xaibench.attribution import minmax
from xaibench.params import check

from .base import UP, Metric, MetricResult, register_metric
from .ranking import pixel_maps


def binned_mutual_information(maps: torch.Tensor, masks: torch.Tensor, n_bins: int = 20) -> torch.Tensor:
    """maps (B, n), masks (B, n) bool → (B,) plug-in MI in nats between binned |map| and the mask."""
    s = minmax(maps.float().abs())
    bins = (s * n_bins).floor().long().clamp(0, n_bins - 1)
    idx = bins * 2 + masks.long()
    joint = torch.zeros(maps.shape[0], 2 * n_bins, dtype=torch.float64, device=maps.device)
    joint.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    joint = joint.view(-1, n_bins, 2) / maps.shape[1]
    pb = joint.sum(2, keepdim=True)
    pm = joint.sum(1, keepdim=True)
    ratio = joint / (pb * pm).clamp_min(1e-300)
    terms = torch.where(joint > 0, joint * ratio.clamp_min(1e-300).log(), torch.zeros_like(joint))
    return terms.sum((1, 2)).clamp_min(0).to(torch.float32)


@register_metric("mi")
class MutualInformation(Metric):
    """Mutual information (nats) between the binned map and the object mask."""

    provides = ("mi",)
    directions = {"mi": UP}
    category = "localisation"
    labels = {"mi": "MI"}
    needs_masks = True

    @dataclass(frozen=True)
    class Params:
        n_bins: int = 20

        def __post_init__(self):
            check(self.n_bins >= 2, "needs n_bins ≥ 2")

    def compute(self, ctx, batch, attribution, explain=None):
        masks = batch.masks.flatten(1).bool()
        maps = pixel_maps(attribution, batch.masks.shape[-2:]).to(masks.device)
        return MetricResult(scores={"mi": binned_mutual_information(maps, masks, self.params.n_bins)})
