"""The run: dataset × model × methods × metrics → per-image scores, curves and leaderboards.

:func:`execute` resolves the settings (:mod:`xaibench.spec`), checks what it can before any
long work (output and cache directories writable), loads the data and the model
(:mod:`xaibench.context`), derives the run's identity (:mod:`xaibench.identity`), then scores
each method in turn (:mod:`xaibench.scoring`) through the run store (:mod:`xaibench.store`),
which reuses a finished part only when its key and files verify. A method that fails keeps its
traceback in ``parts/<method>/error.txt`` and makes the run's exit code 1; the others finish.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

import torch

from xaibench.methods import FitContext
from xaibench.metrics import EvalContext

from . import __version__, estimate
from .context import RunContext, load_context
from .cost import Shape
from .distributed import rank_batches, rank_order, sharding_advice
from .distributed import setup as setup_distributed
from .errors import UserError
from .exports import write_leaderboards
from .identity import run_identity
from .io import cache_dir, stable_hash
from .log import bars_and_logs
from .models import architecture
from .preflight import preflight
from .registry import DATASETS, METHODS, METRICS, load_plugin
from .scoring import score_method
from .spec import RunConfig, RunSpec, resolve
from .store import RunStore, merge, open_store, part_status, preview_ids

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED = 0, 1


@dataclass
class RunOutcome:
    dir: Path
    exit_code: int
    leaderboard_markdown: str
    failed: Dict[str, str]  # method → path of its traceback


def versions() -> Dict[str, str]:
    from importlib import metadata

    out = {"xaibench": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "torchvision", "timm", "captum", "grad-cam", "zennit", "numpy", "pandas", "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def prepare(config: RunConfig) -> RunSpec:
    """Plugins loaded, settings resolved, the preflight passed (directories writable, data and
    weights at hand or downloadable): everything that can be refused is refused here, before
    data or models are loaded."""
    for module in config.plugins:
        load_plugin(module)
    spec = resolve(config)
    preflight(spec)
    return spec


def instances(spec: RunSpec):
    methods = [METHODS.get(n)(preset=spec.preset, seed=spec.seed) for n in spec.methods]
    metrics = [METRICS.get(n)(preset=spec.preset) for n in spec.metrics]
    return methods, metrics


def needs_train_images(methods, metrics) -> bool:
    return any(m.requires.training or m.requires.distractors for m in methods) or any(
        getattr(m, "needs_distractors", False) for m in metrics
    )


def default_run_id(spec: RunSpec, identity: dict, methods) -> str:
    chosen = {"identity": identity, "methods": [m.name for m in methods], "metrics": list(spec.metrics)}
    return f"{spec.dataset}-{spec.model}-{stable_hash(chosen, 8)}"


def fit_context(spec: RunSpec, ctx: RunContext, seed: int, trains: bool = True):
    return FitContext(
        cache_dir=str(cache_dir(spec.cache_dir) / "explainers"),
        seed=seed,
        preset=spec.preset,
        distractors=ctx.distractors,
        key={"dataset": spec.dataset, "model": getattr(ctx.adapter, "meta", {})},
        val_data=ctx.training_split("val") if trains and ctx.load_split is not None else None,
    )


def parts_of(spec: RunSpec, method) -> List[tuple]:
    """(part name, training seed or None, method instance) for each part of a method."""
    if not method.requires.training:
        return [(method.name, None, method)]
    seeds = spec.train_seed_list()
    return [
        (
            method.name if len(seeds) == 1 else f"{method.name}.seed{s}",
            s,
            type(method)(preset=spec.preset, seed=s),
        )
        for s in seeds
    ]


def _trains(part: tuple) -> bool:
    return part[0].requires.training


def _score_part(store: RunStore, spec, ctx, method, metrics, eval_ctx, part: str, seed, numbers) -> None:
    """Score this rank's batches ``numbers`` with one method (or reuse them); failures are kept."""
    key = store.part_key({**method.settings(), "train_seed": seed}, [m.settings() for m in metrics])
    if store.finished(part, key, with_maps=spec.save_maps) is not None:
        log.info(f"{part}: finished earlier, reusing {store.shard_dir(part)}")
        return
    trainable = [p.requires_grad for p in ctx.adapter.model.parameters()]
    try:
        t = time.perf_counter()
        if method.requires.training or method.requires.distractors:
            fit_seed = seed if seed is not None else spec.seed
            train = ctx.training_split("train") if method.requires.training else ctx.split("train")
            method.fit(ctx.adapter, train, fit_context(spec, ctx, fit_seed, method.requires.training))
        fit_seconds = time.perf_counter() - t
        scored = replace(eval_ctx, adapter=method.metric_adapter(ctx.adapter))
        result = score_method(
            method, metrics, ctx, scored, batch_size=spec.batch_size, target=spec.target, numbers=numbers
        )
        info = {"status": "done", "train_seed": seed, "fit_seconds": round(fit_seconds, 3), **result.info}
        info.update(report=method.report(), notes=method.notes())
        maps_meta = {"method": method.name, "settings": method.settings(), "train_seed": seed}
        maps_meta.update(dataset=store.identity["dataset"], model=store.identity["model"], run_key=store.key)
        keep = set(result.ids) if spec.save_maps else preview_ids(_scored_ids(ctx), spec.seed)
        store.write(part, key, result, info, maps_meta, keep)
        log.info(
            f"{part}: {info['n_images']} images, attribution {info['attribute_seconds']:.1f}s, "
            f"metrics {info['metric_seconds']:.1f}s"
        )
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as exc:  # one broken method must not lose the others' results
        path = store.write_failure(part, exc)
        log.error(f"{part}: FAILED ({type(exc).__name__}: {exc}); traceback in {path}")
    finally:  # a method must not leave the shared classifier changed for the next one
        for p, flag in zip(ctx.adapter.model.parameters(), trainable):
            p.requires_grad_(flag)
        ctx.adapter.model.eval()


def _scored_ids(ctx: RunContext) -> List[str]:
    return [ctx.data.image_id(i) for i in ctx.indices]


def _part_status(store: RunStore, ctx: RunContext, method, part: str) -> dict:
    reason = method.applies_to(ctx.adapter, ctx.data.has_masks)
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    status, info = part_status(store, part)
    if status == "failed":
        return {"status": "failed", **info}
    shards = info["shards"]
    out = dict(shards[0])
    for k in ("n_images", "nonfinite_maps", "attribute_seconds", "reexplain_seconds", "metric_seconds"):
        out[k] = round(sum(s.get(k, 0) for s in shards), 3)
    out["nonfinite_ids"] = [i for s in shards for i in s.get("nonfinite_ids", [])][:20]
    if len(shards) > 1:
        out["report"] = [s.get("report") for s in shards]  # each rank reports on its own images
    return out


def _open(stack, dist, spec, run_id: str, identity: dict) -> RunStore:
    """The run's store on every rank; rank 0 claims the directory and holds its lock, and every
    rank stops with the same one line if the claim is refused."""
    return dist.main_first(
        lambda: stack.enter_context(open_store(spec.out, run_id, identity, spec.overwrite, 0, dist.world)),
        lambda: RunStore(Path(spec.out) / run_id, identity, dist.rank, dist.world),
    )


def execute(config: RunConfig, context: Optional[RunContext] = None, methods=None) -> RunOutcome:
    """Run the benchmark of ``config``; ``context`` replaces loading data and model (tests, and
    ``evaluate``, which checked them), ``methods`` the registered methods (method instances).

    Under torchrun every rank scores its share of the batches (batch b goes to rank b mod n)
    and rank 0 merges them into the files one process would write."""
    t0 = time.time()
    spec = prepare(config)
    dist, device = setup_distributed(spec.device, spec.threads)
    spec = replace(spec, device=device)
    registered, metrics = instances(spec)
    methods = registered if methods is None else list(methods)
    needs_train = needs_train_images(methods, metrics)
    try:
        with bars_and_logs(), contextlib.ExitStack() as stack:
            ctx = context or dist.main_first(lambda: load_context(spec, needs_train))
            identity = run_identity(spec, ctx, with_train=needs_train and ctx.load_split is not None)
            run_id = spec.run_id or default_run_id(spec, identity, methods)
            store = _open(stack, dist, spec, run_id, identity)
            metric_status = {m.name: m.applies(ctx.adapter, ctx.data.has_masks) for m in metrics}
            active = [m for m in metrics if metric_status[m.name] is None]
            eval_ctx = EvalContext(
                ctx.adapter,
                ctx.removal,
                seed=spec.seed,
                cardinalities=spec.cardinalities,
                n_masks=spec.n_masks,
                distractors=ctx.distractors,
                amp=spec.amp,
            )
            if dist.main:
                log.info(cost_table(spec, ctx.adapter, methods, active, eval_ctx, len(ctx.indices), ctx))
            record = _Record(spec, ctx, identity, methods, metrics, metric_status, run_id)
            if dist.main:
                store.write_config(record.document("running"))
            numbers = rank_batches(len(ctx.indices), spec.batch_size, dist.rank, dist.world)
            advice = sharding_advice(len(ctx.indices), spec.batch_size, dist.world) if dist.main else None
            if advice:
                log.warning(advice)
            parts = [(m, *p) for m in methods for p in parts_of(spec, m)]
            for method, part, seed, instance in rank_order(parts, _trains, dist.rank, dist.world):
                if method.applies_to(ctx.adapter, ctx.data.has_masks) is None:
                    _score_part(store, spec, ctx, instance, active, eval_ctx, part, seed, numbers)
                else:
                    log.info(f"{part}: skipped ({method.applies_to(ctx.adapter, ctx.data.has_masks)})")
            dist.barrier()
            outcome = None
            if dist.main:
                for method, part, seed, instance in parts:
                    record.status[part] = {"method": method.name, **_part_status(store, ctx, instance, part)}
                done = [(m.name, p, s) for m, p, s, _ in parts if record.status[p]["status"] == "done"]
                merge(store, done, spec.dataset, spec.model, spec.seed, spec.save_maps)
                failed = {
                    p: i.get("traceback_file", "")
                    for p, i in record.status.items()
                    if i["status"] == "failed"
                }
                state = "finished" if not failed else "finished with failures"
                store.write_config(record.document(state, time.time() - t0))
                markdown = write_leaderboards(store.dir)
                store.seal(state)
                outcome = RunOutcome(store.dir, EXIT_FAILED if failed else EXIT_OK, markdown, failed)
            outcome = dist.broadcast(outcome)
    finally:
        dist.close()
    if ctx.data.skipped:  # shown even with --quiet: these images are missing from every score
        log.warning(
            f"{len(ctx.data.skipped)} unreadable image(s) skipped "
            f"(listed in config.json dataset.skipped_files): "
            + "; ".join(f"{p} ({r})" for p, r in ctx.data.skipped[:5])
        )
    for part, path in outcome.failed.items():
        log.error(f"{part} failed: traceback in {path}")
    return outcome


def cost_table(spec: RunSpec, adapter, methods, metrics, eval_ctx, n_images: int, ctx=None) -> str:
    """What the run will cost (see :mod:`xaibench.estimate`)."""
    shape = Shape.of(adapter)
    if ctx is not None and ctx.load_split is not None and any(m.requires.training for m in methods):
        n_train = len(ctx.split("train"))
    else:
        n_train = (getattr(DATASETS.get(spec.dataset), "sizes", {}) or {}).get("train", 0)
    table = estimate.lines(methods, metrics, shape, eval_ctx, n_train, spec.train_seeds)
    rate = estimate.inputs_per_second(adapter)
    where = f"{adapter.device}, {torch.get_num_threads()} threads"
    return "cost of this run:\n" + estimate.describe(table, n_images, rate, where)


def dry_run(config: RunConfig) -> str:
    """The cost table of ``config`` without loading data or weights (the architecture is built
    untrained, only to measure its speed)."""
    for module in config.plugins:
        load_plugin(module)
    spec = resolve(config)
    methods, metrics = instances(spec)
    adapter = architecture(spec)
    strategy = spec.removal if spec.removal != "auto" else ("drop" if adapter.is_vit else "mean")
    removal = SimpleNamespace(strategy=strategy, draws=spec.n_draws if strategy == "distractor" else 1)
    eval_ctx = EvalContext(
        adapter, removal, seed=spec.seed, cardinalities=spec.cardinalities, n_masks=spec.n_masks, amp=spec.amp
    )
    sizes = getattr(DATASETS.get(spec.dataset), "sizes", {}) or {}
    n_images = spec.n_images or sizes.get(spec.split)
    if n_images is None:
        raise UserError(f"--dry-run needs --n-images: dataset '{spec.dataset}' does not declare its size")
    if spec.n_images and spec.split in sizes:
        n_images = min(n_images, sizes[spec.split])
    masks = getattr(DATASETS.get(spec.dataset), "has_masks", True)
    active = [m for m in metrics if m.applies(adapter, masks) is None]
    return cost_table(
        spec,
        adapter,
        [m for m in methods if m.applies_to(adapter, masks) is None],
        active,
        eval_ctx,
        n_images,
    )


class _Record:
    """What config.json says about the run: settings, identity, versions, every part's status."""

    def __init__(
        self, spec, ctx: RunContext, identity: dict, methods, metrics, metric_status, run_id
    ) -> None:
        self.spec, self.ctx, self.identity, self.run_id = spec, ctx, identity, run_id
        self.methods, self.metrics, self.metric_status = methods, metrics, metric_status
        self.status: Dict[str, dict] = {}

    def _methods(self) -> dict:
        out = {}
        for m in self.methods:
            parts = {p: i for p, i in self.status.items() if i.get("method") == m.name}
            entry = {"label": m.display_name(), "requires": m.requires.as_dict(), "settings": m.settings()}
            entry["explains_own_model"] = m.explains_own_model
            entry["class_dependent"] = m.class_dependent
            if len(parts) == 1:
                entry.update({k: v for k, v in next(iter(parts.values())).items() if k != "method"})
            elif parts:
                states = {i["status"] for i in parts.values()}
                entry["status"] = (
                    "done" if states == {"done"} else ("failed" if "failed" in states else states.pop())
                )
                entry["reason"] = "; ".join(i.get("reason", "") for i in parts.values() if i.get("reason"))
                entry["parts"] = parts
            out[m.name] = entry
        return out

    def document(self, status: str, seconds: Optional[float] = None) -> dict:
        spec, ctx = self.spec, self.ctx
        return {
            "run_id": self.run_id,
            "status": status,
            "command": " ".join(sys.argv) if Path(sys.argv[0]).name in ("xaibench", "__main__.py") else None,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items()},
            "identity": self.identity,
            "resolved": {
                "dataset": spec.dataset,
                "model": spec.model,
                "device": spec.device,
                "preset": spec.preset,
                "n_images": len(ctx.indices) - len(ctx.data.skipped),
                "split": spec.split,
                "target": spec.target,
                "removal": ctx.removal.settings(),
                "seed": spec.seed,
                "train_seeds": spec.train_seed_list(),
                "chunk_size": ctx.adapter.chunk_size,
                "memory_budget_mb": ctx.adapter.memory_budget_mb,
            },
            "model": {**ctx.adapter.describe(), **getattr(ctx.adapter, "meta", {})},
            "dataset": {
                "name": spec.dataset,
                "split": spec.split,
                "has_masks": ctx.data.has_masks,
                "classes": list(ctx.data.classes),
                "skipped_files": list(ctx.data.skipped),
                "options": getattr(ctx.data, "options", {}),
            },
            "methods": self._methods(),
            "metrics": {
                m.name: {
                    "provides": list(m.provides),
                    "directions": m.directions,
                    "category": m.category,
                    "settings": m.settings(),
                    "skipped": self.metric_status[m.name],
                }
                for m in self.metrics
            },
            "versions": versions(),
            "seconds": None if seconds is None else round(seconds, 1),
        }


def train_methods(config: RunConfig) -> Dict[str, dict]:
    """``xaibench train``: fit (or load from the cache) every selected learned method, exactly as
    a run would; returns each method's report."""
    spec = prepare(config)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    methods, metrics = instances(spec)
    out: Dict[str, dict] = {}
    with bars_and_logs():
        ctx = load_context(spec, True)
        for method in methods:
            if not method.requires.training:
                raise UserError(f"method '{method.name}' is not trained (it needs no 'xaibench train')")
            reason = method.applies_to(ctx.adapter, ctx.data.has_masks)
            if reason is not None:
                raise UserError(f"cannot train '{method.name}': {reason}")
            for part, seed, instance in parts_of(spec, method):
                t = time.time()
                instance.fit(ctx.adapter, ctx.training_split("train"), fit_context(spec, ctx, seed))
                out[part] = {"seconds": round(time.time() - t, 1), **instance.report()}
    return out


def run(config: RunConfig) -> Path:
    return execute(config).dir
