"""The surrogate (ViT-Shapley step 1; Covert, Kim and Lee 2023, "Learning to estimate Shapley values
with vision transformers"), used by ViT-Shapley and Salvage.

A copy of the classifier fine-tuned to predict, on inputs with patches removed (removal ``drop``:
token dropping), what the classifier predicts on the clean image: loss KL(p(x) ‖ q(x_S)), subset
sizes uniform on {0, …, P} (the empty set included, since the explainers need v(∅)). The
surrogate defines the game v(S) = q(x_S) that both explainers learn to explain.

Training follows the reference setting (AdamW, weight decay 1e-5, linear warm-up and cosine decay,
gradient norm clipped to 1) under the shared stopping rule (:mod:`.common`): validation loss = the
same KL on held-out images with fixed, seeded masks (sizes uniform on {0, …, P}).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import torch

from xaibench.adapter import ModelAdapter
from xaibench.cost import Cost, Shape
from xaibench.seeding import generator

from .common import (
    cache_key,
    clone_adapter,
    holdout,
    split_images,
    stopping_rule,
    train_cached,
    train_to_plateau,
    training_budget,
)
from .sampling import uniform_size_masks

REMOVAL = "drop"


@dataclass(frozen=True)
class SurrogateRecipe:
    batch_size: int
    masks_per_image: int
    lr: float
    weight_decay: float
    schedule: str = "cosine"
    clip: float = 1.0
    version: int = 2  # 2: shared stopping rule, validation, cosine schedule and clipping


#: paper: salvage-paper §5.1 / the ViT-Shapley reference (batch 64, AdamW lr 1e-5, wd 1e-5; one
#: subset per image and step). quick: a larger rate for the few hundred steps of the CPU budget
#: (the embedded default's classifier was already trained with random token dropping).
RECIPES = {
    "paper": SurrogateRecipe(batch_size=64, masks_per_image=1, lr=1e-5, weight_decay=1e-5),
    "quick": SurrogateRecipe(batch_size=16, masks_per_image=2, lr=1e-4, weight_decay=1e-5),
}


def kl_to_clean(clean_probs: torch.Tensor, masked_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p ‖ softmax(masked_logits))."""
    logq = masked_logits.float().log_softmax(-1)
    return (clean_probs * (clean_probs.clamp_min(1e-12).log() - logq)).sum(-1).mean()


def surrogate_fit_cost(preset: str, shape: Shape) -> Cost:
    """Forward-equivalents of training the surrogate at the step cap (an upper bound): per image,
    the classifier's clean forward and the surrogate's masked forwards and backwards (sizes
    uniform, so half the patches kept on average); validation rounds added."""
    recipe, rule = RECIPES[training_budget(preset)], stopping_rule(preset)
    half = shape.kept(shape.num_patches / 2)
    per_image = Cost(1 + recipe.masks_per_image * half, recipe.masks_per_image * half)
    validation = rule.rounds * rule.val_images * Cost(rule.val_masks * half)
    return rule.max_steps * recipe.batch_size * per_image + validation


def fit_surrogate(
    adapter: ModelAdapter, train_split, ctx, recipe: SurrogateRecipe | None = None
) -> Tuple[ModelAdapter, str, dict]:
    """The surrogate of ``adapter`` (trained, or loaded from the cache): (adapter, cache key, summary)."""
    recipe = recipe or RECIPES[training_budget(ctx.preset)]
    rule = stopping_rule(ctx.preset)
    hold = holdout(train_split, ctx, rule)
    key = cache_key(
        "surrogate",
        adapter,
        recipe,
        ctx.seed,
        train_split,
        hold.val_split if hold.source == "val_data" else None,
        rule,
        extra={"removal": REMOVAL},
    )
    sur = clone_adapter(adapter, name=f"{adapter.name}-surrogate")
    model, device, P, M = sur.model, adapter.device, adapter.num_patches, recipe.masks_per_image

    def train(directory: Path) -> dict:
        model.requires_grad_(True)
        x_val = adapter.normalize(split_images(hold.val_split, hold.val_rows))
        with torch.no_grad():
            p_val = adapter.probs(x_val).float()
        keep_val = uniform_size_masks(
            len(x_val), rule.val_masks, P, generator(ctx.seed, "validation-masks", "surrogate")
        ).to(device)

        def validate() -> float:
            q = sur.masked_probs(x_val, keep_val, REMOVAL).float().clamp_min(1e-12)
            p = p_val[:, None, :]
            return float((p * (p.clamp_min(1e-12).log() - q.log())).sum(-1).mean())

        def step(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            x = adapter.normalize(split_images(train_split, idx))
            with torch.no_grad():
                p = adapter.probs(x).float()
            keep = uniform_size_masks(len(idx), M, P, g).to(device).flatten(0, 1)
            return kl_to_clean(
                p.repeat_interleave(M, 0), sur.masked_logits(x.repeat_interleave(M, 0), keep, REMOVAL)
            )

        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        info = train_to_plateau(
            directory,
            {"surrogate": model},
            opt,
            rule,
            hold.train_rows,
            recipe.batch_size,
            step,
            validate,
            seed=ctx.seed,
            desc="surrogate",
            schedule=recipe.schedule,
            clip=recipe.clip,
        )
        return {**info, "validation": hold.describe()}

    info = train_cached(Path(ctx.cache_dir) / key, "surrogate", {"surrogate": model}, train)
    model.eval()
    model.requires_grad_(False)
    return sur, key, info
