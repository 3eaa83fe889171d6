"""MIF, LIF and SRG (salvage-paper Appendix A.1, Algorithm 1; Blücher et al. 2024).

Patches are ranked by attribution (descending for MIF, ascending for LIF; ties broken by a
random order seeded per image). For each cardinality k the first k patches are kept and the
rest removed; the score is the mean over k of the target probability, ×100. SRG = MIF − LIF.
"""
from __future__ import annotations

from typing import Sequence

import torch

from xaibench.seeding import generator

from .base import DOWN, UP, Metric, MetricResult, register_metric


def tie_break_order(scores: torch.Tensor, ids: Sequence[str], seed: int, descending: bool) -> torch.Tensor:
    """Patch indices (B, P) sorted by score; equal scores in a random order seeded by image id."""
    B, P = scores.shape
    perm = torch.stack([torch.randperm(P, generator=generator(seed, i, "tie-break")) for i in ids]).to(scores.device)
    shuffled = scores.gather(1, perm)
    order = shuffled.argsort(dim=1, descending=descending, stable=True)
    return perm.gather(1, order)


def keep_first(order: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Keep masks (B, K, P): for each k, the first k patches of ``order`` (B, P)."""
    rank = order.argsort(dim=1)
    return rank[:, None, :] < ks.to(order.device)[None, :, None]


def insertion_curves(adapter, x, scores, targets, ids, removal, ks, seed):
    """Target probabilities (B, K) when keeping the k most (MIF) and least (LIF) relevant patches."""
    mif_keep = keep_first(tie_break_order(scores, ids, seed, descending=True), ks)
    lif_keep = keep_first(tie_break_order(scores, ids, seed, descending=False), ks)
    keep = torch.cat([mif_keep, lif_keep], dim=1)
    probs = adapter.masked_probs(x, keep, removal, ids=ids, target=targets)
    return probs[:, : len(ks)], probs[:, len(ks):]


@register_metric("srg")
class InsertionMetrics(Metric):
    provides = ("mif", "lif", "srg")
    directions = {"mif": UP, "lif": DOWN, "srg": UP}
    labels = {"mif": "MIF", "lif": "LIF", "srg": "SRG"}
    needs_removal = True

    def compute(self, ctx, batch, attribution, explain=None):
        ks = ctx.ks(ctx.adapter.num_patches)
        scores = attribution.patch_scores(ctx.adapter.grid)
        mif, lif = insertion_curves(ctx.adapter, batch.x, scores, batch.targets, batch.ids, ctx.removal, ks,
                                    ctx.seed)
        frac = ks.float() / ctx.adapter.num_patches
        mif_s, lif_s = 100 * mif.mean(1), 100 * lif.mean(1)
        return MetricResult(scores={"mif": mif_s, "lif": lif_s, "srg": mif_s - lif_s},
                            curves={"mif": (frac, 100 * mif), "lif": (frac, 100 * lif)})
