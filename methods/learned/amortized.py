"""What ViT-Shapley and Salvage share: a surrogate, a patch explainer trained against the
surrogate's removal game, cached training, and attribution by a single forward pass.

Subclasses state their mathematics: the output width per class, how masks are drawn (in training
and for the fixed validation masks), and the loss. Training (``fit``): for each batch, the
surrogate's v(N), v(∅) and v(S) for the sampled masks S (token dropping, no gradients), the
explainer's outputs on the clean images, the loss, one AdamW step (gradient norm clipped, cosine
schedule with warm-up, as in the ViT-Shapley reference training), until the validation loss (the
same loss on held-out images with fixed masks) stops improving (the shared rule of :mod:`.common`).
Both are ViT-only (the explainer is built on the ViT backbone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from xaibench.attribution import Attribution
from xaibench.cost import FORWARD_BACKWARD, Cost, Shape
from xaibench.errors import UserError
from xaibench.seeding import generator

from ..base import AttributionMethod, Requires
from .common import (
    cache_key,
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
from .explainer import PatchExplainer
from .surrogate import REMOVAL, fit_surrogate, surrogate_fit_cost


@dataclass(frozen=True)
class ExplainerParams:
    """The training recipe of ViT-Shapley and Salvage (the stopping rule is shared, see
    :mod:`.common`). ``freeze_backbone`` trains only the added block, LayerNorm and MLP (the quick
    preset's budget choice; the papers fine-tune the whole explainer)."""

    batch_size: int = 64
    masks_per_image: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-5
    freeze_backbone: bool = False
    mlp_layers: int = 3
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "masks_per_image", "mlp_layers"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "mlp_ratio"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay must be ≥ 0, got {self.weight_decay}")


@dataclass(frozen=True)
class ExplainerRecipe:
    """Everything that determines a trained explainer: its parameters, the schedule, the clipping
    and the subclass's recipe version."""

    params: ExplainerParams
    schedule: str = "cosine"
    clip: float = 1.0
    version: int = 1


def explainer_fit_cost(params: ExplainerParams, rule, shape: Shape) -> Cost:
    """Forward-equivalents of training at the step cap (an upper bound: early stopping ends
    sooner): per image, the explainer's forward and backward, the surrogate's v(N) and v(∅), and
    its masked forwards (half the patches kept on average); validation rounds added."""
    P = shape.num_patches
    per_image = FORWARD_BACKWARD + Cost(
        shape.kept(P) + shape.kept(0) + params.masks_per_image * shape.kept(P / 2)
    )
    validation = (
        rule.rounds
        * rule.val_images
        * Cost(1 + shape.kept(P) + shape.kept(0) + rule.val_masks * shape.kept(P / 2))
    )
    return rule.max_steps * params.batch_size * per_image + validation


class AmortizedExplainer(AttributionMethod):
    requires = Requires(vit=True, training=True)
    queries_model = False
    Params = ExplainerParams
    #: bumped by a subclass when its training changes what it produces
    recipe_version: int = 1
    #: ``tanh`` on the explainer's outputs, or ``none``
    activation: str = "none"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.net: Optional[PatchExplainer] = None
        self.surrogate = None
        self.fit_info: Dict[str, Any] = {}

    # ---- what a subclass defines
    def out_dim(self, num_classes: int) -> int:
        raise NotImplementedError

    def sample_masks(
        self,
        out: torch.Tensor,
        v_full: torch.Tensor,
        labels: torch.Tensor,
        num_masks: int,
        g: torch.Generator,
    ) -> torch.Tensor:
        """Training masks (B, M, P) for a batch (``out``: the detached outputs)."""
        raise NotImplementedError

    def validation_masks(self, n: int, num_masks: int, num_patches: int, g: torch.Generator) -> torch.Tensor:
        """Fixed validation masks (n, M, P), drawn once from ``g``."""
        raise NotImplementedError

    def loss(
        self,
        out: torch.Tensor,
        keep: torch.Tensor,
        v_masked: torch.Tensor,
        v_full: torch.Tensor,
        v_empty: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError

    def values(self, out: torch.Tensor, v_full: torch.Tensor, v_empty: torch.Tensor) -> torch.Tensor:
        """Attributions (B, P, C) of every class from the explainer's outputs."""
        raise NotImplementedError

    def init_head(self, net: PatchExplainer) -> None:
        """Adjust the freshly initialised explainer before training (default: nothing)."""

    def recipe(self) -> ExplainerRecipe:
        return ExplainerRecipe(self.params, version=self.recipe_version)

    def cost(self, shape: Shape) -> Cost:
        """One explainer forward and the surrogate's v(N) and v(∅) per image."""
        return Cost(1 + shape.kept(shape.num_patches) + shape.kept(0))

    def fit_cost(self, shape: Shape, n_train: int) -> Cost:
        rule = stopping_rule(self.preset)
        return explainer_fit_cost(self.params, rule, shape) + surrogate_fit_cost(self.preset, shape)

    # ---- shared machinery
    def game_endpoints(self, x: torch.Tensor):
        """Surrogate probabilities v(N) and v(∅), (B, C) each."""
        P = self.surrogate.num_patches
        keep = torch.stack(
            [
                torch.ones(len(x), P, dtype=torch.bool, device=x.device),
                torch.zeros(len(x), P, dtype=torch.bool, device=x.device),
            ],
            1,
        )
        v = self.surrogate.masked_probs(x, keep, REMOVAL)
        return v[:, 0], v[:, 1]

    def fit(self, adapter, train_data, ctx) -> None:
        rule = stopping_rule(ctx.preset)
        hold = holdout(train_data, ctx, rule)
        sur, sur_key, sur_info = fit_surrogate(adapter, train_data, ctx)
        self.surrogate = sur
        net = build_net(self, adapter, ctx.seed)
        key = cache_key(
            self.name,
            adapter,
            self.recipe(),
            ctx.seed,
            train_data,
            hold.val_split if hold.source == "val_data" else None,
            rule,
            extra={"surrogate": sur_key},
        )
        info = train_cached(
            Path(ctx.cache_dir) / key,
            self.name,
            {"explainer": net},
            lambda directory: train_explainer(self, net, adapter, train_data, ctx, rule, hold, directory),
        )
        net.eval()
        self.net = net
        self.fit_info = {
            "surrogate": public_summary(sur_info),
            "explainer": public_summary(info),
            "cache_key": key,
            "surrogate_key": sur_key,
        }

    def _require_fit(self) -> None:
        if self.net is None:
            raise RuntimeError(f"{self.name} must be fitted first (fit(adapter, train_split, ctx))")

    @torch.no_grad()
    def all_values(self, x: torch.Tensor, rows: Optional[int] = None) -> torch.Tensor:
        """Attributions (B, P, C) for every class, in blocks of at most ``rows`` images (default:
        the memory budget's rows per forward)."""
        self._require_fit()

        def block(xb: torch.Tensor) -> torch.Tensor:
            v_full, v_empty = self.game_endpoints(xb)
            return self.values(self.net(xb), v_full, v_empty)

        return in_chunks(block, rows or self.surrogate.budget.rows(), x)

    def attribute(self, adapter, x, target, *, ids, masks=None) -> Attribution:
        phi = self.all_values(x, adapter.budget.rows())
        maps = phi.gather(2, target.to(x.device).view(-1, 1, 1).expand(-1, phi.shape[1], 1))[..., 0]
        return Attribution(maps.reshape(len(x), *adapter.grid), "patch")

    def report(self) -> Dict[str, Any]:
        return {"training": dict(self.fit_info)}

    def notes(self) -> List[str]:
        if not self.fit_info:
            return []
        info = self.fit_info
        return [
            training_line("explainer", info["explainer"])
            + "; "
            + training_line("surrogate", info["surrogate"])
        ]


def build_net(method: AmortizedExplainer, adapter, seed: int) -> PatchExplainer:
    """The explainer on a copy of the surrogate's backbone, seeded, with the subclass's head."""
    recipe = method.recipe()
    net = seeded_init(
        seed,
        method.name,
        build=lambda: PatchExplainer(
            method.surrogate.model,
            adapter.num_prefix_tokens,
            method.out_dim(adapter.num_classes),
            recipe.params.mlp_layers,
            recipe.params.mlp_ratio,
            recipe.params.freeze_backbone,
            method.activation,
        ),
    ).to(adapter.device)
    net.backbone.requires_grad_(not recipe.params.freeze_backbone)
    method.init_head(net)
    return net


def train_explainer(
    method: AmortizedExplainer, net, adapter, train_data, ctx, rule, hold, directory: Path
) -> dict:
    """Train ``net`` against the fitted surrogate's removal game until the validation loss (the
    same loss on held-out images with fixed, seeded masks) stops improving."""
    recipe, sur, device, P = method.recipe(), method.surrogate, adapter.device, adapter.num_patches
    params = recipe.params
    x_val = adapter.normalize(split_images(hold.val_split, hold.val_rows))
    keep_val = method.validation_masks(
        len(x_val), rule.val_masks, P, generator(ctx.seed, "validation-masks", method.name)
    ).to(device)
    with torch.no_grad():
        full_val, empty_val = method.game_endpoints(x_val)
        masked_val = sur.masked_probs(x_val, keep_val, REMOVAL)

    def validate() -> float:
        total, bs = 0.0, params.batch_size
        for s in range(0, len(x_val), bs):
            sl = slice(s, s + bs)
            loss = method.loss(net(x_val[sl]), keep_val[sl], masked_val[sl], full_val[sl], empty_val[sl])
            total += float(loss) * len(x_val[sl])
        return total / len(x_val)

    def step(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = adapter.normalize(split_images(train_data, idx))
        with torch.no_grad():
            v_full, v_empty = method.game_endpoints(x)
        out = net(x)
        labels = split_labels(train_data, idx).to(device)
        keep = method.sample_masks(out.detach(), v_full, labels, params.masks_per_image, g).to(device)
        v_masked = sur.masked_probs(x, keep, REMOVAL)
        return method.loss(out, keep, v_masked, v_full, v_empty)

    opt = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=params.lr, weight_decay=params.weight_decay
    )
    info = train_to_plateau(
        directory,
        {"explainer": net},
        opt,
        rule,
        hold.train_rows,
        params.batch_size,
        step,
        validate,
        seed=ctx.seed,
        desc=method.name,
        schedule=recipe.schedule,
        clip=recipe.clip,
    )
    return {**info, "validation": hold.describe()}
