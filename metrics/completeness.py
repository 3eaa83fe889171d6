"""Completeness and soundness — a reconstruction (Gupta, Saunshi, Yu, Lyu & Arora
2022, "New Definitions and Evaluations for Saliency Methods: Staying Intrinsic, Complete and
Sound", appendix).

The main paper's definitions are not available to us; this follows its appendix (§C item 1,
§D), every constant a parameter:

- g(x, a, m) = probability of label a on the input that keeps the top-s fraction of pixels of
  map m (pixel level, patch maps upsampled; ties in a random order seeded per image) and takes
  the other pixels from the removal strategy (default ``distractor``: random training images,
  ``n_draws`` = 10 per input, probabilities averaged; ``mean`` or ``blur`` allowed).
- score(x, a) = mean of g over s ∈ {0.2, 0.3, 0.4, 0.5, 0.6} (the appendix's
  "s ~ {0.2 dim(x), …, 0.6 dim(x)}").
- a₁, a₂ = the top and second label of the clean prediction; the method explains each label
  separately (``explain(targets)``).
- complete(x, a) = [score(x, a) ≥ (1 − ε₁)·p_a(x)], sound(x, a) = [score(x, a) ≤ (1 + ε₂)·p_a(x)],
  ε₁ = 0, ε₂ = 0.1 (appendix §D).

Per image, ``completeness`` = 1 if both a₁ and a₂ are complete, else 0, and ``soundness`` = 1 if
both are sound (``labels="worst"``, the default: the appendix reports "the worst case completeness
and soundness for these 2 labels"); their means over images are fractions in [0, 1].
``labels="mean"`` (the mean of the two labels' indicators) stays selectable, but note what it
cannot show: with ε₁ = 0 every label is complete or sound (score ≥ p_a or score ≤ p_a ≤ 1.1·p_a),
so the per-label mean gives completeness + soundness ≥ 1 for every map, informative or not. Under
the worst case a map can fail both (a₁ incomplete and a₂ unsound gives 0 + 0). The raw scores
score(x, a₁), score(x, a₂) are reported as ``cs_score_a1`` / ``cs_score_a2`` under either rule.
The ``quick`` preset uses 1 distractor draw per input instead of 10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from xaibench.cost import FREE, Cost
from xaibench.errors import UserError
from xaibench.params import check
from xaibench.removal import Removal

from .base import UP, Metric, MetricResult, register_metric
from .engine import removal_probs
from .ranking import keep_first, pixel_maps, ranked_order

STRATEGIES = ("distractor", "mean", "blur")


def top_fraction_scores(adapter, x, maps, targets, ids, removal, fractions, seed):
    """score(x, a): mean over s of the target probability keeping the top-s fraction of pixels.
    maps (B, H·W) pixel level → (B,) and the per-s values (B, S)."""
    n = maps.shape[1]
    counts = torch.tensor([int(round(s * n)) for s in fractions])
    order = ranked_order(maps, ids, seed, descending=True, purpose="completeness")
    keep = keep_first(order, counts).view(maps.shape[0], len(fractions), *adapter.input_size)
    g = removal_probs(adapter, x, keep, removal, ids, targets)
    return g.mean(1), g


@register_metric("completeness")
class CompletenessSoundness(Metric):
    """Completeness and soundness for the top two labels, worst case over both (Gupta et al. 2022)."""

    provides = ("completeness", "soundness", "cs_score_a1", "cs_score_a2")
    directions = {"completeness": UP, "soundness": UP}
    category = "faithfulness"
    labels = {
        "completeness": "Compl.",
        "soundness": "Sound.",
        "cs_score_a1": "CS-score(a1)",
        "cs_score_a2": "CS-score(a2)",
    }
    needs_distractors = True

    @dataclass(frozen=True)
    class Params:
        fractions: Tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6)
        eps1: float = 0.0
        eps2: float = 0.1
        removal: str = "distractor"
        n_draws: int = 10
        labels: str = "worst"

        def __post_init__(self):
            check(
                self.removal in STRATEGIES,
                f"removal '{self.removal}' is not valid. Valid: {', '.join(STRATEGIES)}",
            )
            check(
                self.labels in ("worst", "mean"),
                f"labels rule '{self.labels}' is not valid. Valid: worst, mean",
            )
            check(
                self.n_draws >= 1 and all(0 < s <= 1 for s in self.fractions), "needs n_draws ≥ 1, 0 < s ≤ 1"
            )

    presets = {"quick": {"n_draws": 1}}

    def cost(self, shape, ctx, method):
        draws = self.params.n_draws if self.params.removal == "distractor" else 1
        masked = Cost(forwards=2 * len(self.params.fractions) * draws)  # two labels
        return masked + (method.cost(shape) if method.class_dependent else FREE)  # the second label explained

    def removal(self, ctx) -> Removal:
        strategy = self.params.removal
        pool = None
        if strategy == "distractor":
            pool = ctx.distractors if ctx.distractors is not None else ctx.removal.distractors
            if pool is None:
                raise UserError(
                    "completeness with removal 'distractor' needs a pool of training images "
                    "(EvalContext.distractors)"
                )
        return Removal(strategy, n_draws=self.params.n_draws, seed=ctx.seed, distractors=pool)

    def compute(self, ctx, batch, attribution, explain=None):
        removal = self.removal(ctx)
        rule = self.params.labels
        fractions = list(self.params.fractions)
        top2 = batch.probs.topk(2, dim=1)
        labels = top2.indices.T.to(batch.x.device)  # (2, B): a1, a2
        p_clean = top2.values.T.to(batch.x.device)  # (2, B)
        complete, sound, raw = [], [], []
        for j in range(2):
            a = labels[j]
            if torch.equal(a, batch.targets.to(a.device)):
                attr = attribution
            elif explain is None:
                raise ValueError("completeness needs the explain(targets) callback to explain a second label")
            else:
                attr = explain(a)
            maps = pixel_maps(attr, ctx.adapter.input_size).to(batch.x.device)
            score, _ = top_fraction_scores(
                ctx.adapter, batch.x, maps, a, batch.ids, removal, fractions, ctx.seed
            )
            complete.append(score >= (1 - self.params.eps1) * p_clean[j])
            sound.append(score <= (1 + self.params.eps2) * p_clean[j])
            raw.append(score)
        if rule == "worst":
            comp, snd = (complete[0] & complete[1]).float(), (sound[0] & sound[1]).float()
        else:
            comp, snd = (
                (complete[0].float() + complete[1].float()) / 2,
                (sound[0].float() + sound[1].float()) / 2,
            )
        return MetricResult(
            scores={"completeness": comp, "soundness": snd, "cs_score_a1": raw[0], "cs_score_a2": raw[1]}
        )
