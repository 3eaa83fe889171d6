"""Exact-Shapley check of the learned explainers, on a game with interactions between patches.

Data (``bench_counts``, generated here from a seed): 32×32 images, a 4×4 grid of 8×8 cells (= the
ViT's 16 patches) on a noisy grey background; some cells hold a coloured square. The class counts
the red squares and the blue squares, each capped at 2: label = min(#red, 2) + 3·min(#blue, 2)
(9 balanced classes; a capped count is 2, 3 or 4 with equal odds), and 0–3 green or yellow squares
are distractors. The game has both kinds of interaction: with exactly 1 or 2 red squares every red
square (and every empty cell, which rules out a hidden one) matters jointly — a single red square
alone says little — while with 3 or 4 red squares they are redundant, so removing one changes
nothing. Single-patch values v({i}) − v(∅) miss the first kind and leave-one-out
v(N) − v(N∖{i}) the second.

A tiny ViT (patch 8, 16 patches, CLS + 1 register) is trained on it (its test accuracy is
recorded); the surrogate, ViT-Shapley and Salvage are trained under the shared stopping rule of
the learned methods (a "bench" rule set by the options below; validation on the dataset's val
split); on held-out test images the exact Shapley values of the surrogate's removal game (token
dropping) are computed over all 2^16 subsets for three games of the predicted class c: the
probability game v(S) = p_c(S), the log-probability game log p_c(S) and the centred
log-probability game log p_c(S) − mean_c' log p_c'(S) (the game whose Shapley values Salvage's
class-centred φ⁺ − φ⁻ estimates when it is additive; it equals the surrogate's class-centred
logits). Every map is compared with every game, per image over the 16 patches (Pearson and
Spearman), over the *informative* images — those whose exact values vary over the patches (std ≥ 0.1
× the median std; the images without red or blue squares have all values ≈ 0, and a correlation
there measures noise, for every method alike) — and over all images; also pooled over images ×
patches, and the mean absolute error relative to the mean absolute exact value. Maps: ViT-Shapley,
Salvage, Salvage with the paper's random sampler (``guided=False``), and the baselines single-patch,
leave-one-out and an untrained explainer (a freshly initialised ViT-Shapley network with its
efficient normalisation). Also recorded: ViT-Shapley's efficiency gap |Σφ − (v(N) − v(∅))|.

    .venv/bin/python perf/bench_exact_shapley.py --out perf/bench_exact_shapley.result.json

(the defaults reproduce the committed result; 1 torch thread; the cache defaults to /tmp/xb_exact;
about 30 minutes on one busy CPU core)
Target (``targets`` in the result): each learned explainer beats the best baseline by ≥ 0.05 mean
Pearson over the informative images on the game it is judged on — ViT-Shapley: p; Salvage: log p
(and, reported alongside, the centred log p it parametrises).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from xaibench.datasets import TensorSplit, load_dataset, register_dataset
from xaibench.io import cache_dir as resolve_cache_dir
from xaibench.methods import FitContext, create_method
from xaibench.methods.learned import common, surrogate
from xaibench.methods.learned.amortized import build_net
from xaibench.methods.learned.exact_shapley import coalition_masks, exact_shapley, removal_game
from xaibench.models import ClassifierRecipe, load_model, register_model
from xaibench.seeding import derive_seed

GRID, CELL = 4, 8
SIZE = GRID * CELL
COLOURS = np.array([(210, 40, 40), (40, 80, 215), (40, 170, 60), (225, 200, 40)])  # red blue green yellow
CLASSES = [f"red{r}_blue{b}" for b in ("0", "1", "2+") for r in ("0", "1", "2+")]


def _counts(rng: np.random.Generator, label: int):
    """(#red, #blue, #distractors) of an image of class ``label`` (capped counts 2, 3, 4 equally likely)."""
    red, blue = label % 3, label // 3
    red = red if red < 2 else 2 + int(rng.integers(3))
    blue = blue if blue < 2 else 2 + int(rng.integers(3))
    return red, blue, int(rng.integers(4))


def generate(n: int, seed: int, split: str):
    """uint8 images (n, 3, 32, 32) and labels (n,), a function of (seed, split, index) only."""
    images = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng(derive_seed(seed, "bench_counts", split, i))
        label = i % len(CLASSES)
        red, blue, other = _counts(rng, label)
        colours = [0] * red + [1] * blue + [2 + int(rng.integers(2)) for _ in range(other)]
        cells = rng.permutation(GRID * GRID)[: len(colours)]
        img = rng.normal(0, 10, (SIZE, SIZE, 1)) + rng.uniform(90, 160) + rng.normal(0, 4, (1, 1, 3))
        for cell, colour in zip(cells, colours):
            r, c = divmod(int(cell), GRID)
            side = int(rng.integers(5, 8))
            y = r * CELL + int(rng.integers(0, CELL - side + 1))
            x = c * CELL + int(rng.integers(0, CELL - side + 1))
            img[y : y + side, x : x + side] = COLOURS[colour] + rng.uniform(-15, 15, 3)
        images[i] = np.clip(img, 0, 255).round().astype(np.uint8).transpose(2, 0, 1)
        labels[i] = label
    return torch.from_numpy(images), torch.from_numpy(labels)


@register_dataset("bench_counts")
def load_counts(
    split: str, *, seed: int = 0, n_train: int = 8000, n_val: int = 500, n_test: int = 500, **_ignored
) -> TensorSplit:
    n = {"train": n_train, "val": n_val, "test": n_test}[split]
    images, labels = generate(n, seed, split)
    ids = [f"bench_counts-{split}-{i:05d}" for i in range(n)]
    return TensorSplit("bench_counts", split, CLASSES, images, labels, ids)


@register_model("bench_counts_vit")
def bench_counts_vit() -> ClassifierRecipe:
    """Tiny ViT for the exact-Shapley benchmark: 32×32, patch 8 (16 patches), CLS + 1 register."""
    return ClassifierRecipe(
        "vit",
        dict(
            patch_size=8,
            embed_dim=64,
            depth=3,
            num_heads=4,
            mlp_ratio=2.0,
            reg_tokens=1,
            no_embed_class=True,
            global_pool="token",
        ),
        dataset="bench_counts",
        input_size=(SIZE, SIZE),
        epochs=30,
        lr=2e-3,
    )


# ------------------------------------------------------------------------------------ scoring


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of (n, P) tensors (NaN for a constant row)."""
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den, torch.full_like(den, float("nan")))


def ranks(a: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks with ties averaged (for Spearman)."""
    out = torch.empty_like(a, dtype=torch.float64)
    for i, row in enumerate(a.double()):
        order = row.argsort()
        r = torch.empty_like(row)
        r[order] = torch.arange(len(row), dtype=torch.float64)
        for v in row.unique():
            tie = row == v
            r[tie] = r[tie].mean()
        out[i] = r
    return out


def informative(exact: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Images whose exact values vary over the patches: std ≥ ``fraction`` × the median std. On the
    others (images without red or blue squares: every patch ≈ 0) a per-image correlation measures
    noise, for every method alike."""
    spread = exact.std(1)
    return spread >= fraction * spread.median()


def scores(maps: torch.Tensor, exact: torch.Tensor, keep: torch.Tensor) -> dict:
    """Per image over patches: Pearson (mean, minimum) and Spearman, over all images and over the
    informative ones (``keep``); pooled over images × patches: Pearson; and the mean absolute error
    relative to the mean absolute exact value."""
    pe, sp = pearson(maps, exact), pearson(ranks(maps), ranks(exact))
    return {
        "pearson_informative": round(float(pe[keep].nanmean()), 4),
        "spearman_informative": round(float(sp[keep].nanmean()), 4),
        "pearson_min_informative": round(float(pe[keep].min()), 4),
        "pearson_all": round(float(pe.nanmean()), 4),
        "spearman_all": round(float(sp.nanmean()), 4),
        "pearson_pooled": round(float(pearson(maps.reshape(1, -1), exact.reshape(1, -1))[0]), 4),
        "relative_mae": round(float((maps.double() - exact).abs().mean() / exact.abs().mean()), 4),
    }


GAMES = {
    "p": "v(S) = p_c(S), the probability game (estimated by ViT-Shapley)",
    "log_p": "log p_c(S), the log-probability game",
    "centred_log_p": "log p_c(S) − mean_c' log p_c'(S) = the surrogate's centred logit (estimated by Salvage "
    "when additive)",
}
#: the game(s) each learned explainer is judged on
JUDGED_ON = {
    "vit_shapley": ("p",),
    "salvage": ("log_p", "centred_log_p"),
    "salvage_unguided": ("log_p", "centred_log_p"),
}
BASELINES = ("single_patch", "leave_one_out", "untrained_explainer")


def targets(results: dict, key: str = "pearson_informative", margin: float = 0.05) -> dict:
    """Per learned explainer and judged game: its score, the best baseline's, the gap, gap ≥ ``margin``."""
    out = {}
    for name, games_ in JUDGED_ON.items():
        for g in games_:
            best = max(BASELINES, key=lambda b: results[g][b][key])
            gap = results[g][name][key] - results[g][best][key]
            out[f"{name}/{g}"] = {
                key: results[g][name][key],
                "best_baseline": best,
                f"best_baseline_{key}": results[g][best][key],
                "gap": round(gap, 4),
                f"meets_{margin}": bool(gap >= margin),
            }
    return out


def games(p: torch.Tensor, target: torch.Tensor) -> dict:
    """Tables (B, 2^P) of the three games of class ``target`` from probabilities (B, 2^P, C)."""
    logp = p.double().clamp_min(1e-12).log()
    rows = torch.arange(len(p))
    return {
        "p": p[rows, :, target].double(),
        "log_p": logp[rows, :, target],
        "centred_log_p": (logp - logp.mean(-1, keepdim=True))[rows, :, target],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=3000, help="stopping rule: the cap on optimiser steps")
    ap.add_argument("--eval-every", type=int, default=100, help="stopping rule: steps per validation round")
    ap.add_argument("--patience", type=int, default=5, help="stopping rule: rounds without improvement")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--masks", type=int, default=16, help="masks per image (explainers)")
    ap.add_argument("--lr", type=float, default=1e-3, help="explainer learning rate (AdamW)")
    ap.add_argument("--surrogate-lr", type=float, default=1e-4)
    ap.add_argument("--n-eval", type=int, default=32, help="held-out test images")
    ap.add_argument("--seed", type=int, default=0, help="training seed of the learned methods")
    ap.add_argument("--cache", default="/tmp/xb_exact")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--dump", default=None, help="also save the per-image maps and exact values (.pt)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    adapter = load_model("bench_counts_vit", dataset="bench_counts", cache_dir=args.cache)
    train = load_dataset("bench_counts", "train")
    val = load_dataset("bench_counts", "val")
    test = load_dataset("bench_counts", "test")
    acc = adapter.meta["test_accuracy"]
    print(f"classifier: test accuracy {acc:.4f} ({time.time() - t0:.0f}s)", file=sys.stderr)
    common.STOPPING["bench"] = rule = common.StoppingRule(
        max_steps=args.max_steps,
        eval_every=args.eval_every,
        patience=args.patience,
        val_images=256,
        val_masks=16,
    )
    surrogate.RECIPES["bench"] = sur_recipe = surrogate.SurrogateRecipe(
        batch_size=args.batch_size, masks_per_image=4, lr=args.surrogate_lr, weight_decay=1e-5
    )
    ctx = FitContext(
        cache_dir=str(resolve_cache_dir(args.cache) / "explainers"),
        preset="bench",
        seed=args.seed,
        val_data=val,
    )
    recipe = dict(batch_size=args.batch_size, masks_per_image=args.masks, lr=args.lr, freeze_backbone=False)
    methods = {
        "vit_shapley": create_method("vit_shapley", preset="paper", **recipe),
        "salvage": create_method("salvage", preset="paper", **recipe),
        "salvage_unguided": create_method("salvage", preset="paper", guided=False, **recipe),
    }
    training = {}
    for name, m in methods.items():
        m.fit(adapter, train, ctx)
        training[name] = m.report()["training"]
    x = adapter.normalize(torch.stack([test[i].image for i in range(args.n_eval)]))
    sur = methods["vit_shapley"].surrogate
    t = time.time()
    p = removal_game(sur, x)  # (B, 2^P, C): row s = coalition bitmask s
    game_seconds = round(time.time() - t, 1)
    target = p[:, -1].argmax(1)
    tables = games(p, target)
    exact = {g: exact_shapley(v.T).T for g, v in tables.items()}
    P = adapter.num_patches
    singles = 1 << torch.arange(P)
    maps = {}
    for name, m in methods.items():
        maps[name] = m.all_values(x)[torch.arange(len(x)), :, target]
    untrained = create_method("vit_shapley", preset="paper", **recipe)
    untrained.surrogate = sur
    untrained.net = build_net(untrained, adapter, args.seed).eval()
    maps["untrained_explainer"] = untrained.all_values(x)[torch.arange(len(x)), :, target]
    results = {}
    for g, v in tables.items():
        baselines = {
            "single_patch": v[:, singles] - v[:, :1],
            "leave_one_out": v[:, -1:] - v[:, (2**P - 1) ^ singles],
        }
        keep = informative(exact[g])
        results[g] = {
            "informative_images": int(keep.sum()),
            **{name: scores(mp, exact[g], keep) for name, mp in {**maps, **baselines}.items()},
        }
    if args.dump:
        torch.save(
            {
                "maps": maps,
                "exact": exact,
                "tables": tables,
                "target": target,
                "labels": [test[i].label for i in range(args.n_eval)],
            },
            args.dump,
        )
    vs = methods["vit_shapley"]
    v_full, v_empty = vs.game_endpoints(x)
    eff = float((vs.all_values(x).sum(1) - (v_full - v_empty)).abs().max())
    report = {
        "command": "perf/bench_exact_shapley.py " + " ".join(sys.argv[1:]),
        "classifier": {
            "model": "bench_counts_vit",
            "test_accuracy": acc,
            "weights_sha256": adapter.meta.get("weights_sha256"),
        },
        "games": GAMES,
        "targets": targets(results),
        "correlation_with_exact_shapley": results,
        "vit_shapley_efficiency_max_abs_gap": eff,
        "training": training,
        "settings": {
            "stopping_rule": rule.__dict__,
            "surrogate_recipe": sur_recipe.__dict__,
            "explainer_recipe": recipe,
            "seed": args.seed,
            "n_eval_images": len(x),
            "num_patches": P,
            "coalitions": int(coalition_masks(P).shape[0]),
            "threads": args.threads,
            "classifier_recipe": {k: str(v) for k, v in bench_counts_vit().__dict__.items()},
            "data": {"train": len(train), "val": len(val), "test_images_used": len(x)},
        },
        "game_seconds": game_seconds,
        "total_seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(report, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
