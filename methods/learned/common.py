"""What the learned explainers share: one stopping rule, cache keys, verified cached training,
model copies, and data access.

**One budget rule for every learned artefact** (surrogate, ViT-Shapley, Salvage, COMET):
:class:`StoppingRule`. Training runs in rounds of ``eval_every`` optimiser steps; after each round
a deterministic validation loss is computed on held-out images (the method's own training loss on
fixed, seeded masks); training stops when ``patience`` rounds in a row did not improve the best
validation loss by more than ``min_rel_delta`` (relative), or at ``max_steps``; the weights of the
best round are kept. The rule depends on the preset only (:data:`STOPPING`), never on the method.
Validation images: the dataset's validation split (``FitContext.val_data``) when given, else a
held-out part of the training split; both drawn from ``ctx.seed`` (:func:`holdout`).

The learning-rate schedule's horizon is ``max_steps``: :func:`make_schedule` gives a linear
warm-up of ``min(500, max_steps // 20)`` steps and cosine decay to 0 at ``max_steps`` (the schedule
of Covert et al. 2023, "Learning to estimate Shapley values with vision transformers", whose
reference training uses 500 warm-up steps), or a constant rate; the quick preset's rule keeps the
rate constant after the warm-up (see :data:`STOPPING`).

A learned artefact is a verified artifact (:func:`xaibench.artifacts.cached`) in
``<cache>/explainers/<kind>-<key>/``: built under a cross-process lock, listed in a manifest of
sha256s, and rebuilt (one warning line) when damaged. ``key`` hashes everything its weights depend
on (:func:`cache_key`): a content fingerprint of the training data and of the validation data, the
classifier's weights and preprocessing, the recipe (with a version bumped when the training code
changes), the stopping rule and the seed. While it trains, the directory holds a resumable,
self-verified ``checkpoint.pt`` (:func:`xaibench.training.train_epochs`) and ``log.csv``; once
finished, ``weights.pt`` (loaded with ``weights_only=True``), ``meta.json`` and the manifest.

Every random draw of training derives from ``ctx.seed``: initialisation (:func:`seeded_init`),
the validation hold-out and masks, the batch order (:func:`batch_stream`) and the masks of each
round (the round's generator), so that training seeds give different, individually reproducible
artefacts.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
import torch.nn as nn

from xaibench.adapter import ModelAdapter, same_setting
from xaibench.io import load_torch, read_json, save_torch, stable_hash, weights_fingerprint, write_json
from xaibench.seeding import derive_seed, generator
from xaibench.training import RESUMABLE, Plateau, discard_checkpoint, train_epochs

log = logging.getLogger(__name__)

#: bump when the shared training code (stopping, validation, schedule, caching) changes what it produces
TRAINING_VERSION = 2


# ------------------------------------------------------------------------------------ stopping


@dataclass(frozen=True)
class StoppingRule:
    """When learned artefacts stop training (the same for every learned method of a preset).

    ``max_steps``: the cap (and the schedule's horizon); ``eval_every``: optimiser steps per round;
    ``patience``: rounds without improvement before stopping; ``min_rel_delta``: the relative
    improvement that counts; ``val_images`` / ``val_masks``: the held-out images and the fixed
    masks per image of the validation loss; ``decay``: whether a ``cosine`` schedule decays to 0 at
    ``max_steps`` (else it stays constant after the warm-up)."""

    max_steps: int
    eval_every: int
    patience: int
    min_rel_delta: float = 1e-3
    val_images: int = 256
    val_masks: int = 16
    decay: bool = True

    @property
    def rounds(self) -> int:
        return -(-self.max_steps // self.eval_every)

    @property
    def warmup_steps(self) -> int:
        return min(500, self.max_steps // 20)

    def round_steps(self, r: int) -> int:
        return min(self.eval_every, self.max_steps - r * self.eval_every)


#: paper: the salvage paper's ~18k iterations (§5.1) as the cap, validated every 500 steps on 256
#: held-out images. quick: the embedded default's CPU budget: at most 180 steps (batch 16) for each
#: learned artefact, validated every 36 steps on 64 held-out images — ≈ 2 minutes for the surrogate,
#: ViT-Shapley, Salvage and COMET together on 2 quiet CPU cores (estimated from single-thread CPU
#: time), and a constant learning rate after the warm-up: decaying to 0 within 180 steps left Salvage
#: in its first phase on the embedded default (a fit of u(S) by the subset size, with maps that
#: correlated −0.17 with the object mask, against +0.63 at a constant rate; ViT-Shapley 0.68 against
#: 0.76). The quick cap stops far from the plateau: with the same recipes, 1000 steps reach validation
#: losses of 0.598 / 0.511 / 0.032 / −15.0 (surrogate / ViT-Shapley / Salvage / COMET) where the quick
#: cap ends at 0.622 / 0.614 / 0.072 / 8.7 (embedded default, seed 0).
STOPPING: Dict[str, StoppingRule] = {
    "paper": StoppingRule(max_steps=18000, eval_every=500, patience=6, val_images=256, val_masks=32),
    "quick": StoppingRule(max_steps=180, eval_every=36, patience=3, val_images=64, val_masks=8, decay=False),
}


def training_budget(preset: str) -> str:
    """The training budget of a run preset: ``quick`` trains at the quick cap; ``paper`` and
    ``fast`` (the papers' methods, metrics on sub-grids) at the paper's."""
    return "quick" if preset == "quick" else "paper"


def stopping_rule(preset: str) -> StoppingRule:
    """The stopping rule learned methods train under in a run of ``preset``."""
    return STOPPING[training_budget(preset)]


def make_schedule(optimizer: torch.optim.Optimizer, rule: StoppingRule, kind: str):
    """``cosine``: linear warm-up then cosine decay to 0 at ``rule.max_steps`` (constant after the
    warm-up when ``rule.decay`` is False); ``constant``: the base rate throughout."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}")
    warm, total = rule.warmup_steps, rule.max_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not rule.decay:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------ data


def split_images(split, idx: torch.Tensor) -> torch.Tensor:
    """Images (n, 3, H, W) in [0, 1] of split rows ``idx`` (fast path for in-memory splits)."""
    if hasattr(split, "images") and torch.is_tensor(split.images):
        imgs = split.images[idx]
        return imgs.float() / 255.0 if imgs.dtype == torch.uint8 else imgs.float()
    return torch.stack([split[int(i)].image for i in idx])


def split_labels(split, idx: torch.Tensor) -> torch.Tensor:
    if hasattr(split, "labels") and torch.is_tensor(split.labels):
        return split.labels[idx].long()
    return torch.tensor([split[int(i)].label for i in idx])


def batch_stream(
    rows: torch.Tensor, batch_size: int, seed: int, start: int, steps: int
) -> Iterator[torch.Tensor]:
    """Batches ``start … start + steps − 1`` of an endless stream over ``rows``: consecutive passes,
    each a permutation seeded by (seed, pass), cut into batches of ``batch_size`` (a batch may span
    two passes). Every row is seen once per pass; any stretch of the stream can be regenerated, so
    a resumed training sees the same batches."""
    n = len(rows)
    bs = min(batch_size, n)
    perms: Dict[int, torch.Tensor] = {}

    def perm(p: int) -> torch.Tensor:
        if p not in perms:
            perms[p] = torch.randperm(n, generator=generator(seed, "batch-pass", p))
        return perms[p]

    for s in range(start, start + steps):
        first = s * bs
        pos = torch.arange(first, first + bs)
        passes = pos // n
        idx = torch.empty(bs, dtype=torch.long)
        for p in passes.unique().tolist():
            sel = passes == p
            idx[sel] = perm(p)[pos[sel] % n]
        yield rows[idx]


@dataclass
class Holdout:
    """Training rows and validation rows (of ``val_split``: the validation split or the training split)."""

    train_rows: torch.Tensor
    val_split: Any
    val_rows: torch.Tensor
    source: str  # "val_data" or "train_holdout"

    def describe(self) -> dict:
        return {"source": self.source, "train_images": len(self.train_rows), "val_images": len(self.val_rows)}


def holdout(train_split, ctx, rule: StoppingRule) -> Holdout:
    """The validation images: ``rule.val_images`` rows of ``ctx.val_data`` when given (seeded draw),
    else a seeded held-out part of the training split (at most a tenth of it), removed from training."""
    val = getattr(ctx, "val_data", None)
    if val is not None and len(val) > 0:
        n = min(rule.val_images, len(val))
        rows = torch.randperm(len(val), generator=generator(ctx.seed, "learned-validation")).narrow(0, 0, n)
        return Holdout(torch.arange(len(train_split)), val, rows.sort().values, "val_data")
    n_train = len(train_split)
    n = min(rule.val_images, max(1, n_train // 10)) if n_train > 1 else 0
    if n == 0:
        raise ValueError("a learned method needs at least 2 training images (one is held out for validation)")
    perm = torch.randperm(n_train, generator=generator(ctx.seed, "learned-holdout"))
    return Holdout(perm[n:].sort().values, train_split, perm[:n].sort().values, "train_holdout")


def data_fingerprint(split) -> str:
    """The split's content fingerprint (``split.fingerprint()``) plus its preprocessing, if any."""
    if split is None:
        return "none"
    fp = split.fingerprint() if hasattr(split, "fingerprint") else None
    if fp is None:
        raise TypeError(f"{type(split).__name__} has no fingerprint(): its content cannot key a cache")
    transform = getattr(split, "transform", None)
    return fp if transform is None else f"{fp}:{stable_hash(repr(transform), 16)}"


# ------------------------------------------------------------------------------------ models


def seeded_init(seed: int, *keys: object, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with the global RNG seeded by (seed, *keys) and restored afterwards, so that a
    freshly initialised module is the same in every run (and in a resumed one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init", *keys))
        return build()


def clone_adapter(adapter: ModelAdapter, model: Optional[nn.Module] = None, name: str = "") -> ModelAdapter:
    """A ModelAdapter with the classifier's preprocessing and memory budget around ``model``
    (default: a deep copy of the classifier)."""
    model = copy.deepcopy(adapter.model) if model is None else model
    return same_setting(adapter, model, name or adapter.name)


def in_chunks(fn: Callable[..., torch.Tensor], rows: int, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*tensors)`` evaluated on consecutive row blocks of at most ``rows`` (bounded memory)."""
    n = len(tensors[0])
    rows = max(1, int(rows))
    if n <= rows:
        return fn(*tensors)
    return torch.cat([fn(*(t[s : s + rows] for t in tensors)) for s in range(0, n, rows)])


def cache_key(
    kind: str,
    adapter: ModelAdapter,
    recipe: Any,
    seed: int,
    train_split=None,
    val_split=None,
    rule: Optional[StoppingRule] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> str:
    """``<kind>-<hash>``: the hash covers the training and validation data (content fingerprints),
    the classifier (weights, class subset, preprocessing), the recipe, the stopping rule, the seed,
    the shared training code's version and ``extra``."""
    rec = asdict(recipe) if hasattr(recipe, "__dataclass_fields__") else recipe
    return f"{kind}-" + stable_hash(
        {
            "kind": kind,
            "train_data": data_fingerprint(train_split),
            "val_data": data_fingerprint(val_split),
            "classifier": weights_fingerprint(adapter.model),
            "class_indices": None if adapter.class_indices is None else adapter.class_indices.tolist(),
            "preprocessing": [
                adapter.mean.flatten().tolist(),
                adapter.std.flatten().tolist(),
                adapter.input_size,
            ],
            "recipe": rec,
            "stopping": asdict(rule) if rule is not None else None,
            "seed": int(seed),
            "training_version": TRAINING_VERSION,
            "extra": extra or {},
        },
        16,
    )


# ------------------------------------------------------------------------------------ training


def train_to_plateau(
    directory: Path,
    modules: Dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    rule: StoppingRule,
    train_rows: torch.Tensor,
    batch_size: int,
    step: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    validate: Callable[[], float],
    *,
    seed: int,
    desc: str,
    schedule: str = "cosine",
    clip: Optional[float] = None,
) -> dict:
    """The shared training loop: rounds of ``rule.eval_every`` steps, each step ``loss =
    step(batch_rows, generator)`` then AdamW/Adam step (gradient norm clipped to ``clip``) and one
    schedule step; ``validate()`` after each round; stop by :class:`StoppingRule`; best weights kept.

    Returns the training summary (steps, best step, validation loss, stop reason, seconds, log)."""
    scheduler = make_schedule(optimizer, rule, schedule)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def run_round(r: int, g: torch.Generator, bar) -> Dict[str, float]:
        n, total = rule.round_steps(r), 0.0
        for idx in batch_stream(train_rows, batch_size, seed, r * rule.eval_every, n):
            loss = step(idx, g)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            bar.step(float(loss.detach()))
        return {"loss": total / n, "lr": scheduler.get_last_lr()[0], "step": r * rule.eval_every + n}

    t = time.time()
    fresh = not (Path(directory) / "checkpoint.pt").exists()
    initial = None
    if fresh:  # the validation loss before training (for the summary; skipped when resuming)
        for m in modules.values():
            m.eval()
        with torch.no_grad():
            initial = float(validate())
    rows = train_epochs(
        directory,
        modules,
        optimizer,
        rule.rounds,
        run_round,
        rule.eval_every,
        seed=seed,
        scheduler=scheduler,
        scheduler_per_epoch=False,
        desc=desc,
        validate=validate,
        plateau=Plateau(rule.patience, rule.min_rel_delta),
    )
    return summarize(rows, rule, time.time() - t, initial)


def summarize(
    rows: List[Dict[str, float]], rule: StoppingRule, seconds: float, initial: Optional[float] = None
) -> dict:
    last = rows[-1]
    steps = sum(rule.round_steps(r) for r in range(len(rows)))
    best_round = int(last["best_epoch"])
    by_patience = last["since_best"] >= rule.patience
    return {
        "steps": steps,
        "max_steps": rule.max_steps,
        "best_step": sum(rule.round_steps(r) for r in range(best_round)),
        "val_loss": last["best_val_loss"],
        "initial_val_loss": initial,
        "stopped_by": "patience" if by_patience else "cap",
        "train_seconds": round(seconds, 1),
        "log": rows,
    }


def train_cached(
    directory: Path,
    what: str,
    modules: Dict[str, nn.Module],
    train: Callable[[Path], dict],
) -> dict:
    """Load the artefact in ``directory`` into ``modules``, training it first (``train(directory)``,
    which returns its summary) when it is missing or damaged: a verified, locked artifact
    (:func:`xaibench.artifacts.cached`). Returns the summary plus ``cached`` (loaded, not trained)."""
    from xaibench import artifacts

    initial = {k: copy.deepcopy(m.state_dict()) for k, m in modules.items()}
    built: Dict[str, Any] = {}

    def build(d: Path) -> dict:
        for k, m in modules.items():  # a failed load must not leave weights behind
            m.load_state_dict(initial[k])
        log.info(f"{what}: not in the cache, training ({d})")
        info = train(d)
        save_torch(d / "weights.pt", {k: m.state_dict() for k, m in modules.items()})
        write_json(d / "meta.json", info)
        discard_checkpoint(d)
        built["yes"] = True
        return {"what": what}

    def load(d: Path) -> dict:
        state = load_torch(d / "weights.pt")
        for k, m in modules.items():
            m.load_state_dict(state[k])
            m.eval()
        return read_json(d / "meta.json")

    info = artifacts.cached(directory, what, build, load, resumable=RESUMABLE)
    info["cached"] = not built
    return info


def training_line(label: str, info: dict) -> str:
    """A short note: steps, why training stopped, and the validation loss of one trained artefact."""
    if not info:
        return f"{label}: not trained"
    if info.get("stopped_by") == "patience":
        how = "plateau"
    elif info.get("best_step") == info.get("steps"):
        how = "step cap, still improving"
    else:
        how = "step cap"
    return (
        f"{label} {info.get('steps')} steps ({how}; best at {info.get('best_step')}, "
        f"val loss {_num(info.get('initial_val_loss'))} → {_num(info.get('val_loss'))})"
    )


def _num(v) -> str:
    return "?" if v is None else f"{v:.4g}"


def public_summary(info: dict) -> dict:
    """The summary for reports: the per-round log reduced to ``val_curve`` ([step, val loss] pairs)."""
    out = {k: v for k, v in info.items() if k != "log"}
    if "log" in info:
        out["val_curve"] = [[int(row["step"]), row.get("val_loss")] for row in info["log"] if "step" in row]
    return out
