"""The run: dataset × model × methods × metrics → per-image scores, curves and leaderboards.

``run(RunConfig(...))`` scores every method on the same images with the same metrics and
writes ``<out>/<run_id>/``:

- ``config.json``   everything needed to reproduce the run (versions, seeds, settings)
- ``scores.csv``    per-image scores, long format (dataset, model, method, image_id, target, metric, value)
- ``curves.csv``    mean curves (dataset, model, method, metric, x, value, n)
- ``states.pt``     per-image states of dataset-level metrics (for bootstrapping)
- ``leaderboard.*`` aggregated tables
- ``parts/<method>/`` each method's results, written atomically when the method finishes

The run id is a hash of the settings that determine the numbers, so re-running the same
command after an interruption finds the finished methods and reuses them.
"""

from __future__ import annotations

import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd
import torch

from . import __version__
from .attribution import Attribution
from .errors import UserError, check_positive
from .io import cache_dir, load_torch, read_json, save_torch, stable_hash, write_csv, write_json
from .registry import DATASETS, METHODS, METRICS, MODELS, load_plugin
from .removal import STRATEGIES, Removal

SCORE_COLUMNS = ["dataset", "model", "method", "image_id", "target", "metric", "value"]
CURVE_COLUMNS = ["dataset", "model", "method", "metric", "x", "value", "n"]
TARGETS = ("pred", "label")
EMBEDDED_DATASET = "synthetic"


@dataclass
class RunConfig:
    dataset: str = EMBEDDED_DATASET
    model: Optional[str] = None  # default: the dataset's default model
    methods: Any = "all"
    metrics: Any = "all"
    n_images: Optional[int] = None  # default: 200 on synthetic, the whole split elsewhere
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    preset: str = "auto"  # quick on the embedded default, paper elsewhere
    removal: str = "auto"  # drop for ViTs, mean for CNNs
    n_draws: int = 10  # distractor draws per masked input
    target: str = "pred"
    cardinalities: Optional[int | str | Sequence[int]] = (
        None  # None = metric presets; 'all' = every k; int = count
    )
    n_masks: Optional[int] = None
    split: str = "test"
    distractor_pool: int = 256
    out: str = "results"
    run_id: Optional[str] = None
    cache_dir: Optional[str] = None
    data_root: Optional[str] = None
    weights: Optional[str] = None
    chunk_size: Optional[int] = None
    progress: bool = True
    plugins: List[str] = field(default_factory=list)

    # settings that do not change the numbers (left out of the run id)
    _NOT_HASHED = ("out", "run_id", "cache_dir", "progress", "plugins", "chunk_size", "data_root")


DEFAULT_MODELS = {
    EMBEDDED_DATASET: "xaibench_vit",
    "imagenette": "vit_small_patch16_224.augreg_in21k_ft_in1k",
}  # ImageNet head, subset to 10
DEFAULT_N_IMAGES = {EMBEDDED_DATASET: 200}


def versions() -> Dict[str, str]:
    from importlib import metadata

    out = {"xaibench": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "torchvision", "timm", "captum", "grad-cam", "zennit", "numpy", "pandas", "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _code_fingerprint(classes) -> str:
    """Hash of the source files defining ``classes``: a finished part is reused only if the code
    that produced it is unchanged (an edited method or metric recomputes on the next run)."""
    import inspect

    from .io import file_hash

    files = sorted({inspect.getsourcefile(c) or "" for c in classes})
    return stable_hash([(Path(f).name, file_hash(f) if f and Path(f).exists() else "") for f in files])


class Run:
    """One benchmark run; ``execute()`` does the work and returns the run directory."""

    def __init__(self, config: RunConfig) -> None:
        self.cfg = config
        for module in config.plugins:
            load_plugin(module)
        self._validate()
        self.method_names = METHODS.resolve(config.methods)
        self.metric_classes = self._metric_classes(METRICS.resolve(config.metrics))
        self.dataset = config.dataset.lower()
        DATASETS.get(self.dataset)
        self.model_name = (config.model or DEFAULT_MODELS.get(self.dataset) or "").lower()
        if not self.model_name:
            raise UserError(f"dataset '{self.dataset}' has no default model: pass --model")
        if self.model_name not in MODELS:  # before any download: a registered recipe or a timm name
            from .pretrained import is_timm_model

            if not is_timm_model(self.model_name):
                from .models import _unknown_model

                raise _unknown_model(self.model_name)
        self.device = torch.device(
            "cuda"
            if config.device == "auto" and torch.cuda.is_available()
            else "cpu"
            if config.device == "auto"
            else config.device
        )
        self.preset = (
            config.preset
            if config.preset != "auto"
            else ("quick" if self.dataset == EMBEDDED_DATASET else "paper")
        )
        self.n_images = config.n_images or DEFAULT_N_IMAGES.get(self.dataset)

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        c = self.cfg
        check_positive("--batch-size", c.batch_size)
        check_positive("--n-images", c.n_images)
        check_positive("--n-masks", c.n_masks)
        check_positive("--n-draws", c.n_draws)
        check_positive("--chunk-size", c.chunk_size)
        check_positive("--distractor-pool", c.distractor_pool)
        if c.target not in TARGETS:
            raise UserError(f"unknown target '{c.target}'. Valid targets: {', '.join(TARGETS)}")
        if c.removal != "auto" and c.removal not in STRATEGIES:
            raise UserError(
                f"unknown removal strategy '{c.removal}'. Valid strategies: auto, {', '.join(STRATEGIES)}"
            )
        if c.preset not in ("auto", "paper", "quick"):
            raise UserError(f"unknown preset '{c.preset}'. Valid presets: auto, paper, quick")
        if c.device not in ("auto", "cpu") and not c.device.startswith("cuda"):
            raise UserError(f"unknown device '{c.device}'. Valid devices: auto, cpu, cuda, cuda:N")
        if c.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no CUDA device")
        if isinstance(c.cardinalities, int):
            check_positive("--cardinalities", c.cardinalities)
        elif c.cardinalities is not None and c.cardinalities != "all":
            for k in c.cardinalities:
                check_positive("--cardinalities entry", k)

    @staticmethod
    def _metric_classes(names: List[str]) -> list:
        classes: list = []
        for n in names:
            cls = METRICS.get(n)
            if cls not in classes:
                classes.append(cls)
        return classes

    # ------------------------------------------------------------------ setup
    def _load(self) -> None:
        from .datasets import load_dataset
        from .models import load_model

        c = self.cfg
        opts = dict(seed=c.seed, cache_dir=c.cache_dir, data_root=c.data_root)
        if self.dataset == EMBEDDED_DATASET and self.n_images:
            opts["n_test" if c.split == "test" else f"n_{c.split}"] = self.n_images
        self.data = load_dataset(self.dataset, c.split, **opts)
        n = min(self.n_images or len(self.data), len(self.data))
        self.indices = list(range(n))
        self.adapter = load_model(
            self.model_name,
            dataset=self.dataset,
            device=self.device,
            cache_dir=c.cache_dir,
            weights=c.weights,
            progress=c.progress,
            seed=c.seed,
            data=self.data,
            data_root=c.data_root,
        )
        from .datasets.folder import attach_preprocessing

        attach_preprocessing(self.data, self.adapter)  # image files → the model's size, crop, masks alike
        if c.chunk_size:
            self.adapter.chunk_size = c.chunk_size
        strategy = c.removal if c.removal != "auto" else ("drop" if self.adapter.is_vit else "mean")
        self.train_data = None
        distractors = (
            self._distractors() if (strategy == "distractor" or self._needs_train_images()) else None
        )
        self.removal = Removal(
            strategy,
            n_draws=c.n_draws,
            seed=c.seed,
            distractors=distractors if strategy == "distractor" else None,
        )
        self.distractors = distractors

    def _needs_train_images(self) -> bool:
        methods = [METHODS.get(m) for m in self.method_names]
        return any(m.requires.training or m.requires.distractors for m in methods) or any(
            getattr(cls, "needs_distractors", False) for cls in self.metric_classes
        )

    def _train_split(self):
        if self.train_data is None:
            from .datasets import load_dataset
            from .datasets.folder import attach_preprocessing

            self.train_data = attach_preprocessing(
                load_dataset(
                    self.dataset,
                    "train",
                    seed=self.cfg.seed,
                    cache_dir=self.cfg.cache_dir,
                    data_root=self.cfg.data_root,
                ),
                self.adapter,
            )
        return self.train_data

    def _distractors(self) -> torch.Tensor:
        """A seeded pool of normalised training images (distractor removal, mask optimisation)."""
        from .seeding import generator

        train = self._train_split()
        g = generator(self.cfg.seed, "distractor-pool")
        pick = torch.randperm(len(train), generator=g)[: self.cfg.distractor_pool].tolist()
        from .datasets.folder import read_samples

        return self.adapter.normalize(torch.stack([smp.image for smp in read_samples(train, pick)]))

    def run_id(self) -> str:
        if self.cfg.run_id:
            return self.cfg.run_id
        hashed = {k: v for k, v in asdict(self.cfg).items() if k not in RunConfig._NOT_HASHED}
        hashed.update(
            methods=self.method_names,
            metrics=[c.name for c in self.metric_classes],
            device=self.device.type,
            preset=self.preset,
            n_images=self.n_images,
            model=self.model_name,
        )
        return f"{self.dataset}-{self.model_name}-{stable_hash(hashed, 8)}"

    # ------------------------------------------------------------------ batches
    def batches(self, adapter=None):
        """Yield :class:`Batch` objects (clean probabilities and targets included).

        ``adapter``: the model whose probabilities and predicted targets the batches carry
        (default: the classifier; a method that explains its own model passes that model)."""
        from xaibench.metrics import Batch

        from .datasets.folder import read_samples

        bs = self.cfg.batch_size
        for s in range(0, len(self.indices), bs):
            samples = read_samples(self.data, self.indices[s : s + bs])  # unreadable files → data.skipped
            if not samples:
                continue
            x = self.adapter.normalize(torch.stack([smp.image for smp in samples]))
            labels = torch.tensor([smp.label for smp in samples], device=self.device)
            masks = (
                torch.stack([smp.mask for smp in samples]).to(self.device) if self.data.has_masks else None
            )
            with torch.no_grad():
                probs = (adapter or self.adapter).probs(x).float()
            targets = probs.argmax(1) if self.cfg.target == "pred" else labels
            yield Batch(
                x=x, labels=labels, targets=targets, ids=[smp.id for smp in samples], probs=probs, masks=masks
            )

    # ------------------------------------------------------------------ execution
    def execute(self) -> Path:
        from xaibench.metrics import EvalContext

        t0 = time.time()
        self._load()
        self.dir = Path(self.cfg.out) / self.run_id()
        (self.dir / "parts").mkdir(parents=True, exist_ok=True)
        metrics = [cls(preset=self.preset) for cls in self.metric_classes]
        ctx = EvalContext(
            self.adapter,
            self.removal,
            seed=self.cfg.seed,
            cardinalities=self.cfg.cardinalities,
            n_masks=self.cfg.n_masks,
            distractors=self.distractors,
        )
        fit_ctx = self.fit_context()
        methods = [METHODS.get(n)(preset=self.preset, seed=self.cfg.seed) for n in self.method_names]
        metric_status = {m.name: m.applies(self.adapter, self.data.has_masks) for m in metrics}
        active_metrics = [m for m in metrics if metric_status[m.name] is None]
        self._write_config(methods, metrics, metric_status, status={})
        status: Dict[str, dict] = {}
        for method in methods:
            status[method.name] = self._run_method(method, active_metrics, ctx, fit_ctx)
        self._merge(methods, metrics, status)
        self._write_config(methods, metrics, metric_status, status, seconds=time.time() - t0)
        if self.data.skipped:  # shown even with --quiet: these images are missing from every score
            print(
                f"warning: {len(self.data.skipped)} unreadable image(s) skipped (listed in config.json "
                f"dataset.skipped_files): " + "; ".join(f"{p} ({r})" for p, r in self.data.skipped[:5]),
                file=sys.stderr,
            )
        from .exports import write_leaderboards  # leaderboard.{md,tex,csv,json}, from the files just written

        self.leaderboard_markdown = write_leaderboards(self.dir)
        return self.dir

    def fit_context(self):
        """What learned methods' ``fit`` gets (the cache under ``<cache>/explainers``, seed, preset, key)."""
        from xaibench.methods import FitContext

        return FitContext(
            cache_dir=str(cache_dir(self.cfg.cache_dir) / "explainers"),
            seed=self.cfg.seed,
            preset=self.preset,
            distractors=self.distractors,
            key={"dataset": self.dataset, "model": getattr(self.adapter, "meta", {})},
            progress=self.cfg.progress,
        )

    def train(self) -> Dict[str, dict]:
        """``xaibench train``: fit (or load from the cache) every selected method that needs training,
        exactly as ``execute`` would; returns each method's report."""
        self._load()
        fit_ctx = self.fit_context()
        out: Dict[str, dict] = {}
        for name in self.method_names:
            method = METHODS.get(name)(preset=self.preset, seed=self.cfg.seed)
            if not method.requires.training:
                raise UserError(f"method '{name}' is not trained (it needs no 'xaibench train')")
            reason = method.applies_to(self.adapter, self.data.has_masks)
            if reason is not None:
                raise UserError(f"cannot train '{name}': {reason}")
            t = time.time()
            method.fit(self.adapter, self._train_split(), fit_ctx)
            out[name] = {"seconds": round(time.time() - t, 1), **getattr(method, "report", lambda: {})()}
        return out

    def _part_dir(self, method) -> Path:
        return self.dir / "parts" / method.name

    def _run_method(self, method, metrics, ctx, fit_ctx) -> dict:
        part = self._part_dir(method)
        settings_key = stable_hash(
            {
                "method": method.settings(),
                "metrics": [m.settings() for m in metrics],
                "code": _code_fingerprint([type(method)] + [type(m) for m in metrics]),
            }
        )
        done = part / "done.json"
        if done.exists():
            info = read_json(done)
            if info.get("settings_key") == settings_key:
                self._log(f"{method.name}: finished earlier, reusing {part}")
                return info
        reason = method.applies_to(self.adapter, self.data.has_masks)
        if reason is not None:
            self._log(f"{method.name}: skipped ({reason})")
            info = {"status": "skipped", "reason": reason, "settings_key": settings_key}
            write_json(done, info)
            return info
        # a method must not leave the shared classifier changed for the next one (frozen weights, train mode)
        trainable = [p.requires_grad for p in self.adapter.model.parameters()]
        try:
            return self._score_method(method, metrics, ctx, fit_ctx, part, settings_key)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as exc:  # one broken method must not lose the others' results
            self._log(
                f"{method.name}: FAILED ({type(exc).__name__}: {exc}); continuing with the other methods"
            )
            return {
                "status": "failed",
                "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        finally:
            for p, flag in zip(self.adapter.model.parameters(), trainable):
                p.requires_grad_(flag)
            self.adapter.model.eval()

    def _score_method(self, method, metrics, ctx, fit_ctx, part: Path, settings_key: str) -> dict:
        from tqdm.auto import tqdm

        fit_seconds = 0.0
        if method.requires.training or method.requires.distractors:
            t = time.time()
            method.fit(self.adapter, self._train_split(), fit_ctx)
            fit_seconds = time.time() - t
        scored_adapter = self.adapter
        if method.explains_own_model and hasattr(method, "metric_adapter"):
            # e.g. COMET: its faithfulness metrics run on its own predictor, not on the classifier
            from dataclasses import replace

            scored_adapter = method.metric_adapter(self.adapter)
            ctx = replace(ctx, adapter=scored_adapter)
        rows: List[dict] = []
        curve_sum: Dict[tuple, float] = {}
        curve_n: Dict[tuple, int] = {}
        states: Dict[str, List[torch.Tensor]] = {}
        maps: List[torch.Tensor] = []
        ids: List[str] = []
        level = None
        t_attr = t_metric = 0.0
        n_batches = -(-len(self.indices) // self.cfg.batch_size)
        bar = tqdm(
            self.batches(scored_adapter),
            total=n_batches,
            desc=method.name,
            disable=not self.cfg.progress,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for batch in bar:
            t = time.time()
            attribution = self._attribute(method, batch, batch.targets)
            t_attr += time.time() - t
            if hasattr(method, "observe"):  # methods that report on the scored images (Salvage, COMET)
                method.observe(self.adapter, batch)
            level = attribution.level
            maps.append(attribution.maps.cpu())
            ids.extend(batch.ids)
            explained = {}

            def explain(targets: torch.Tensor, _batch=batch) -> Attribution:
                key = tuple(targets.tolist())
                if key not in explained:
                    explained[key] = self._attribute(method, _batch, targets.to(self.device))
                return explained[key]

            t = time.time()
            for metric in metrics:
                result = metric.compute(ctx, batch, attribution, explain)
                for name, values in result.scores.items():
                    for image_id, target, v in zip(batch.ids, batch.targets.tolist(), values.tolist()):
                        rows.append({"image_id": image_id, "target": target, "metric": name, "value": v})
                for name, (xs, ys) in result.curves.items():
                    ys = ys.detach().cpu().double()
                    for j, xv in enumerate(xs.tolist()):
                        key = (name, xv)
                        col = ys[:, j]
                        finite = torch.isfinite(col)
                        curve_sum[key] = curve_sum.get(key, 0.0) + float(col[finite].sum())
                        curve_n[key] = curve_n.get(key, 0) + int(finite.sum())
                for name, st in result.states.items():
                    states.setdefault(name, []).append(st.detach().cpu())
            t_metric += time.time() - t
        bar.close()
        self.adapter.zero_grad()
        scores = pd.DataFrame(rows, columns=["image_id", "target", "metric", "value"])
        curves = pd.DataFrame(
            [
                {"metric": k[0], "x": k[1], "value": curve_sum[k] / max(1, curve_n[k]), "n": curve_n[k]}
                for k in curve_sum
            ],
            columns=["metric", "x", "value", "n"],
        )
        write_csv(part / "scores.csv", scores)
        write_csv(part / "curves.csv", curves)
        save_torch(part / "states.pt", {k: torch.cat(v) for k, v in states.items()})
        save_torch(part / "attributions.pt", {"ids": ids, "level": level, "maps": torch.cat(maps)})
        n = len(self.indices)
        info = {
            "status": "done",
            "settings_key": settings_key,
            "settings": method.settings(),
            "label": method.display_name(),
            "explains_own_model": method.explains_own_model,
            "fit_seconds": round(fit_seconds, 3),
            "attribute_seconds": round(t_attr, 3),
            "metric_seconds": round(t_metric, 3),
            "maps_per_second": round(n / max(t_attr, 1e-9), 2),
            "n_images": n,
        }
        info.update(getattr(method, "report", lambda: {})())
        write_json(part / "done.json", info)
        self._log(f"{method.name}: {n} images, attribution {t_attr:.1f}s, metrics {t_metric:.1f}s")
        return info

    def _attribute(self, method, batch, targets) -> Attribution:
        attribution = method.attribute(self.adapter, batch.x, targets, ids=batch.ids, masks=batch.masks)
        expected = {"patch": self.adapter.grid, "pixel": self.adapter.input_size}[attribution.level]
        if len(attribution) != len(batch) or tuple(attribution.maps.shape[1:]) != tuple(expected):
            raise ValueError(
                f"method '{method.name}' returned maps of shape {tuple(attribution.maps.shape)} at "
                f"level {attribution.level}; expected ({len(batch)}, {expected[0]}, {expected[1]})"
            )
        return attribution

    # ------------------------------------------------------------------ outputs
    def _merge(self, methods, metrics, status) -> None:
        frames, curve_frames, all_states = [], [], {}
        for method in methods:
            if status[method.name].get("status") != "done":
                continue
            part = self._part_dir(method)
            s = pd.read_csv(part / "scores.csv", dtype={"image_id": str})
            c = pd.read_csv(part / "curves.csv")
            for f in (s, c):
                f.insert(0, "method", method.name)
                f.insert(0, "model", self.model_name)
                f.insert(0, "dataset", self.dataset)
            frames.append(s)
            curve_frames.append(c)
            all_states[method.name] = load_torch(part / "states.pt")
        scores = (
            pd.concat(frames, ignore_index=True)[SCORE_COLUMNS]
            if frames
            else pd.DataFrame(columns=SCORE_COLUMNS)
        )
        curves = (
            pd.concat(curve_frames, ignore_index=True)[CURVE_COLUMNS]
            if curve_frames
            else pd.DataFrame(columns=CURVE_COLUMNS)
        )
        write_csv(self.dir / "scores.csv", scores)
        write_csv(self.dir / "curves.csv", curves)
        save_torch(self.dir / "states.pt", all_states)

    def _write_config(self, methods, metrics, metric_status, status, seconds: Optional[float] = None) -> None:
        cfg = {k: v for k, v in asdict(self.cfg).items()}
        write_json(
            self.dir / "config.json",
            {
                "run_id": self.dir.name,
                "command": " ".join(sys.argv)
                if Path(sys.argv[0]).name in ("xaibench", "__main__.py")
                else None,
                "config": cfg,
                "resolved": {
                    "dataset": self.dataset,
                    "model": self.model_name,
                    "device": str(self.device),
                    "preset": self.preset,
                    "n_images": len(self.indices),
                    "split": self.cfg.split,
                    "target": self.cfg.target,
                    "removal": self.removal.settings(),
                    "cardinalities": (
                        "each metric's preset (see metrics.<name>.settings)"
                        if self.cfg.cardinalities is None
                        else self.cfg.cardinalities
                        if isinstance(self.cfg.cardinalities, (int, str))
                        else list(self.cfg.cardinalities)
                    ),
                    "n_masks": (
                        self.cfg.n_masks
                        if self.cfg.n_masks is not None
                        else "each metric's preset (see metrics.<name>.settings)"
                    ),
                    "seed": self.cfg.seed,
                    "chunk_size": self.adapter.chunk_size,
                },
                "model": {**self.adapter.describe(), **getattr(self.adapter, "meta", {})},
                "dataset": {
                    "name": self.dataset,
                    "split": self.cfg.split,
                    "has_masks": self.data.has_masks,
                    "classes": list(self.data.classes),
                    "skipped_files": list(self.data.skipped),
                    "options": getattr(self.data, "options", {}),
                },
                "methods": {
                    m.name: {
                        "label": m.display_name(),
                        "requires": m.requires.as_dict(),
                        "settings": m.settings(),
                        **{
                            k: v
                            for k, v in status.get(m.name, {}).items()
                            if k not in ("settings", "traceback")
                        },
                    }
                    for m in methods
                },
                "metrics": {
                    m.name: {
                        "provides": list(m.provides),
                        "directions": m.directions,
                        "settings": m.settings(),
                        "skipped": metric_status[m.name],
                    }
                    for m in metrics
                },
                "versions": versions(),
                "seconds": None if seconds is None else round(seconds, 1),
            },
        )

    def _log(self, text: str) -> None:
        if self.cfg.progress:
            print(text, file=sys.stderr)


def run(config: RunConfig) -> Path:
    return Run(config).execute()
