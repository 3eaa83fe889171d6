"""PxAP, pixel average precision (Choe et al. 2020, "Evaluating Weakly Supervised Object
Localization Methods Right"; used by the COMET paper, supplementary §5), ×100.

Per image the map is upsampled to the mask size (nearest for patch maps) and min-max
normalised to [0, 1] (a constant map becomes zeros). Over the whole dataset two histograms are
accumulated, of the scores of mask pixels and of background pixels, with the bins of the
authors' reference implementation (wsolevaluation, ``MaskEvaluator``): thresholds
τ = 0, 1/T, 2/T, …, (T−1)/T (T = 1000, generated as ``numpy.arange(0, 1, 1/T)`` in float64)
followed by the right edges 1.0, 2.0, 3.0, i.e. T + 2 bins [τ_j, τ_{j+1}), …, [(T−1)/T, 1),
[1, 2), [2, 3] (numpy's histogram rule). A normalised score of exactly 1.0 (the maximum of every
non-constant map) therefore has its own bin and is not merged with [(T−1)/T, 1). Reverse
cumulative sums over the bins, from the highest down, give TP and FP (pixels at or above each
edge); precision = TP/(TP + FP), recall = TP/|mask pixels|, and
PxAP = 100 · Σ_{i ≥ 1} precision_i · (recall_i − recall_{i−1}) over the edges where TP + FP > 0
(the area under the precision–recall curve, as wsolevaluation sums it).

Dataset-level: each image contributes its two histograms as its *state*; ``aggregate`` sums any
set of states (streamable; bootstrappable over images). COMET's own 20-threshold variant is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xaibench.attribution import minmax
from xaibench.params import check

from .base import UP, Metric, MetricResult, register_metric
from .ranking import pixel_maps


def pxap_edges(n_thresholds: int = 1000) -> torch.Tensor:
    """The bin edges (float64): ``arange(0, 1, 1/T)`` followed by 1.0, 2.0, 3.0."""
    return torch.from_numpy(np.append(np.arange(0, 1, 1.0 / n_thresholds), [1.0, 2.0, 3.0]))


def pxap_histograms(maps: torch.Tensor, masks: torch.Tensor, n_thresholds: int = 1000) -> torch.Tensor:
    """maps (B, n) raw, masks (B, n) bool → states (B, 2K): [mask-pixel histogram | background
    histogram], K = number of bins (T + 2)."""
    scores = minmax(maps.float()).double()
    edges = pxap_edges(n_thresholds).to(scores.device)
    K = len(edges) - 1
    # bin j holds edges[j] ≤ s < edges[j+1]; the last bin also holds s = edges[-1]
    bins = (torch.searchsorted(edges, scores, right=True) - 1).clamp(0, K - 1)
    idx = bins + K * (~masks).long()
    hist = torch.zeros(maps.shape[0], 2 * K, dtype=torch.float64, device=maps.device)
    return hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def pxap_from_histograms(states: torch.Tensor) -> float:
    """PxAP ×100 from summed states (N, 2K); NaN if there is no mask pixel."""
    K = states.shape[1] // 2
    hist = states.double().sum(0)
    tp = hist[:K].flip(0).cumsum(0)  # from the highest edge down
    fp = hist[K:].flip(0).cumsum(0)
    n_pos = hist[:K].sum()
    if n_pos <= 0:
        return float("nan")
    selected = tp + fp
    precision = tp / selected.clamp_min(1)
    recall = tp / n_pos
    terms = (precision[1:] * torch.diff(recall))[selected[1:] > 0]
    return float(100 * terms.sum())


@register_metric("pxap")
class PixelAveragePrecision(Metric):
    """Pixel average precision of the map against the object masks, over the dataset (Choe et al. 2020)."""

    provides = ("pxap",)
    directions = {"pxap": UP}
    category = "localisation"
    labels = {"pxap": "PxAP"}
    needs_masks = True
    dataset_level = True

    @dataclass(frozen=True)
    class Params:
        n_thresholds: int = 1000

        def __post_init__(self):
            check(self.n_thresholds >= 1, "needs n_thresholds ≥ 1")

    def compute(self, ctx, batch, attribution, explain=None):
        masks = batch.masks.flatten(1).bool()
        maps = pixel_maps(attribution, batch.masks.shape[-2:]).to(masks.device)
        return MetricResult(states={"pxap": pxap_histograms(maps, masks, self.params.n_thresholds)})

    def aggregate(self, name, states):
        return pxap_from_histograms(states)
