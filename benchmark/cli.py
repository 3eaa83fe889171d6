"""The ``xaibench`` command line.

    xaibench run                      # embedded default: synthetic, tiny ViT, every method and metric
    xaibench train classifier|METHOD  # fine-tune a classifier, or train a learned explainer (cached)
    xaibench list methods|metrics|datasets|models [PATTERN]
    xaibench leaderboard RUN_DIR [RUN_DIR ...] [--format markdown|latex|csv|json] [--rank-metrics all]
    xaibench plot RUN_DIR [--kind curves|bars|grid|all]
    xaibench report RUN_DIR [RUN_DIR ...] --out report.html

Global options (``--cache-dir``, ``--plugin``, ``--quiet``) go before or after the sub-command.
Bad input (unknown names, nonsensical numbers, a plugin that fails to import) prints one line
and exits with code 2; a run in which a method failed exits with code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import List, Optional

from . import __version__
from .errors import UserError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as the one line every other error gets."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def _cardinalities(text: str):
    text = text.strip().lower()
    if text == "all":
        return "all"
    try:
        if "," in text:
            ks = [int(k) for k in text.split(",") if k.strip()]
            if not ks:
                raise ValueError
            return ks
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not 'all', a count of evenly spaced k (e.g. 20) or a list of k (e.g. 1,2,4,8)"
        )


def _globals(suppress: bool) -> argparse.ArgumentParser:
    """The global options; in sub-commands they default to 'not given' so that a value given before
    the sub-command is not overwritten."""
    g = argparse.ArgumentParser(add_help=False)
    default = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g.add_argument(
        "--plugin",
        action="append",
        default=default([]),
        metavar="MODULE",
        help="import MODULE (a module name or a .py file; the current directory is searched) first: "
        "it registers methods, metrics, datasets or models; repeatable",
    )
    g.add_argument(
        "--cache-dir",
        default=default(None),
        help="cache for data, models and explainers (default: $XAIBENCH_CACHE or ~/.cache/xaibench)",
    )
    g.add_argument("--quiet", action="store_true", default=default(False), help="warnings and errors only")
    return g


def _data_options() -> argparse.ArgumentParser:
    d = argparse.ArgumentParser(add_help=False)
    d.add_argument("--dataset", default="synthetic", help="dataset name (xaibench list datasets)")
    d.add_argument("--model", default=None, help="model name (default: the dataset's default model)")
    d.add_argument("--data-root", default=None, help="an existing copy of the dataset (no download)")
    d.add_argument("--weights", default=None, help="a local checkpoint (state dict or .safetensors)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    d.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; under torchrun cores per rank)",
    )
    d.add_argument(
        "--preset", default="auto", help="paper, quick, or auto (quick on synthetic, paper elsewhere)"
    )
    return d


def _add_run_parser(sub, parents) -> None:
    p = sub.add_parser("run", parents=parents, help="score methods with metrics on a dataset and model")
    p.add_argument("--methods", default="all", help="'all', or a comma list; wildcards allowed ('*cam*')")
    _add_scoring_options(p)
    p.add_argument(
        "--train-seeds",
        type=int,
        default=None,
        help="training seeds of each learned method, pooled (default: 3 on the embedded default, else 1)",
    )
    p.add_argument("--save-maps", action="store_true", help="keep every method's maps (maps/<method>.npz)")
    p.add_argument("--dry-run", action="store_true", help="print what the run would cost, and stop")
    p.add_argument(
        "--amp",
        choices=("bf16", "fp16"),
        default=None,
        help="autocast the metrics' model passes (methods stay float32; recorded in the run's identity)",
    )
    p = sub.add_parser(
        "evaluate",
        parents=parents,
        help="score precomputed maps (.npz files, see the README) with every metric",
    )
    p.add_argument("--maps", action="append", required=True, metavar="FILE", help="a maps file; repeatable")
    p.add_argument(
        "--name", action="append", default=[], help="method name of each --maps file (default: file name)"
    )
    _add_scoring_options(p)


def _add_scoring_options(p) -> None:
    p.add_argument("--metrics", default="all", help="'all', or a comma list of metric names")
    p.add_argument(
        "--n-images",
        type=int,
        default=None,
        help="images to score (default: 200 on synthetic, all elsewhere)",
    )
    p.add_argument("--batch-size", type=int, default=32)
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
    p.add_argument("--n-masks", type=int, default=None, help="masks per cardinality of sampled curves")
    p.add_argument("--split", default="test", help="dataset split to score (test, val)")
    p.add_argument("--out", default="results", help="directory that receives <run-id>/")
    p.add_argument(
        "--run-id", default=None, help="name of the run directory (default: derived from its inputs)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run of other inputs under --run-id")
    p.add_argument("--chunk-size", type=int, default=None, help="inputs per forward in the removal engine")


def _add_train_parser(sub, parents) -> None:
    p = sub.add_parser(
        "train",
        parents=parents,
        help="train once and cache: 'classifier' (fine-tune a timm model) or a learned method",
    )
    p.add_argument("what", help="'classifier', or a learned method (xaibench list methods)")
    c = p.add_argument_group("train classifier only")
    c.add_argument("--epochs", type=int, default=None, help="default 5")
    c.add_argument("--lr", type=float, default=None, help="learning rate of the backbone (default 1e-4)")
    c.add_argument("--head-lr", type=float, default=None, help="learning rate of the new head (default 1e-3)")
    c.add_argument("--batch-size", type=int, default=None, help="default 32")
    c.add_argument("--head-only", action="store_true", default=None, help="train the new head only")
    c.add_argument(
        "--removal-fraction", type=float, default=None, help="share of each batch with patches removed (0-1)"
    )
    c.add_argument(
        "--img-size", type=int, default=None, help="input size for models that take one (e.g. 224)"
    )


CLASSIFIER_OPTIONS = {"epochs": 5, "lr": 1e-4, "head_lr": 1e-3, "batch_size": 32, "head_only": False,
                      "removal_fraction": 0.0, "img_size": None}  # fmt: skip


def cmd_train(args) -> int:
    if args.what == "classifier":
        return train_classifier(args)
    given = [k for k in CLASSIFIER_OPTIONS if getattr(args, k) is not None]
    if given:
        raise UserError(f"--{given[0].replace('_', '-')} applies to 'xaibench train classifier' only")
    import json

    from .harness import train_methods
    from .registry import METHODS

    learned = [n for n in METHODS.names() if METHODS.get(n).requires.training]
    if args.what.lower() not in learned:
        raise UserError(
            f"cannot train '{args.what}': 'classifier', or one of the learned methods {', '.join(learned)}"
        )
    print(json.dumps(train_methods(_run_config(args, methods=args.what)), indent=2, default=str))
    return 0


def train_classifier(args) -> int:
    from .errors import check_positive
    from .pretrained import FinetuneRecipe, finetune_classifier, is_timm_model
    from .registry import DATASETS
    from .spec import _device

    opts = {k: (v if getattr(args, k) is None else getattr(args, k)) for k, v in CLASSIFIER_OPTIONS.items()}
    for name in ("epochs", "lr", "head_lr", "batch_size", "img_size"):
        check_positive(f"--{name.replace('_', '-')}", opts[name])
    if not 0.0 <= opts["removal_fraction"] <= 1.0:
        raise UserError(f"--removal-fraction must lie in [0, 1], got {opts['removal_fraction']}")
    if not args.model or not is_timm_model(args.model):
        raise UserError(
            f"unknown timm model '{args.model}': pass --model with a name from timm.list_models()"
        )
    DATASETS.get(args.dataset)
    recipe = FinetuneRecipe(model=args.model, dataset=args.dataset.lower(), seed=args.seed, **opts)
    directory = finetune_classifier(
        recipe,
        device=_device(args.device),
        cache_dir=args.cache_dir,
        data_root=args.data_root,
        weights=args.weights,
    )
    print(
        f"{directory / 'model.pt'}\n"
        f"`xaibench run --dataset {recipe.dataset} --model {recipe.model}` now uses it"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xaibench",
        description="Benchmark attribution methods for image classifiers.",
        parents=[_globals(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"xaibench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = [_globals(suppress=True)]
    data = common + [_data_options()]
    _add_run_parser(sub, data)
    _add_train_parser(sub, data)
    p = sub.add_parser("list", parents=common, help="list registered methods, metrics, datasets or models")
    p.add_argument("kind", choices=["methods", "metrics", "datasets", "models"])
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. '*cam*'")
    p = sub.add_parser("leaderboard", parents=common, help="aggregate finished runs into a leaderboard")
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
    p = sub.add_parser(
        "plot", parents=common, help="figures of a finished run: curves, bars, grid (PNG and PDF)"
    )
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
    p = sub.add_parser("report", parents=common, help="one self-contained HTML page of finished runs")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    p.add_argument("--methods", default=None, help="comma list of method names or wildcards (default: all)")
    p.add_argument("--n-images", type=int, default=6, help="images of the qualitative grid")
    p.add_argument("--data-root", default=None, help="where the runs' dataset lies (default: as in the run)")
    return parser


def _run_config(args, **override):
    """A RunConfig from the parsed options whose names are its fields."""
    from .spec import RunConfig

    values = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
    values.update(plugins=list(args.plugin), **override)
    return RunConfig(**values)


def cmd_run(args) -> int:
    from .harness import execute

    if args.dry_run:
        from .harness import dry_run

        print(dry_run(_run_config(args)))
        return 0
    outcome = execute(_run_config(args))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one rank speaks
        print(outcome.leaderboard_markdown, end="")
        print(f"\nresults: {outcome.dir}")
    return outcome.exit_code


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    outcome = evaluate(_run_config(args), args.maps, args.name)
    print(outcome.leaderboard_markdown, end="")
    print(f"\nresults: {outcome.dir}")
    return outcome.exit_code


def cmd_list(args) -> int:
    from .registry import DATASETS, METHODS, METRICS, MODELS

    registry = {"methods": METHODS, "metrics": METRICS, "datasets": DATASETS, "models": MODELS}[args.kind]
    entries = {name: registry.get(name) for name in registry.names(args.pattern)}
    if args.kind == "metrics":  # one line per family, with the scores it provides
        entries = {cls.name: cls for cls in entries.values()}
    for name, obj in sorted(entries.items()):
        doc = (obj.__doc__ or "").strip().splitlines()
        scores = f" [{', '.join(obj.provides)}]" if args.kind == "metrics" else ""
        print(f"{name:24s} {doc[0] if doc else ''}{scores}".rstrip())
    return 0


def _names(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _output_file(path: Optional[str]) -> Optional[Path]:
    if path is None:
        return None
    out = Path(path).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: pass a file name (e.g. {out / 'table.tex'})")
    from .io import check_writable

    check_writable(out.parent if str(out.parent) else Path("."), "the folder of --out")
    return out


def cmd_leaderboard(args) -> int:
    from .exports import render
    from .leaderboard import leaderboard

    out = _output_file(args.out)
    table, runs = leaderboard(
        args.runs, metrics=_names(args.metrics), methods=_names(args.methods), rank_metrics=args.rank_metrics
    )
    text = render(table, args.format, ci=not args.no_ci, runs_info=runs)
    if out:
        from .io import write_text

        write_text(out, text)
    else:
        print(text, end="")
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_run

    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file: pass a directory for the figures")
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


def cmd_report(args) -> int:
    from .report import write_report

    out = _output_file(args.out)
    kw = dict(n_grid=args.n_images, cache_dir=args.cache_dir, data_root=args.data_root)
    print(write_report(args.runs, out, methods=_names(args.methods), **kw))
    return 0


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "leaderboard": cmd_leaderboard,
    "plot": cmd_plot,
    "report": cmd_report,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
}


def main(argv: Optional[List[str]] = None) -> int:
    from .log import configure

    try:
        args = build_parser().parse_args(argv)
        configure(quiet=args.quiet)
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
