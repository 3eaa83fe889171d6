"""The ``xaibench`` command line.

    xaibench run                      # embedded default: synthetic, tiny ViT, every method and metric
    xaibench list methods|metrics|datasets|models [PATTERN]
    xaibench leaderboard RUN_DIR [RUN_DIR ...] [--format markdown|latex|csv|json] [--rank-metrics all]
    xaibench plot RUN_DIR [--kind curves|bars|grid|all]

Bad input (unknown names, nonsensical numbers, a plugin that fails to import) prints one line
and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .errors import UserError

EXIT_USAGE = 2


def _cardinalities(text: str):
    text = text.strip().lower()
    if text == "all":
        return "all"
    try:
        if "," in text:
            return [int(k) for k in text.split(",") if k.strip()]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not 'all', a count of evenly spaced k (e.g. 20) or a list of k (e.g. 1,2,4,8)"
        )


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="score methods with metrics on a dataset and model")
    p.add_argument("--dataset", default="synthetic", help="dataset name (xaibench list datasets)")
    p.add_argument("--model", default=None, help="model name (default: the dataset's default model)")
    p.add_argument("--methods", default="all", help="'all', or a comma list; wildcards allowed ('*cam*')")
    p.add_argument("--metrics", default="all", help="'all', or a comma list of metric names")
    p.add_argument(
        "--n-images",
        type=int,
        default=None,
        help="images to score (default: 200 on synthetic, all elsewhere)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--preset", default="auto", help="paper, quick, or auto (quick on synthetic, paper elsewhere)"
    )
    p.add_argument(
        "--removal", default="auto", help="auto (drop for ViTs, mean for CNNs), drop, mean, blur, distractor"
    )
    p.add_argument("--n-draws", type=int, default=10, help="distractor images averaged per masked input")
    p.add_argument("--target", default="pred", help="pred (the model's prediction) or label (the true class)")
    p.add_argument(
        "--cardinalities",
        type=_cardinalities,
        default=None,
        help="subset sizes of the curve metrics: all, a count of evenly spaced k, or a list "
        "(default: each metric's preset)",
    )
    p.add_argument(
        "--n-masks", type=int, default=None, help="masks per cardinality of sampled curves (R-MIF/R-LIF)"
    )
    p.add_argument("--split", default="test", help="dataset split to score (test, val)")
    p.add_argument("--out", default="results", help="directory that receives <run-id>/")
    p.add_argument(
        "--run-id", default=None, help="name of the run directory (default: derived from the settings)"
    )
    p.add_argument("--data-root", default=None, help="an existing copy of the dataset (no download)")
    p.add_argument("--weights", default=None, help="a local checkpoint to load into the model")
    p.add_argument("--chunk-size", type=int, default=None, help="inputs per forward in the removal engine")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_train_parser(sub):
    """``xaibench train <what> …``; returns the sub-parsers so that other trainers can be added."""
    p = sub.add_parser("train", help="train something once and cache it (e.g. a classifier for a dataset)")
    what = p.add_subparsers(dest="what", required=True)
    c = what.add_parser(
        "classifier", help="fine-tune a timm model on a dataset that is not an ImageNet subset"
    )
    c.add_argument("--dataset", required=True, help="dataset name (xaibench list datasets)")
    c.add_argument(
        "--model", required=True, help="timm model name (its ImageNet weights are the starting point)"
    )
    c.add_argument(
        "--weights", default=None, help="start from this local checkpoint instead of timm's download"
    )
    c.add_argument("--data-root", default=None, help="an existing copy of the dataset (no download)")
    c.add_argument("--epochs", type=int, default=5)
    c.add_argument("--lr", type=float, default=1e-4, help="learning rate of the backbone")
    c.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the new classifier head")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--head-only", action="store_true", help="train the new head only (backbone frozen)")
    c.add_argument(
        "--removal-fraction",
        type=float,
        default=0.0,
        help="share of each batch trained with random patch removal",
    )
    c.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="input size for models that accept one (e.g. 224 for DINOv2, whose default is 518)",
    )
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    for name in LEARNED_METHODS:
        e = what.add_parser(
            name, help=f"train the learned explainer '{name}' (cached; resumes if interrupted)"
        )
        e.add_argument("--dataset", default="synthetic", help="dataset name (xaibench list datasets)")
        e.add_argument("--model", default=None, help="classifier (default: the dataset's default model)")
        e.add_argument(
            "--preset", default="auto", help="paper, quick, or auto (quick on synthetic, paper elsewhere)"
        )
        e.add_argument("--seed", type=int, default=0)
        e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        e.add_argument("--data-root", default=None, help="an existing copy of the dataset (no download)")
        e.add_argument("--weights", default=None, help="a local checkpoint to load into the classifier")
        e.add_argument("--quiet", action="store_true", help="no progress output")
    return what


LEARNED_METHODS = ("vit_shapley", "salvage", "comet")


def cmd_train_explainer(args) -> int:
    import json

    from .harness import Run, RunConfig

    cfg = RunConfig(
        dataset=args.dataset,
        model=args.model,
        methods=args.what,
        preset=args.preset,
        seed=args.seed,
        device=args.device,
        cache_dir=args.cache_dir,
        data_root=args.data_root,
        weights=args.weights,
        progress=not args.quiet,
        plugins=args.plugin,
    )
    print(json.dumps(Run(cfg).train(), indent=2, default=str))
    return 0


def cmd_train_classifier(args) -> int:
    import torch

    from .errors import check_positive
    from .pretrained import FinetuneRecipe, finetune_classifier, is_timm_model

    for name in ("epochs", "lr", "head_lr", "batch_size"):
        check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    check_positive("--removal-fraction", args.removal_fraction, allow_zero=True)
    check_positive("--img-size", args.img_size)
    if not is_timm_model(args.model):
        raise UserError(f"unknown timm model '{args.model}': pass a name from timm.list_models()")
    from .registry import DATASETS

    DATASETS.get(args.dataset)
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    recipe = FinetuneRecipe(
        model=args.model,
        dataset=args.dataset.lower(),
        epochs=args.epochs,
        lr=args.lr,
        head_lr=args.head_lr,
        batch_size=args.batch_size,
        head_only=args.head_only,
        removal_fraction=args.removal_fraction,
        img_size=args.img_size,
        seed=args.seed,
    )
    directory = finetune_classifier(
        recipe,
        device=device,
        cache_dir=args.cache_dir,
        data_root=args.data_root,
        weights=args.weights,
        progress=not args.quiet,
    )
    print(
        f"{directory / 'model.pt'}\n"
        f"`xaibench run --dataset {recipe.dataset} --model {recipe.model}` now uses it"
    )
    return 0


TRAIN_COMMANDS = {"classifier": cmd_train_classifier, **{m: cmd_train_explainer for m in LEARNED_METHODS}}


def cmd_train(args) -> int:
    return TRAIN_COMMANDS[args.what](args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench", description="Benchmark attribution methods for image classifiers."
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it registers methods, metrics, datasets or models); repeatable",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache for data, models and explainers (default: $XAIBENCH_CACHE or ~/.cache/xaibench)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_train_parser(sub)
    p = sub.add_parser("list", help="list registered methods, metrics, datasets or models")
    p.add_argument("kind", choices=["methods", "metrics", "datasets", "models"])
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. '*cam*'")
    p = sub.add_parser("leaderboard", help="aggregate finished runs into a leaderboard")
    p.add_argument("runs", nargs="+", help="run directories (several: one column group per dataset/model)")
    p.add_argument("--format", default="markdown", choices=["markdown", "latex", "csv", "json"])
    p.add_argument(
        "--metrics",
        default=None,
        help="comma list of score names or wildcards to show (default: all; mean_rank: the aggregate)",
    )
    p.add_argument("--methods", default=None, help="comma list of method names or wildcards (default: all)")
    p.add_argument(
        "--rank-metrics",
        default="all",
        help="scores of the aggregate 'Mean rank' column: all (default: every score with a ↑/↓, one vote "
        "per metric family), faithfulness, localisation, none, or a comma list of score names or "
        "wildcards (e.g. srg,r_srg); categories and names combine",
    )
    p.add_argument(
        "--no-ci", action="store_true", help="leave the ± confidence half-widths out (markdown, latex)"
    )
    p.add_argument("--out", default=None, help="write to this file instead of printing")
    p = sub.add_parser("plot", help="figures of a finished run: curves, bars, grid (PNG and PDF)")
    p.add_argument("run", help="run directory")
    p.add_argument("--kind", default="all", choices=["curves", "bars", "grid", "all"])
    p.add_argument("--methods", default=None, help="comma list of method names or wildcards (default: all)")
    p.add_argument(
        "--metrics", default=None, help="bars only: score names (default: srg, r_srg where present)"
    )
    p.add_argument("--n-images", type=int, default=6, help="grid only: images in the seeded sample")
    p.add_argument("--seed", type=int, default=None, help="grid only: sample seed (default: the run's seed)")
    p.add_argument(
        "--data-root", default=None, help="grid only: where the run's dataset lies (default: as in the run)"
    )
    p.add_argument("--out", default=None, help="directory for the figures (default: RUN/figures)")
    return parser


def cmd_run(args) -> int:
    from .harness import Run, RunConfig

    cfg = RunConfig(
        dataset=args.dataset,
        model=args.model,
        methods=args.methods,
        metrics=args.metrics,
        n_images=args.n_images,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        preset=args.preset,
        removal=args.removal,
        n_draws=args.n_draws,
        target=args.target,
        cardinalities=args.cardinalities,
        n_masks=args.n_masks,
        split=args.split,
        out=args.out,
        run_id=args.run_id,
        cache_dir=args.cache_dir,
        data_root=args.data_root,
        weights=args.weights,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
        plugins=args.plugin,
    )
    run = Run(cfg)
    out = run.execute()
    print(run.leaderboard_markdown, end="")
    print(f"\nresults: {out}")
    return 0


def cmd_list(args) -> int:
    from .registry import DATASETS, METHODS, METRICS, MODELS

    registry = {"methods": METHODS, "metrics": METRICS, "datasets": DATASETS, "models": MODELS}[args.kind]
    names = registry.names(args.pattern)
    for name in names:
        obj = registry.get(name)
        doc = (obj.__doc__ or "").strip().splitlines()
        print(f"{name:24s} {doc[0] if doc else ''}".rstrip())
    return 0


def _names(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_leaderboard(args) -> int:
    from pathlib import Path

    from .exports import render
    from .leaderboard import leaderboard

    table, runs = leaderboard(
        args.runs, metrics=_names(args.metrics), methods=_names(args.methods), rank_metrics=args.rank_metrics
    )
    text = render(table, args.format, ci=not args.no_ci, runs_info=runs)
    if args.out:
        from .io import write_text

        write_text(Path(args.out), text)
    else:
        print(text, end="")
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_run

    for path in plot_run(
        args.run,
        kind=args.kind,
        out_dir=args.out,
        methods=_names(args.methods),
        metrics=_names(args.metrics),
        n_images=args.n_images,
        seed=args.seed,
        cache_dir=args.cache_dir,
        data_root=args.data_root,
    ):
        print(path)
    return 0


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "leaderboard": cmd_leaderboard,
    "plot": cmd_plot,
    "train": cmd_train,
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .registry import load_plugin

        for module in args.plugin:
            load_plugin(module)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"xaibench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "\nxaibench: interrupted; finished methods are kept, re-run the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
