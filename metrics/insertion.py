"""MIF, LIF and SRG (Naouar et al. 2025, "Salvage: Shapley-distribution Approximation Learning
Via Attribution Guided Exploration for Explainable Image Classification", Appendix A.1,
Algorithm 1; Blücher et al. 2024).

Patches are ranked by attribution (descending for MIF, ascending for LIF; ties broken by a
random order seeded per image). For each cardinality k = 1..N the first k patches are kept
and the rest removed; the score is the mean over k of the target probability p_c, ×100
(Salvage, Table 3). SRG = MIF − LIF (↑). The curves (k/N, p_c ×100) are kept for plots.

The ``quick`` preset evaluates 8 evenly spaced k (k = 1 and N included) instead of all N; the
run's ``--cardinalities`` overrides either preset. ``settings()`` records the choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .base import DOWN, UP, Metric, MetricResult, register_metric
from .engine import removal_probs
from .ranking import keep_first, ranked_order


def insertion_curves(adapter, x, scores, targets, ids, removal, ks, seed):
    """Target probabilities (B, K) when keeping the k most (MIF) and least (LIF) relevant patches."""
    mif_keep = keep_first(ranked_order(scores, ids, seed, descending=True), ks)
    lif_keep = keep_first(ranked_order(scores, ids, seed, descending=False), ks)
    probs = removal_probs(adapter, x, torch.cat([mif_keep, lif_keep], dim=1), removal, ids, targets)
    return probs[:, : len(ks)], probs[:, len(ks) :]


@register_metric("srg")
class InsertionMetrics(Metric):
    """MIF, LIF, SRG: probability keeping the most / least relevant patches first (Salvage, Algorithm 1)."""

    provides = ("mif", "lif", "srg")
    directions = {"mif": UP, "lif": DOWN, "srg": UP}
    category = "faithfulness"
    labels = {"mif": "MIF", "lif": "LIF", "srg": "SRG"}
    needs_removal = True

    @dataclass(frozen=True)
    class Params:
        cardinalities: Optional[int] = None  # None = every k = 1..N (Algorithm 1); a count: evenly spaced k

    presets = {"quick": {"cardinalities": 8}, "fast": {"cardinalities": 20}}

    def cost(self, shape, ctx, method):
        ks = ctx.ks(shape.num_patches, self.params.cardinalities)
        return 2 * ctx.removal_cost(shape, ks)  # most and least relevant first

    def compute(self, ctx, batch, attribution, explain=None):
        n = ctx.adapter.num_patches
        ks = ctx.ks(n, self.params.cardinalities)
        scores = attribution.patch_scores(ctx.adapter.grid).to(batch.x.device)
        mif, lif = insertion_curves(
            ctx.adapter, batch.x, scores, batch.targets, batch.ids, ctx.removal, ks, ctx.seed
        )
        frac = ks.float() / n
        mif_s, lif_s = 100 * mif.mean(1), 100 * lif.mean(1)
        return MetricResult(
            scores={"mif": mif_s, "lif": lif_s, "srg": mif_s - lif_s},
            curves={"mif": (frac, 100 * mif), "lif": (frac, 100 * lif)},
        )
