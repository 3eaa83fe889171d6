"""The surrogate (ViT-Shapley step 1, Covert et al. 2023; used by ViT-Shapley and Salvage).

A copy of the classifier fine-tuned to predict, on inputs with patches removed (removal ``drop``:
token dropping), what the classifier predicts on the clean image: loss KL(p(x) ‖ q(x_S)), subset
sizes uniform on {0, …, P} (the empty set included, since the explainers need v(∅)). The
surrogate defines the game v(S) = q(x_S) that both explainers learn to explain. Trained once per
dataset × classifier × recipe × seed, cached (see :mod:`.common`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import torch

from xaibench.adapter import ModelAdapter

from .common import cache_key, clone_adapter, dataset_name, epoch_batches, split_images, train_cached
from .sampling import uniform_size_masks

REMOVAL = "drop"


@dataclass(frozen=True)
class SurrogateRecipe:
    epochs: int
    batch_size: int
    masks_per_image: int
    lr: float
    weight_decay: float
    steps_per_epoch: int = 0  # 0: one pass over the training split
    version: int = 1


#: paper: salvage-paper §5.1 (fine-tuned on masked images for 50 epochs, batch 64, AdamW lr 1e-5,
#: wd 1e-5; one subset per image and step). quick: a short fine-tune within the CPU budget of the
#: embedded default (whose classifier was already trained with random token dropping).
RECIPES = {
    "paper": SurrogateRecipe(epochs=50, batch_size=64, masks_per_image=1, lr=1e-5, weight_decay=1e-5),
    "quick": SurrogateRecipe(
        epochs=2, batch_size=32, masks_per_image=2, lr=1e-4, weight_decay=1e-5, steps_per_epoch=12
    ),
}

_LOADED: Dict[str, ModelAdapter] = {}


def kl_to_clean(clean_probs: torch.Tensor, masked_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p ‖ softmax(masked_logits))."""
    logq = masked_logits.float().log_softmax(-1)
    return (clean_probs * (clean_probs.clamp_min(1e-12).log() - logq)).sum(-1).mean()


def fit_surrogate(
    adapter: ModelAdapter, train_split, ctx, recipe: SurrogateRecipe | None = None
) -> Tuple[ModelAdapter, str, dict]:
    """The surrogate of ``adapter`` (trained, or loaded from the cache): (adapter, cache key, meta)."""
    recipe = recipe or RECIPES[ctx.preset]
    key = cache_key("surrogate", adapter, recipe, ctx.seed, dataset_name(ctx, train_split))
    directory = Path(ctx.cache_dir) / key
    if str(directory) in _LOADED:
        return _LOADED[str(directory)], key, {"cached": True}
    sur = clone_adapter(adapter, name=f"{adapter.name}-surrogate")
    model, device, P = sur.model, adapter.device, adapter.num_patches
    steps = recipe.steps_per_epoch or max(1, len(train_split) // recipe.batch_size)
    M = recipe.masks_per_image
    holder = {}

    def make_opt():
        holder["opt"] = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        return holder["opt"]

    def run_epoch(epoch: int, g: torch.Generator, bar) -> Dict[str, float]:
        opt, total = holder["opt"], 0.0
        for idx in epoch_batches(len(train_split), recipe.batch_size, steps, g):
            x = adapter.normalize(split_images(train_split, idx))
            with torch.no_grad():
                p = adapter.probs(x).float()
            keep = uniform_size_masks(len(idx), M, P, g).to(device).flatten(0, 1)
            loss = kl_to_clean(
                p.repeat_interleave(M, 0), sur.masked_logits(x.repeat_interleave(M, 0), keep, REMOVAL)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            bar.step(float(loss.detach()))
        return {"kl": total / steps}

    info = train_cached(
        directory,
        {"surrogate": model},
        make_opt,
        recipe.epochs,
        steps,
        run_epoch,
        seed=ctx.seed,
        desc="surrogate",
        progress=ctx.progress,
    )
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    _LOADED[str(directory)] = sur
    return sur, key, info
