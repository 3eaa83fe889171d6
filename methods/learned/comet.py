"""COMET (comet-paper §3; supplementary Algorithm 1): an inherently explainable model.

- Detector f_D: the classifier, pre-trained on full images and frozen.
- Selector S(x) ∈ [0, 1]^{H×W}: a small segmentation network (:class:`Selector`, a three-level
  convolutional encoder–decoder with skip connections; the paper uses LR-ASPP/MobileNetV3, which
  we replace by a smaller net of the same role — our documented choice).
- Predictor f_P: trained on the selected features x_s = S ⊙ x + (1 − S) ⊙ q, q the dataset mean
  (0 in normalised space: the removal strategy ``mean``); x_{1−s} = (1 − S) ⊙ x + S ⊙ q.
- Loss (Eq. 7): L_P(x_s) − a·L_D(x_{1−s}) + b·max(mean S − t, 0), cross-entropies with the true
  label, a = 5, b = 100, t = 0.1; selector and predictor trained jointly (Adam, lr 5e-4 as in §4.1,
  constant: the paper states no schedule).
- Stopping: the paper trains at most 200 epochs and selects hyper-parameters on the validation set;
  we apply the shared stopping rule of the learned methods (:mod:`.common`) with the validation loss
  = Eq. 7 on held-out images (deterministic: no random draws, networks in eval mode).

The predictor is initialised from the classifier's weights (the paper trains it from scratch for
200 epochs; initialising it is our budget choice, ``predictor_init="scratch"`` re-initialises it).
COMET explains its own predictor (``explains_own_model``): the harness scores its faithfulness
metrics on :meth:`metric_adapter` (the predictor on its input), and the run reports the predictor's
accuracy on x_s beside the classifier's (Table 2). The map is class-agnostic (the target is ignored).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from xaibench.attribution import Attribution
from xaibench.cost import FORWARD_BACKWARD, Cost, Shape
from xaibench.errors import UserError

from ..base import AttributionMethod, Requires, register_method
from .common import (
    cache_key,
    clone_adapter,
    holdout,
    in_chunks,
    public_summary,
    seeded_init,
    split_images,
    split_labels,
    stopping_rule,
    train_cached,
    train_to_plateau,
    training_line,
)

REMOVAL = "mean"


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Selector(nn.Module):
    """(B, 3, H, W) → S(x) (B, H, W) in [0, 1]: encoder at 1, 1/2, 1/4 resolution, decoder with skips."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.e1 = nn.Sequential(_conv(3, w), _conv(w, w))
        self.e2 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))
        self.e3 = nn.Sequential(_conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w))
        self.d2 = _conv(6 * w, 2 * w)
        self.d1 = _conv(3 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        d2 = self.d2(
            torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1)
        )
        d1 = self.d1(
            torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1)
        )
        return torch.sigmoid(self.out(d1))[:, 0]


def comet_loss(
    logits_p: torch.Tensor,
    logits_d: torch.Tensor,
    s: torch.Tensor,
    y: torch.Tensor,
    a: float,
    b: float,
    t: float,
):
    """Eq. 7: (total, L_P, L_D, R) for predictor/detector logits, selector maps s (B, H, W), labels y."""
    lp = F.cross_entropy(logits_p, y)
    ld = F.cross_entropy(logits_d, y)
    reg = (s.flatten(1).mean(1) - t).clamp_min(0).mean()
    return lp - a * ld + b * reg, lp, ld, reg


@dataclass(frozen=True)
class CometParams:
    """Eq. 7's weights a, b and target size t, Adam's lr and batch (the paper's §4.1), the
    selector's width, and how the predictor starts (``classifier`` weights or ``scratch``)."""

    batch_size: int = 64
    lr: float = 5e-4
    a: float = 5.0
    b: float = 100.0
    t: float = 0.1
    selector_width: int = 16
    predictor_init: str = "classifier"

    def __post_init__(self) -> None:
        if self.predictor_init not in ("classifier", "scratch"):
            raise UserError(
                f"comet predictor_init must be 'classifier' or 'scratch', got {self.predictor_init!r}"
            )
        if self.batch_size < 1 or self.selector_width < 1:
            raise UserError("comet batch_size and selector_width must be at least 1")
        if not self.lr > 0 or self.a < 0 or self.b < 0 or not 0 <= self.t <= 1:
            raise UserError("comet needs lr > 0, a ≥ 0, b ≥ 0 and t in [0, 1]")


@register_method("comet")
class Comet(AttributionMethod):
    """COMET: selector + predictor trained jointly against a frozen detector; explains its own predictor."""

    label = "COMET"
    requires = Requires(training=True)
    explains_own_model = True
    class_dependent = False
    queries_model = False
    Params = CometParams
    presets = {"quick": {"batch_size": 16}}
    RECIPE_VERSION = 2  # 2: shared stopping rule and validation

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.selector = None
        self.predictor = None
        self.fit_info: Dict[str, Any] = {}
        self._seen: Dict[str, List[torch.Tensor]] = {
            k: [] for k in ("comet", "predictor_full", "classifier", "label", "selected")
        }

    def cost(self, shape: Shape) -> Cost:
        """The selector (a small network) plus the three classifier-sized forwards ``observe``
        runs per image (predictor on the selection and on the full image, the classifier)."""
        return Cost(3.0)

    def fit_cost(self, shape: Shape, n_train: int) -> Cost:
        """At the step cap (an upper bound): per image, predictor and detector forward and backward
        (the detector's gradient reaches the selector); validation: both forwards."""
        rule = stopping_rule(self.preset)
        training = rule.max_steps * self.params.batch_size * (2 * FORWARD_BACKWARD)
        return training + rule.rounds * rule.val_images * Cost(2.0)

    def fit(self, adapter, train_data, ctx) -> None:
        p = self.params
        rule = stopping_rule(ctx.preset)
        hold = holdout(train_data, ctx, rule)
        selector = seeded_init(ctx.seed, "comet-selector", build=lambda: Selector(p.selector_width))
        selector = selector.to(adapter.device)
        predictor = clone_adapter(adapter, name=f"{adapter.name}-comet-predictor")
        if p.predictor_init == "scratch":

            def reset():
                for m in predictor.model.modules():
                    if hasattr(m, "reset_parameters") and m is not predictor.model:
                        m.reset_parameters()
                return predictor.model

            seeded_init(ctx.seed, "comet-predictor", build=reset)
        key = cache_key(
            "comet",
            adapter,
            {**asdict(p), "version": self.RECIPE_VERSION},
            ctx.seed,
            train_data,
            hold.val_split if hold.source == "val_data" else None,
            rule,
            extra={"removal": REMOVAL},
        )
        adapter.model.requires_grad_(False)  # the frozen detector
        try:
            info = train_cached(
                Path(ctx.cache_dir) / key,
                "comet",
                {"selector": selector, "predictor": predictor.model},
                lambda d: train_comet(p, selector, predictor, adapter, train_data, ctx, rule, hold, d),
            )
        finally:
            adapter.model.requires_grad_(True)
        selector.eval()
        predictor.model.eval()
        self.selector, self.predictor = selector, predictor
        self.fit_info = {"training": public_summary(info), "cache_key": key}

    def _require_fit(self) -> None:
        if self.selector is None:
            raise RuntimeError("comet must be fitted first (fit(adapter, train_split, ctx))")

    def metric_adapter(self, classifier_adapter):
        """The model COMET explains: its predictor (a ModelAdapter with the classifier's preprocessing)."""
        self._require_fit()
        return self.predictor

    @torch.no_grad()
    def select(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """S(x) (B, H, W), in blocks of at most ``rows`` images (default: the memory budget's)."""
        self._require_fit()
        return in_chunks(self.selector, rows or self.predictor.budget.rows(), x)

    def attribute(self, adapter, x, target, *, ids, masks=None) -> Attribution:
        return Attribution(self.select(x, adapter.budget.rows()), "pixel")

    @torch.no_grad()
    def predict(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """COMET's prediction f_P(x_s): logits (B, C), in blocks of at most ``rows`` images."""
        self._require_fit()
        rows = rows or self.predictor.budget.rows()
        return in_chunks(lambda xb: self.predictor.masked_logits(xb, self.selector(xb), REMOVAL), rows, x)

    @torch.no_grad()
    def observe(self, adapter, batch) -> None:
        rows = adapter.budget.rows()
        s = self.select(batch.x, rows)
        self._seen["comet"].append(self.predict(batch.x, rows).argmax(1).cpu())
        self._seen["predictor_full"].append(in_chunks(self.predictor.logits, rows, batch.x).argmax(1).cpu())
        self._seen["classifier"].append(in_chunks(adapter.logits, rows, batch.x).argmax(1).cpu())
        self._seen["label"].append(batch.labels.cpu())
        self._seen["selected"].append(s.flatten(1).mean(1).cpu())

    def notes(self) -> List[str]:
        if not self.fit_info:
            return []
        return [training_line("selector + predictor", self.fit_info["training"])]

    def report(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"training": dict(self.fit_info)}
        if self._seen["label"]:
            y = torch.cat(self._seen["label"])
            acc = {
                k: float((torch.cat(self._seen[k]) == y).float().mean())
                for k in ("comet", "predictor_full", "classifier")
            }
            out["accuracy"] = {
                "comet_predictor_on_selection": acc["comet"],
                "comet_predictor_on_full_image": acc["predictor_full"],
                "classifier": acc["classifier"],
                "mean_selected_fraction": float(torch.cat(self._seen["selected"]).mean()),
            }
        return out


def train_comet(
    p: CometParams, selector, predictor, adapter, train_data, ctx, rule, hold, directory: Path
) -> dict:
    """Selector and predictor trained jointly on Eq. 7 against the frozen detector ``adapter``,
    until the validation loss (Eq. 7 on held-out images, networks in eval mode) stops improving."""
    device = adapter.device

    def losses(x: torch.Tensor, y: torch.Tensor):
        s = selector(x)
        logits_p = predictor.masked_logits(x, s, REMOVAL)
        logits_d = adapter.masked_logits(x, 1 - s, REMOVAL)
        return comet_loss(logits_p, logits_d, s, y, p.a, p.b, p.t)

    predictor.model.requires_grad_(True)
    x_val = adapter.normalize(split_images(hold.val_split, hold.val_rows))
    y_val = split_labels(hold.val_split, hold.val_rows).to(device)

    def validate() -> float:
        adapter.model.eval()
        total, bs = 0.0, p.batch_size
        for s in range(0, len(x_val), bs):
            total += float(losses(x_val[s : s + bs], y_val[s : s + bs])[0]) * len(x_val[s : s + bs])
        return total / len(x_val)

    def step(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        adapter.model.eval()
        x = adapter.normalize(split_images(train_data, idx))
        y = split_labels(train_data, idx).to(device)
        return losses(x, y)[0]

    opt = torch.optim.Adam(list(selector.parameters()) + list(predictor.model.parameters()), lr=p.lr)
    info = train_to_plateau(
        directory,
        {"selector": selector, "predictor": predictor.model},
        opt,
        rule,
        hold.train_rows,
        p.batch_size,
        step,
        validate,
        seed=ctx.seed,
        desc="comet",
        schedule="constant",
        clip=None,
    )
    return {**info, "validation": hold.describe()}
