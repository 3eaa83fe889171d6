"""The one interface every attribution method answers.

A method is a small class that states its mathematics in :meth:`AttributionMethod.attribute`;
batching, devices, seeding, caching and removal live elsewhere. Register it with
``@register_method("name")`` and it appears in ``xaibench list methods`` and in runs::

    @register_method("gradient_x_input")
    class GradientXInput(AttributionMethod):
        label = "Grad × Input"
        requires = Requires(gradients=True)

        def attribute(self, adapter, x, target, *, ids, masks=None):
            x = x.clone().requires_grad_(True)
            score = adapter.logits(x).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, x)
            return Attribution((grad * x).sum(1), "pixel")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence

import torch

from xaibench.attribution import Attribution
from xaibench.cost import FORWARD_BACKWARD, FREE, Cost, Shape
from xaibench.params import NoParams
from xaibench.params import build as build_params
from xaibench.registry import METHODS

register_method = METHODS.register


@dataclass(frozen=True)
class Requires:
    """What a method needs. ``vit``, ``cnn``, ``attention`` and ``masks`` decide whether it can
    run at all (:meth:`AttributionMethod.applies_to`: otherwise it is skipped with the reason);
    ``training`` and ``distractors`` decide what the harness prepares (``fit`` on the training
    split; a pool of training images); ``gradients`` is recorded for the reader."""

    gradients: bool = False  # backpropagates through the model
    attention: bool = False  # reads attention maps (ViT with timm Attention blocks)
    vit: bool = False  # works on ViTs only
    cnn: bool = False  # works on CNNs only
    masks: bool = False  # ground-truth masks of the images it explains (Oracle)
    training: bool = False  # must be fitted on the training split first (learned explainers)
    distractors: bool = False  # training images at attribution time (mask optimisation)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass
class FitContext:
    """What ``fit`` may use: where to cache, the seed, the preset, a pool of training images
    (normalised, for distractors), a key that identifies the dataset × classifier."""

    cache_dir: str
    seed: int = 0
    preset: str = "paper"
    key: Dict[str, Any] = field(default_factory=dict)
    distractors: Optional[torch.Tensor] = None
    #: held-out images for early stopping of learned explainers (the dataset's "val" split)
    val_data: Any = None


class AttributionMethod:
    """Base class. Subclasses set ``name`` (by the decorator), ``label`` (display name),
    ``requires``, ``Params`` (a frozen dataclass whose defaults are the paper's settings,
    validated in ``__post_init__``) and ``presets`` (the fields a preset such as ``quick``
    changes), and implement :meth:`attribute` and :meth:`cost`. The optional hooks
    (:meth:`fit`, :meth:`observe`, :meth:`report`, :meth:`metric_adapter`, :meth:`notes`) do
    nothing unless a method needs them."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    requires: ClassVar[Requires] = Requires()
    Params: ClassVar[type] = NoParams
    presets: ClassVar[Dict[str, Dict[str, Any]]] = {}
    #: for methods that explain a model other than the classifier (COMET's own predictor)
    explains_own_model: ClassVar[bool] = False
    #: False when the map cannot depend on the target class (EigenCAM, attention rollout, ...):
    #: a metric that needs the map of another class (completeness) then reuses the map it has
    class_dependent: ClassVar[bool] = True
    #: False when the map does not come from querying the explained classifier (learned
    #: explainers answer from their own networks): the randomisation check does not apply
    queries_model: ClassVar[bool] = True

    def __init__(self, preset: str = "paper", seed: int = 0, **params: Any) -> None:
        self.preset = preset
        self.seed = seed
        self.params = build_params(self.Params, self.presets, preset, params, f"method '{self.name}'")

    def settings(self) -> Dict[str, Any]:
        """Everything that determines the maps (recorded in the run's config)."""
        return {"preset": self.preset, "seed": self.seed, **asdict(self.params)}

    def cost(self, shape: Shape) -> Cost:
        """Passes through the model to explain one image (default: one forward and backward)."""
        return FORWARD_BACKWARD

    def fit_cost(self, shape: Shape, n_train: int) -> Cost:
        """Passes through classifier-sized models to train the method (``fit``) once, at its
        step cap (default: nothing to train)."""
        return FREE

    def applies_to(self, adapter, has_masks: bool = True) -> Optional[str]:
        """None if the method can explain this model/dataset, else the reason it cannot."""
        r = self.requires
        if r.vit and not adapter.is_vit:
            return f"{self.name} needs a ViT; {adapter.name} is a CNN"
        if r.cnn and adapter.is_vit:
            return f"{self.name} needs a CNN; {adapter.name} is a ViT"
        if r.attention and not adapter.is_vit:
            return f"{self.name} reads attention maps; {adapter.name} has none"
        if r.masks and not has_masks:
            return f"{self.name} needs ground-truth masks; the dataset has none"
        return None

    def fit(self, adapter, train_data, ctx: FitContext) -> None:
        """Learned methods train (or load from cache) here; others need nothing."""

    def attribute(
        self,
        adapter,
        x: torch.Tensor,
        target: torch.Tensor,
        *,
        ids: Sequence[str],
        masks: Optional[torch.Tensor] = None,
    ) -> Attribution:
        """Maps for a batch: x (B, 3, H, W) normalised, target (B,) class indices."""
        raise NotImplementedError

    def observe(self, adapter, batch) -> None:
        """Called with every scored batch after its maps (e.g. to report accuracy); default: nothing."""

    def report(self) -> Dict[str, Any]:
        """What the run records about this method besides its settings (training logs, ...)."""
        return {}

    def metric_adapter(self, adapter):
        """The model whose outputs the metrics score: the classifier, unless the method explains
        a model of its own (COMET's predictor)."""
        return adapter

    def notes(self) -> List[str]:
        """Caveats the leaderboard prints under the table for this method (default: none)."""
        return []

    def display_name(self) -> str:
        return self.label or self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"


def create_method(name: str, **kwargs: Any) -> AttributionMethod:
    return METHODS.get(name)(**kwargs)


def list_methods(pattern: str = "*"):
    return METHODS.names(pattern)
