"""Exact-Shapley check of the learned explainers (issue 5).

A tiny ViT (32×32 synthetic images, patch 8 → 16 patches) is trained on ``synthetic``; its
surrogate, ViT-Shapley and Salvage are trained on the training split; on held-out test images
the exact Shapley values of the surrogate's removal game (token dropping) are computed by brute
force over all 2^16 = 65,536 subsets, for the probability game v(S) = p_c(S) and the
log-probability game log p_c(S), c the predicted class. Reported: Pearson correlation between each
explainer's map and each game's exact values (per image over the 16 patches, then the mean and the
minimum; and pooled over all images × patches), and
ViT-Shapley's efficiency gap |Σφ − (v(N) − v(∅))|.

    .venv/bin/python perf/bench_exact_shapley.py [--steps 1200] [--n-eval 6] [--cache /tmp/xb_exact]

Targets: ViT-Shapley ≥ 0.9 on p_c, Salvage ≥ 0.8 on log p_c, efficiency ≤ 1e-4.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from xaibench.datasets import load_dataset
from xaibench.io import cache_dir as resolve_cache_dir
from xaibench.methods import FitContext, create_method
from xaibench.methods.learned import surrogate
from xaibench.methods.learned.exact_shapley import exact_shapley, removal_game
from xaibench.models import ClassifierRecipe, load_model, register_model


@register_model("bench_tiny_vit16")
def bench_tiny_vit16() -> ClassifierRecipe:
    """Tiny ViT for the exact-Shapley benchmark: 32×32, patch 8 (16 patches), CLS + 1 register."""
    return ClassifierRecipe(
        "vit",
        dict(
            patch_size=8,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            reg_tokens=1,
            no_embed_class=True,
            global_pool="token",
        ),
        dataset_options={"image_size": 32, "n_train": 3000, "n_val": 300},
        input_size=(32, 32),
        epochs=8,
        lr=2e-3,
    )


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of (n, P) tensors."""
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps", type=int, default=1200, help="explainer training steps (batch 16, 32 masks each)"
    )
    ap.add_argument("--surrogate-steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-3, help="explainer learning rate (AdamW)")
    ap.add_argument("--n-eval", type=int, default=6)
    ap.add_argument("--cache", default="/tmp/xb_exact")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest for this tiny model on a shared machine)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    adapter = load_model("bench_tiny_vit16", cache_dir=args.cache, dataset_options={"image_size": 32})
    train = load_dataset("synthetic", "train", n_train=3000, image_size=32)
    test = load_dataset("synthetic", "test", n_test=args.n_eval, image_size=32)
    print(f"classifier: test accuracy {adapter.meta['test_accuracy']:.3f} ({time.time() - t0:.0f}s)")
    surrogate.RECIPES["bench"] = surrogate.SurrogateRecipe(
        epochs=1,
        batch_size=32,
        masks_per_image=4,
        lr=1e-4,
        weight_decay=1e-5,
        steps_per_epoch=args.surrogate_steps,
    )
    ctx = FitContext(cache_dir=str(resolve_cache_dir(args.cache) / "explainers"), preset="bench", seed=0)
    recipe = dict(
        epochs=4,
        steps_per_epoch=args.steps // 4,
        batch_size=16,
        masks_per_image=32,
        weight_decay=1e-5,
        freeze_backbone=False,
    )
    methods = {
        "vit_shapley": create_method("vit_shapley", preset="paper", lr=args.lr, **recipe),
        "salvage": create_method("salvage", preset="paper", lr=args.lr, **recipe),
        "salvage_unguided": create_method("salvage", preset="paper", lr=args.lr, guided=False, **recipe),
    }
    seconds = {}
    for name, m in methods.items():
        t = time.time()
        ctx.preset = "bench"
        m.fit(adapter, train, ctx)
        seconds[name] = round(time.time() - t, 1)
    x = adapter.normalize(torch.stack([test[i].image for i in range(len(test))]))
    sur = methods["vit_shapley"].surrogate
    t = time.time()
    game = removal_game(sur, x)  # (B, 2^P, C)
    target = game[:, -1].argmax(1)
    p_c = game[torch.arange(len(x)), :, target]  # (B, 2^P): row s = coalition bitmask s
    exact = {"p": exact_shapley(p_c.T).T, "log_p": exact_shapley(p_c.clamp_min(1e-12).log().T).T}
    game_seconds = round(time.time() - t, 1)
    results = {}
    for name, m in methods.items():
        phi = m.all_values(x)
        maps = phi[torch.arange(len(x)), :, target]
        results[name] = {g: round(float(pearson(maps, v).mean()), 4) for g, v in exact.items()}
        results[name].update({f"{g}_min": round(float(pearson(maps, v).min()), 4) for g, v in exact.items()})
        results[name].update(
            {
                f"{g}_pooled": round(float(pearson(maps.reshape(1, -1), v.reshape(1, -1))), 4)
                for g, v in exact.items()
            }
        )
    vs = methods["vit_shapley"]
    v_full, v_empty = vs.game_endpoints(x)
    eff = float((vs.all_values(x).sum(1) - (v_full - v_empty)).abs().max())
    report = {
        "pearson": results,
        "vit_shapley_efficiency_max_abs_gap": eff,
        "train_seconds": seconds,
        "surrogate_steps": args.surrogate_steps,
        "explainer_steps": args.steps,
        "batch_size": 16,
        "masks_per_image": 32,
        "lr": args.lr,
        "n_eval_images": len(x),
        "num_patches": adapter.num_patches,
        "game_seconds": game_seconds,
        "total_seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
