"""The ``xaibench`` command line.

    xaibench run                      # embedded default: synthetic, tiny ViT, every method and metric
    xaibench list methods|metrics|datasets|models [PATTERN]
    xaibench leaderboard RUN_DIR [RUN_DIR ...]

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
        return None
    try:
        if "," in text:
            return [int(k) for k in text.split(",") if k.strip()]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not 'all', a count of evenly spaced k (e.g. 20) or a list of k (e.g. 1,2,4,8)")


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="score methods with metrics on a dataset and model")
    p.add_argument("--dataset", default="synthetic", help="dataset name (xaibench list datasets)")
    p.add_argument("--model", default=None, help="model name (default: the dataset's default model)")
    p.add_argument("--methods", default="all", help="'all', or a comma list; wildcards allowed ('*cam*')")
    p.add_argument("--metrics", default="all", help="'all', or a comma list of metric names")
    p.add_argument("--n-images", type=int, default=None, help="images to score (default: 200 on synthetic, all elsewhere)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--preset", default="auto", help="paper, quick, or auto (quick on synthetic, paper elsewhere)")
    p.add_argument("--removal", default="auto", help="auto (drop for ViTs, mean for CNNs), drop, mean, blur, distractor")
    p.add_argument("--n-draws", type=int, default=10, help="distractor images averaged per masked input")
    p.add_argument("--target", default="pred", help="pred (the model's prediction) or label (the true class)")
    p.add_argument("--cardinalities", type=_cardinalities, default=None,
                   help="subset sizes of the curve metrics: all (default), a count of evenly spaced k, or a list")
    p.add_argument("--n-masks", type=int, default=None, help="masks per cardinality of sampled curves (R-MIF/R-LIF)")
    p.add_argument("--split", default="test", help="dataset split to score (test, val)")
    p.add_argument("--out", default="results", help="directory that receives <run-id>/")
    p.add_argument("--run-id", default=None, help="name of the run directory (default: derived from the settings)")
    p.add_argument("--data-root", default=None, help="an existing copy of the dataset (no download)")
    p.add_argument("--weights", default=None, help="a local checkpoint to load into the model")
    p.add_argument("--chunk-size", type=int, default=None, help="inputs per forward in the removal engine")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xaibench", description="Benchmark attribution methods for image classifiers.")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it registers methods, metrics, datasets or models); repeatable")
    parser.add_argument("--cache-dir", default=None, help="cache for data, models and explainers "
                        "(default: $XAIBENCH_CACHE or ~/.cache/xaibench)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    p = sub.add_parser("list", help="list registered methods, metrics, datasets or models")
    p.add_argument("kind", choices=["methods", "metrics", "datasets", "models"])
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. '*cam*'")
    p = sub.add_parser("leaderboard", help="aggregate finished runs into a leaderboard")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--format", default="markdown", choices=["markdown", "csv"])
    p.add_argument("--out", default=None, help="write to this file instead of printing")
    return parser


def cmd_run(args) -> int:
    from .harness import Run, RunConfig

    cfg = RunConfig(dataset=args.dataset, model=args.model, methods=args.methods, metrics=args.metrics,
                    n_images=args.n_images, batch_size=args.batch_size, seed=args.seed, device=args.device,
                    preset=args.preset, removal=args.removal, n_draws=args.n_draws, target=args.target,
                    cardinalities=args.cardinalities, n_masks=args.n_masks, split=args.split, out=args.out,
                    run_id=args.run_id, cache_dir=args.cache_dir, data_root=args.data_root, weights=args.weights,
                    chunk_size=args.chunk_size, progress=not args.quiet, plugins=args.plugin)
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


def cmd_leaderboard(args) -> int:
    from pathlib import Path

    import pandas as pd

    from .leaderboard import to_markdown

    frames = []
    for run_dir in args.runs:
        path = Path(run_dir) / "leaderboard.csv"
        if not path.exists():
            raise UserError(f"'{run_dir}' is not a finished run directory (no leaderboard.csv)")
        frames.append(pd.read_csv(path))
    table = pd.concat(frames, ignore_index=True)
    text = table.to_csv(index=False) if args.format == "csv" else to_markdown(table)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard}


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
        print("\nxaibench: interrupted; finished methods are kept, re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
