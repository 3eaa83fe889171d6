"""What ViT-Shapley and Salvage share: a surrogate, a patch explainer trained against the
surrogate's removal game, caching, and attribution by a single forward pass.

Subclasses state their mathematics: the output width per class, how masks are drawn, and the
loss. Training (``fit``): for each batch, the surrogate's v(N), v(∅) and v(S) for the sampled
masks S (token dropping, no gradients), the explainer's outputs on the clean images, the loss,
one AdamW step. Both are ViT-only (the explainer is built on the ViT backbone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from xaibench.attribution import Attribution

from ..base import AttributionMethod, Requires
from .common import (
    ExplainerRecipe,
    cache_key,
    dataset_name,
    epoch_batches,
    seeded_init,
    split_images,
    train_cached,
)
from .explainer import PatchExplainer
from .surrogate import REMOVAL, fit_surrogate

RECIPE_FIELDS = (
    "epochs",
    "batch_size",
    "masks_per_image",
    "lr",
    "weight_decay",
    "steps_per_epoch",
    "freeze_backbone",
    "mlp_hidden",
)


class AmortizedExplainer(AttributionMethod):
    requires = Requires(vit=True, training=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.net: Optional[PatchExplainer] = None
        self.surrogate = None
        self.fit_info: Dict[str, Any] = {}

    # ---- what a subclass defines
    def out_dim(self, num_classes: int) -> int:
        raise NotImplementedError

    def sample_masks(
        self, out: torch.Tensor, v_full: torch.Tensor, num_masks: int, g: torch.Generator
    ) -> torch.Tensor:
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
        p = self.params
        return ExplainerRecipe(**{k: p[k] for k in RECIPE_FIELDS}, guided=bool(p.get("guided", True)))

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
        recipe = self.recipe()
        sur, sur_key, sur_info = fit_surrogate(adapter, train_data, ctx)
        self.surrogate = sur
        C, device = adapter.num_classes, adapter.device
        net = seeded_init(
            ctx.seed,
            self.name,
            build=lambda: PatchExplainer(
                sur.model,
                adapter.num_prefix_tokens,
                self.out_dim(C),
                recipe.mlp_hidden,
                recipe.freeze_backbone,
            ),
        ).to(device)
        net.backbone.requires_grad_(not recipe.freeze_backbone)
        self.init_head(net)
        key = cache_key(
            self.name, adapter, recipe, ctx.seed, dataset_name(ctx, train_data), extra={"surrogate": sur_key}
        )
        steps = recipe.steps(len(train_data))
        holder = {}

        def make_opt():
            holder["opt"] = torch.optim.AdamW(
                [p for p in net.parameters() if p.requires_grad],
                lr=recipe.lr,
                weight_decay=recipe.weight_decay,
            )
            return holder["opt"]

        def run_epoch(epoch: int, g: torch.Generator, bar) -> Dict[str, float]:
            opt, total = holder["opt"], 0.0
            for idx in epoch_batches(len(train_data), recipe.batch_size, steps, g):
                x = adapter.normalize(split_images(train_data, idx))
                with torch.no_grad():
                    v_full, v_empty = self.game_endpoints(x)
                out = net(x)
                keep = self.sample_masks(out.detach(), v_full, recipe.masks_per_image, g).to(device)
                v_masked = sur.masked_probs(x, keep, REMOVAL)
                loss = self.loss(out, keep, v_masked, v_full, v_empty)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                bar.step(float(loss.detach()))
            return {"loss": total / steps}

        info = train_cached(
            Path(ctx.cache_dir) / key,
            {"explainer": net},
            make_opt,
            recipe.epochs,
            steps,
            run_epoch,
            seed=ctx.seed,
            desc=self.name,
            progress=ctx.progress,
            meta={"surrogate": sur_key},
        )
        net.eval()
        self.net = net
        self.fit_info = {
            "surrogate_seconds": sur_info.get("train_seconds"),
            "surrogate_cached": sur_info.get("cached"),
            "explainer_seconds": info.get("train_seconds"),
            "explainer_cached": info.get("cached"),
            "cache_key": key,
            "surrogate_key": sur_key,
        }

    def _require_fit(self) -> None:
        if self.net is None:
            raise RuntimeError(f"{self.name} must be fitted first (fit(adapter, train_split, ctx))")

    @torch.no_grad()
    def all_values(self, x: torch.Tensor) -> torch.Tensor:
        """Attributions (B, P, C) for every class."""
        self._require_fit()
        v_full, v_empty = self.game_endpoints(x)
        return self.values(self.net(x), v_full, v_empty)

    def attribute(self, adapter, x, target, *, ids, masks=None) -> Attribution:
        phi = self.all_values(x)
        maps = phi.gather(2, target.to(x.device).view(-1, 1, 1).expand(-1, phi.shape[1], 1))[..., 0]
        return Attribution(maps.reshape(len(x), *adapter.grid), "patch")

    def report(self) -> Dict[str, Any]:
        return {"training": dict(self.fit_info)}
