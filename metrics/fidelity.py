"""Fidelity: perturbed accuracy after removing the most relevant pixels (Zhang, Lee & Wang
2024, "Comprehensive Attribution: Inherently Explainable Vision Model with Feature Detector", §4,
Table 5), ×100, lower is better.

For each fraction k% (5, 10, 20) the round(k%·n) highest-ranked units (ties in a random order
seeded per image) are removed with the run's removal operation and the model's accuracy on
the result is recorded (per image: 100 if the prediction equals the true label, else 0).
The unit is the pixel (pixel-level map; patch maps upsampled) for filling strategies and the
patch (patch-pooled map) for ``drop``, which can only remove whole tokens (``unit="auto"``);
``unit`` may force either where the strategy allows. The curve (fraction, accuracy) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from xaibench.errors import UserError
from xaibench.params import check

from .base import DOWN, Metric, MetricResult, register_metric
from .engine import removal_probs
from .ranking import keep_first, pixel_maps, ranked_order

UNITS = ("auto", "pixel", "patch")


def removal_accuracy(adapter, x, maps, labels, ids, removal, fractions, seed, shape=None):
    """Correct (B, F) bool after removing the top ``fractions`` of units ranked by ``maps`` (B, n).
    ``shape``: (H, W) when the units are pixels (keep masks reshaped to images)."""
    n = maps.shape[1]
    counts = torch.tensor([int(round(f * n)) for f in fractions])
    order = ranked_order(maps, ids, seed, descending=True, purpose="fidelity")
    keep = ~keep_first(order, counts)
    if shape is not None:
        keep = keep.view(*keep.shape[:2], *shape)
    probs = removal_probs(adapter, x, keep, removal, ids)
    return probs.argmax(-1) == labels.to(probs.device)[:, None]


@register_metric("fidelity")
class Fidelity(Metric):
    """Accuracy after removing the top 5/10/20 % of the map (Zhang et al. 2024), lower is better."""

    provides = ("fidelity_05", "fidelity_10", "fidelity_20")
    directions = {"fidelity_05": DOWN, "fidelity_10": DOWN, "fidelity_20": DOWN}
    category = "faithfulness"
    labels = {"fidelity_05": "Fid@5%", "fidelity_10": "Fid@10%", "fidelity_20": "Fid@20%"}

    @dataclass(frozen=True)
    class Params:
        fractions: Tuple[float, ...] = (0.05, 0.1, 0.2)
        unit: str = "auto"

        def __post_init__(self):
            check(self.unit in UNITS, f"unit '{self.unit}' is not valid. Valid units: {', '.join(UNITS)}")
            check(all(0 < f < 1 for f in self.fractions), "fractions must lie in (0, 1)")

    def cost(self, shape, ctx, method):
        kept = torch.tensor([shape.num_patches * (1 - f) for f in self.params.fractions])
        return ctx.removal_cost(shape, kept)

    def compute(self, ctx, batch, attribution, explain=None):
        unit = self.params.unit
        if unit == "auto":
            unit = "patch" if ctx.removal.strategy == "drop" else "pixel"
        if unit == "pixel" and ctx.removal.strategy == "drop":
            raise UserError(
                "fidelity unit 'pixel' cannot use removal 'drop' (it removes whole patches): "
                "use unit patch or removal mean, blur or distractor"
            )
        fractions = list(self.params.fractions)
        if unit == "patch":
            maps, shape = attribution.patch_scores(ctx.adapter.grid), None
        else:
            maps, shape = pixel_maps(attribution, ctx.adapter.input_size), ctx.adapter.input_size
        correct = (
            removal_accuracy(
                ctx.adapter,
                batch.x,
                maps.to(batch.x.device),
                batch.labels,
                batch.ids,
                ctx.removal,
                fractions,
                ctx.seed,
                shape,
            ).float()
            * 100
        )
        scores = {f"fidelity_{round(100 * f):02d}": correct[:, j] for j, f in enumerate(fractions)}
        return MetricResult(scores=scores, curves={"fidelity": (torch.tensor(fractions), correct)})
