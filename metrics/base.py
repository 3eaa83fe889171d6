"""The Metric interface.

A metric is a pure, batched tensor function at its core plus a thin registered class that
carries its metadata as class attributes: the score names it provides, the direction of
each (``up`` = higher is better), its category (what it measures, declared on the class as
Quantus does: Hedström et al., "Quantus: An Explainable AI Toolkit for Responsible Evaluation
of Neural Network Explanations", JMLR 2023), and what it needs (ground-truth masks, the
removal operation, a second label). ``compute`` returns per-image scores and, for curve
metrics, per-image curves. Dataset-level metrics (PxAP) return per-image *states* instead,
and ``aggregate`` turns any set of states into the dataset value (so that a leaderboard can
bootstrap over images).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional, Sequence, Tuple

import torch

from xaibench.attribution import Attribution
from xaibench.batch import Batch
from xaibench.cost import FREE, Cost, Shape
from xaibench.errors import UserError
from xaibench.params import NoParams
from xaibench.params import build as build_params
from xaibench.registry import METRICS
from xaibench.removal import Removal

UP, DOWN = "up", "down"


def register_metric(name: Optional[str] = None):
    """Register a Metric class under its family ``name`` (default: its first score) and under
    each score name it provides, so that ``--metrics`` takes either."""

    def decorator(cls):
        cls.name = name or cls.provides[0]
        for n in dict.fromkeys([cls.name, *cls.provides]):
            METRICS.register(n)(cls)
        return cls

    return decorator


@dataclass
class EvalContext:
    """Shared settings of a run's metrics: the model, the removal operation, the seed, the
    cardinality sub-grid (None = every k), the number of masks for sampled curves, and ``amp``:
    None (float32) or ``"bf16"``/``"fp16"`` autocast of the metrics' model passes. ``adapter``
    becomes the adapter's metrics view carrying ``amp`` (same model, budget and engine); the
    attributions being scored are computed elsewhere and never autocast."""

    adapter: Any
    removal: Removal
    seed: int = 0
    cardinalities: Optional[int | Sequence[int]] = None
    n_masks: Optional[int] = None
    distractors: Optional[torch.Tensor] = None  # pool of normalised training images (distractor removal)
    amp: Optional[str] = None

    def __post_init__(self) -> None:
        view = getattr(self.adapter, "for_metrics", None)
        if view is not None:
            self.adapter = view(self.amp)
        elif self.amp is not None:
            raise UserError(f"amp '{self.amp}' needs a ModelAdapter (got {type(self.adapter).__name__})")

    def removal_cost(self, shape: Shape, kept: torch.Tensor) -> Cost:
        """Forwards of masked inputs keeping ``kept`` patches each (a tensor of counts)."""
        if self.removal.strategy == "drop":
            return Cost(forwards=float(sum(shape.kept(float(k)) for k in kept)))
        return Cost(forwards=float(len(kept) * self.removal.draws))

    def ks(self, n_patches: int, default: Optional[int | Sequence[int]] = None) -> torch.Tensor:
        """The cardinalities evaluated: every k in 1..N (``"all"`` or None), ``count`` evenly spaced
        k in 1..N (an int; N is always included), or an explicit list of k. The run's setting wins
        over a metric's ``default`` (its preset)."""
        spec = self.cardinalities if self.cardinalities is not None else default
        if spec is None or spec == "all":
            return torch.arange(1, n_patches + 1)
        if isinstance(spec, int):
            return torch.linspace(1, n_patches, min(spec, n_patches)).round().long().unique()
        ks = sorted(set(int(k) for k in spec))
        if ks[0] < 1 or ks[-1] > n_patches:
            raise UserError(f"cardinalities must lie in 1..{n_patches} (the number of patches), got {ks}")
        return torch.as_tensor(ks)


@dataclass
class MetricResult:
    scores: Dict[str, torch.Tensor] = field(default_factory=dict)  # name → (B,)
    curves: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )  # name → x (K,), y (B, K)
    states: Dict[str, torch.Tensor] = field(default_factory=dict)  # name → (B, S)


Explain = Callable[[torch.Tensor], Attribution]


class Metric:
    name: ClassVar[str] = ""
    provides: ClassVar[Tuple[str, ...]] = ()
    directions: ClassVar[Dict[str, str]] = {}
    labels: ClassVar[Dict[str, str]] = {}  # display names, e.g. {"r_mif": "R-MIF"}
    #: what the family measures ("faithfulness", "localisation", ...): the leaderboard's aggregate
    #: rank selects metrics by it; None = no category (the scores still enter "all")
    category: ClassVar[Optional[str]] = None
    needs_masks: ClassVar[bool] = False
    needs_removal: ClassVar[bool] = False
    needs_second_label: ClassVar[bool] = False
    dataset_level: ClassVar[bool] = False
    #: scores computed on a seeded sample of the images (NaN elsewhere, not a failure)
    sampled: ClassVar[bool] = False
    Params: ClassVar[type] = NoParams
    presets: ClassVar[Dict[str, Dict[str, Any]]] = {}

    def __init__(self, preset: str = "paper", **params: Any) -> None:
        self.preset = preset
        self.params = build_params(self.Params, self.presets, preset, params, f"metric '{self.name}'")

    def settings(self) -> Dict[str, Any]:
        return {"preset": self.preset, **asdict(self.params)}

    def cost(self, shape: Shape, ctx: "EvalContext", method) -> Cost:
        """Passes through the model to score one image's map of ``method`` (re-explanations
        included, counted with the method's own cost). Default: none."""
        return FREE

    def applies(self, adapter, has_masks: bool) -> Optional[str]:
        """None if the metric can run on this model and dataset, else the reason it cannot."""
        if self.needs_masks and not has_masks:
            return f"{self.name} needs ground-truth masks; the dataset has none"
        return None

    def compute(
        self, ctx: EvalContext, batch: Batch, attribution: Attribution, explain: Optional[Explain] = None
    ) -> MetricResult:
        """Per-image results of one batch. ``explain(targets)`` re-runs the method being scored
        for other target classes (completeness/soundness explain the second label)."""
        raise NotImplementedError

    def aggregate(self, name: str, states: torch.Tensor) -> float:
        """Dataset value from per-image states (N, S) (dataset-level metrics only)."""
        raise NotImplementedError(f"{self.name} is not a dataset-level metric")


def create_metric(name: str, **kwargs: Any) -> Metric:
    return METRICS.get(name)(**kwargs)


def list_metrics(pattern: str = "*"):
    return METRICS.names(pattern)


def metric_directions() -> Dict[str, str]:
    """Direction (``up``/``down``) of every registered score name."""
    out: Dict[str, str] = {}
    for n in METRICS.names():
        out.update(METRICS.get(n).directions)
    return out


def metric_label(name: str) -> str:
    """Display name of a score ("r_srg" → "R-SRG" unless the metric says otherwise)."""
    if name in METRICS:
        label = METRICS.get(name).labels.get(name)
        if label:
            return label
    return name.upper().replace("_", "-")
