"""IoU-AUC: area under the IoU-vs-threshold curve (Zhang, Lee & Wang 2024, "Comprehensive
Attribution: Inherently Explainable Vision Model with Feature Detector", Table 3), ×100.

The comet paper does not state its thresholds; our documented choice: the pixel-level map
(patch maps upsampled, nearest) is min-max normalised per image (a constant map becomes
zeros) and binarised as S > τ for τ_j = j/T, j = 0..T−1 (T = 100); IoU(τ) = |{S > τ} ∩ mask| /
|{S > τ} ∪ mask|; IoU-AUC = mean over τ (the rectangle rule on [0, 1)). The strict ">" makes
the ground-truth mask as map score 100. The per-image curve (τ, IoU ×100) is kept for plots.
An empty mask gives NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xaibench.attribution import minmax
from xaibench.params import check

from .base import UP, Metric, MetricResult, register_metric
from .ranking import pixel_maps


def iou_curve(maps: torch.Tensor, masks: torch.Tensor, n_thresholds: int = 100):
    """maps (B, n), masks (B, n) bool → thresholds (T,), IoU (B, T) (NaN rows for empty masks)."""
    s = minmax(maps.float())
    taus = torch.arange(n_thresholds, device=maps.device, dtype=torch.float32) / n_thresholds
    iou = torch.empty(maps.shape[0], n_thresholds, device=maps.device)
    for j, tau in enumerate(taus):  # T small passes, each batched over images and pixels
        sel = s > tau
        inter = (sel & masks).sum(1).float()
        union = (sel | masks).sum(1).float()
        iou[:, j] = inter / union.clamp_min(1)
    iou[~masks.any(1)] = float("nan")
    return taus.cpu(), iou


@register_metric("iou_auc")
class IoUAUC(Metric):
    """Area under the IoU-vs-threshold curve of the binarised map against the object mask."""

    provides = ("iou_auc",)
    directions = {"iou_auc": UP}
    category = "localisation"
    labels = {"iou_auc": "IoU-AUC"}
    needs_masks = True

    @dataclass(frozen=True)
    class Params:
        n_thresholds: int = 100

        def __post_init__(self):
            check(self.n_thresholds >= 1, "needs n_thresholds ≥ 1")

    def compute(self, ctx, batch, attribution, explain=None):
        masks = batch.masks.flatten(1).bool()
        maps = pixel_maps(attribution, batch.masks.shape[-2:]).to(masks.device)
        taus, iou = iou_curve(maps, masks, self.params.n_thresholds)
        return MetricResult(scores={"iou_auc": 100 * iou.mean(1)}, curves={"iou_auc": (taus, 100 * iou)})
