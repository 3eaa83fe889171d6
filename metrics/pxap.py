"""PxAP, pixel average precision (comet-paper supplementary §5; Choe et al. 2020), ×100.

Per image the map is upsampled to the mask size (nearest for patch maps) and min-max
normalised (a constant map becomes zeros). Over the whole dataset two histograms are
accumulated on the thresholds τ_j = j/T, j = 0..T−1 (T = 1000: 0, 0.001, …, 0.999): scores
of mask pixels and scores of background pixels (bin j holds τ_j ≤ s < τ_{j+1}, 1.0 in the last
bin). Reverse cumulative sums give TP(τ) and FP(τ) = pixels with score ≥ τ; precision =
TP/(TP+FP), recall = TP/|mask pixels|, and PxAP = Σ_j precision(τ_j)·(Rec(τ_j) − Rec(τ_{j+1}))
with Rec(τ_T) = 0 (the area under the precision-recall curve, from the highest threshold
down). Dataset-level: each image contributes its two histograms as its *state*; ``aggregate``
sums any set of states (streamable; bootstrappable over images). COMET's own 20-threshold
variant is not used.
"""

from __future__ import annotations

import torch

from .base import UP, Metric, MetricResult, register_metric
from .ranking import minmax, pixel_maps


def pxap_histograms(maps: torch.Tensor, masks: torch.Tensor, n_thresholds: int = 1000) -> torch.Tensor:
    """maps (B, n) raw, masks (B, n) bool → states (B, 2T): [mask-pixel histogram | background histogram]."""
    scores = minmax(maps.float())
    bins = (scores * n_thresholds).floor().long().clamp(0, n_thresholds - 1)
    idx = bins + n_thresholds * (~masks).long()
    hist = torch.zeros(maps.shape[0], 2 * n_thresholds, dtype=torch.float64, device=maps.device)
    return hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def pxap_from_histograms(states: torch.Tensor) -> float:
    """PxAP ×100 from summed states (N, 2T); NaN if there is no mask pixel."""
    T = states.shape[1] // 2
    hist = states.double().sum(0)
    tp = hist[:T].flip(0).cumsum(0)  # thresholds from high to low
    fp = hist[T:].flip(0).cumsum(0)
    n_pos = hist[:T].sum()
    if n_pos <= 0:
        return float("nan")
    selected = tp + fp
    precision = torch.where(selected > 0, tp / selected.clamp_min(1), torch.zeros_like(tp))
    recall = tp / n_pos
    d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
    return float(100 * (precision * d_recall).sum())


@register_metric("pxap")
class PixelAveragePrecision(Metric):
    provides = ("pxap",)
    directions = {"pxap": UP}
    category = "localisation"
    labels = {"pxap": "PxAP"}
    needs_masks = True
    dataset_level = True
    defaults = {"n_thresholds": 1000}

    def compute(self, ctx, batch, attribution, explain=None):
        masks = batch.masks.flatten(1).bool()
        maps = pixel_maps(attribution, batch.masks.shape[-2:]).to(masks.device)
        return MetricResult(states={"pxap": pxap_histograms(maps, masks, int(self.params["n_thresholds"]))})

    def aggregate(self, name, states):
        return pxap_from_histograms(states)
