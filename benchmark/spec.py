"""A run's settings: what the user asked for (:class:`RunConfig`) and what it resolves to (:class:`RunSpec`).

:func:`resolve` is pure: it validates every setting and fills in the defaults that follow from
the others (the dataset's default model, the preset, the device), without touching files,
data or models, so that bad input is refused before any long work starts.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import torch

from .datasets import SPLITS
from .errors import UserError, check_positive
from .models import unknown_model
from .pretrained import is_timm_model
from .registry import DATASETS, METHODS, METRICS, MODELS
from .removal import STRATEGIES

TARGETS = ("pred", "label")
PRESETS = ("auto", "paper", "quick", "fast")
#: images of the ``fast`` protocol's class-balanced, seeded subset (real datasets, by default)
FAST_IMAGES = 100
EMBEDDED_DATASET = "synthetic"
DEFAULT_MODELS = {
    EMBEDDED_DATASET: "xaibench_vit",
    "imagenette": "vit_small_patch16_224.augreg_in21k_ft_in1k",  # ImageNet head, subset to 10
}
DEFAULT_N_IMAGES = {EMBEDDED_DATASET: 200}
#: the embedded dataset is generated in memory: more images than this per split is a typo
MAX_SYNTHETIC_IMAGES = 100_000
#: settings that do not change any number (where files go, what is selected, how files are found)
_NOT_NUMBERS = frozenset(
    {
        "methods",
        "metrics",
        "out",
        "run_id",
        "cache_dir",
        "data_root",
        "weights",
        "plugins",
        "overwrite",
        "save_maps",
        "threads",
    }
)
#: training seeds of each learned method on the embedded default: at the quick budget Salvage's
#: SRG moved from 21.8 to 40.8 and 38.3 between three training seeds on one classifier, so one
#: seed's interval would cover image sampling only (three cost ~3 min more on a 2-core CPU)
EMBEDDED_TRAIN_SEEDS = 3
#: autocast of the metrics' model passes: None (float32), bf16 or fp16
AMP = (None, "bf16", "fp16")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class RunConfig:
    """The settings of ``xaibench run`` as the user gives them (CLI flags or Python)."""

    dataset: str = EMBEDDED_DATASET
    model: Optional[str] = None  # default: the dataset's default model
    methods: Any = "all"
    metrics: Any = "all"
    n_images: Optional[int] = None  # default: 200 on synthetic, the whole split elsewhere
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    preset: str = "auto"  # quick on the embedded default, fast elsewhere
    removal: str = "auto"  # drop for ViTs, mean for CNNs
    n_draws: int = 10  # distractor draws per masked input
    target: str = "pred"
    cardinalities: Optional[int | str | Sequence[int]] = None  # None = metric presets
    n_masks: Optional[int] = None
    split: str = "test"
    distractor_pool: int = 256
    out: str = "results"
    run_id: Optional[str] = None
    cache_dir: Optional[str] = None
    data_root: Optional[str] = None
    weights: Optional[str] = None
    chunk_size: Optional[int] = None
    plugins: List[str] = field(default_factory=list)
    overwrite: bool = False
    train_seeds: Optional[int] = None  # default: EMBEDDED_TRAIN_SEEDS on the embedded default, else 1
    save_maps: bool = False
    threads: Optional[int] = None  # torch threads (default: torch's; cores per rank under torchrun)
    amp: Optional[str] = None  # bf16 or fp16 autocast of the metrics' passes (None: float32)
    dry_run: bool = False  # print the cost of the run and stop


@dataclass(frozen=True)
class RunSpec:
    """A validated run: every name resolved, every default filled in."""

    dataset: str
    model: str
    methods: Tuple[str, ...]
    metrics: Tuple[str, ...]  # metric families (each registered class once, by its name)
    n_images: Optional[int]  # None: the whole split
    batch_size: int
    seed: int
    device: str
    preset: str
    removal: str  # "auto" is resolved when the model is known (drop for ViTs, mean for CNNs)
    n_draws: int
    target: str
    cardinalities: Optional[int | str | Tuple[int, ...]]
    n_masks: Optional[int]
    split: str
    distractor_pool: int
    out: str
    run_id: Optional[str]
    cache_dir: Optional[str]
    data_root: Optional[str]
    weights: Optional[str]
    chunk_size: Optional[int]
    plugins: Tuple[str, ...]
    overwrite: bool
    train_seeds: int
    save_maps: bool
    threads: Optional[int]
    amp: Optional[str]

    def numbers(self) -> dict:
        """The settings the scores depend on (part of the run's identity)."""
        numbers = {k: v for k, v in asdict(self).items() if k not in _NOT_NUMBERS}
        numbers["device"] = self.device.split(":")[0]  # cuda:0 and cuda:1 compute alike
        return numbers

    def train_seed_list(self) -> List[int]:
        """The training seeds of learned methods: the run's seed, then seed + 1, ..."""
        return [self.seed + i for i in range(self.train_seeds)]


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}'. Valid devices: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device")
    return name


def check_run_id(run_id: Optional[str]) -> Optional[str]:
    """A run id must be one safe path component (letters, digits, '.', '_', '-'; not '.' or '..')."""
    if run_id is None:
        return None
    if not _RUN_ID.fullmatch(run_id) or set(run_id) <= {"."}:
        raise UserError(
            f"--run-id {run_id!r} is not a valid run name: use one folder name of letters, digits, "
            f"'.', '_' and '-' (at most 128 characters, starting with a letter or digit)"
        )
    return run_id


def _cardinalities(value):
    if value is None or value == "all":
        return value
    if isinstance(value, bool):
        raise UserError(f"--cardinalities must be 'all', a count or a list of k, got {value!r}")
    if isinstance(value, int):
        return check_positive("--cardinalities", value)
    ks = tuple(value)
    if not ks:
        raise UserError("--cardinalities is empty: give 'all', a count (e.g. 20) or k values (e.g. 1,2,4)")
    for k in ks:
        check_positive("--cardinalities entry", k)
    return ks


def metric_families(names: Sequence[str]) -> Tuple[str, ...]:
    """Registered score names → the metric classes that provide them, each once, by class name."""
    out: List[str] = []
    for n in names:
        family = METRICS.get(n).name
        if family not in out:
            out.append(family)
    return tuple(out)


def resolve(config: RunConfig) -> RunSpec:
    """Validate ``config`` and fill in its defaults (plugins must already be loaded)."""
    c = config
    counts = (
        "batch_size",
        "n_images",
        "n_masks",
        "n_draws",
        "chunk_size",
        "distractor_pool",
        "train_seeds",
        "threads",
    )
    for name in counts:
        check_positive("--" + name.replace("_", "-"), getattr(c, name))
    if isinstance(c.seed, bool) or not isinstance(c.seed, int):
        raise UserError(f"--seed must be an integer, got {c.seed!r}")
    if c.target not in TARGETS:
        raise UserError(f"unknown target '{c.target}'. Valid targets: {', '.join(TARGETS)}")
    if c.removal != "auto" and c.removal not in STRATEGIES:
        valid = ", ".join(("auto",) + STRATEGIES)
        raise UserError(f"unknown removal strategy '{c.removal}'. Valid strategies: {valid}")
    if c.amp not in AMP:
        raise UserError(f"unknown --amp '{c.amp}'. Valid: {', '.join(a for a in AMP if a)} (or leave it out)")
    if c.split not in SPLITS:
        raise UserError(f"unknown split '{c.split}'. Valid splits: {', '.join(SPLITS)}")
    if c.preset not in PRESETS:
        raise UserError(f"unknown preset '{c.preset}'. Valid presets: {', '.join(PRESETS)}")
    methods = tuple(METHODS.resolve(c.methods))
    metrics = metric_families(METRICS.resolve(c.metrics))
    dataset = c.dataset.lower()
    DATASETS.get(dataset)
    model = (c.model or DEFAULT_MODELS.get(dataset) or "").lower()
    if not model:
        raise UserError(f"dataset '{dataset}' has no default model: pass --model")
    if model not in MODELS:  # before any download: a registered recipe or a timm name
        if not is_timm_model(model):
            raise unknown_model(model)
    preset = c.preset if c.preset != "auto" else ("quick" if dataset == EMBEDDED_DATASET else "fast")
    n_images = c.n_images or DEFAULT_N_IMAGES.get(dataset) or (FAST_IMAGES if preset == "fast" else None)
    if dataset == EMBEDDED_DATASET and n_images and n_images > MAX_SYNTHETIC_IMAGES:
        raise UserError(
            f"--n-images {n_images} is more than the {MAX_SYNTHETIC_IMAGES} images the embedded dataset "
            f"generates per split"
        )
    train_seeds = c.train_seeds or (EMBEDDED_TRAIN_SEEDS if dataset == EMBEDDED_DATASET else 1)
    return RunSpec(
        dataset=dataset,
        model=model,
        methods=methods,
        metrics=metrics,
        n_images=n_images,
        batch_size=c.batch_size,
        seed=c.seed,
        device=_device(c.device),
        preset=preset,
        removal=c.removal,
        n_draws=c.n_draws,
        target=c.target,
        cardinalities=_cardinalities(c.cardinalities),
        n_masks=c.n_masks,
        split=c.split,
        distractor_pool=c.distractor_pool,
        out=str(c.out),
        run_id=check_run_id(c.run_id),
        cache_dir=c.cache_dir,
        data_root=c.data_root,
        weights=c.weights,
        chunk_size=c.chunk_size,
        plugins=tuple(c.plugins),
        overwrite=bool(c.overwrite),
        train_seeds=train_seeds,
        save_maps=bool(c.save_maps),
        threads=c.threads,
        amp=c.amp,
    )
