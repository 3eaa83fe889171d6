"""The one training loop behind every trained artefact (classifiers, surrogates, explainers).

It saves the modules, the optimizer and the scheduler atomically after every epoch, appends a
row to a CSV log next to the checkpoint, shows a progress bar with the loss, and resumes an
interrupted training from its last epoch. Each epoch draws its randomness from generators
seeded by (seed, epoch), so a resumed training ends with the same weights as an
uninterrupted one.

The checkpoint carries its own integrity check: ``checkpoint.json`` next to it records the
checkpoint's size and sha256, written after the checkpoint itself. A checkpoint that does not
match its record (damaged, truncated, or written by a process killed between the two files), or
that cannot be loaded into the modules, is discarded with one warning and training restarts from
the beginning: it is never loaded as garbage.

Early stopping (optional): with ``validate`` and ``plateau``, ``epochs`` is a maximum. After every
epoch ``validate()`` returns a held-out loss; the best weights so far are kept (in memory and in
the checkpoint), training stops once ``plateau.patience`` epochs in a row brought no improvement
larger than ``plateau.min_rel_delta`` (relative to the best loss), and the modules end with the
best weights.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn

from .io import atomic_write, file_hash, load_torch, read_json, save_torch, write_json
from .seeding import derive_seed

log = logging.getLogger(__name__)

EpochFn = Callable[[int, torch.Generator, "Progress"], Dict[str, float]]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_RECORD = "checkpoint.json"
LOG = "log.csv"
#: the files a resumable training leaves in its directory (to be kept when the artifact is rebuilt)
RESUMABLE = (CHECKPOINT, CHECKPOINT_RECORD, LOG)


class Progress:
    """A progress bar over one epoch's steps (``xaibench.log.bar``; silent when disabled)."""

    def __init__(self, total: int, desc: str) -> None:
        from .log import bar

        self.bar = bar(total=total, desc=desc)

    def step(self, loss: float | None = None, **extra: float) -> None:
        self.bar.update(1)
        shown = {k: f"{v:.4g}" for k, v in ({"loss": loss} if loss is not None else {}).items()}
        shown.update({k: f"{v:.4g}" for k, v in extra.items()})
        if shown:
            self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class Plateau:
    """Stop after ``patience`` validations in a row without a relative improvement > ``min_rel_delta``."""

    patience: int
    min_rel_delta: float = 0.0

    def improved(self, value: float, best: Optional[float]) -> bool:
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value < best - self.min_rel_delta * abs(best)


def _write_log(path: Path, rows: List[Dict[str, float]]) -> None:
    keys: List[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def save_checkpoint(directory: Path, state: dict) -> None:
    """Write ``checkpoint.pt`` atomically, then its record (size and sha256)."""
    path = directory / CHECKPOINT
    save_torch(path, state)
    write_json(
        directory / CHECKPOINT_RECORD,
        {"sha256": file_hash(path, 64), "bytes": os.path.getsize(path), "epoch": state.get("epoch")},
    )


def discard_checkpoint(directory: Path) -> None:
    for name in (CHECKPOINT, CHECKPOINT_RECORD):
        (directory / name).unlink(missing_ok=True)


def checkpoint_problem(directory: Path) -> Optional[str]:
    """None if ``checkpoint.pt`` matches its record, else what is wrong."""
    path = directory / CHECKPOINT
    try:
        record = read_json(directory / CHECKPOINT_RECORD)
    except (OSError, ValueError):
        return "it has no readable checkpoint.json record"
    if not isinstance(record, dict):
        return "its checkpoint.json record is not an object"
    size = os.path.getsize(path)
    if size != record.get("bytes"):
        return f"it has {size} bytes, its record says {record.get('bytes')}"
    if file_hash(path, 64) != record.get("sha256"):
        return "it does not match the sha256 in its record"
    return None


def _load_checkpoint(
    directory: Path,
    modules: Dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler,
    desc: str,
) -> Optional[dict]:
    """The verified checkpoint's state, loaded into the modules, optimizer and scheduler; None (after
    one warning, with the files removed and everything left as it was) when it is damaged."""
    path = directory / CHECKPOINT
    if not path.exists():
        discard_checkpoint(directory)  # a lone record
        return None
    problem = checkpoint_problem(directory)
    before = None
    if problem is None:
        before = (
            {k: copy.deepcopy(m.state_dict()) for k, m in modules.items()},
            copy.deepcopy(optimizer.state_dict()),
            copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None,
        )
        try:
            state = load_torch(path)
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler") is not None:
                scheduler.load_state_dict(state["scheduler"])
            int(state["epoch"]), list(state["log"])
            return state
        except Exception as exc:  # noqa: BLE001  (anything unloadable is discarded, never used)
            problem = f"it could not be loaded ({type(exc).__name__}: {exc})"
    if before is not None:  # a partial load must not leak into the fresh start
        for k, m in modules.items():
            m.load_state_dict(before[0][k])
        optimizer.load_state_dict(before[1])
        if scheduler is not None:
            scheduler.load_state_dict(before[2])
    log.warning(
        f"{desc}: the training checkpoint in {directory} is damaged ({problem}): discarded, restarting"
    )
    discard_checkpoint(directory)
    return None


def train_epochs(
    directory: str | Path,
    modules: Dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    run_epoch: EpochFn,
    steps_per_epoch: int,
    *,
    seed: int,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    scheduler_per_epoch: bool = True,
    desc: str = "train",
    validate: Optional[Callable[[], float]] = None,
    plateau: Optional[Plateau] = None,
) -> List[Dict[str, float]]:
    """Run ``run_epoch(epoch, generator, bar)`` for the remaining epochs, checkpointing each.

    ``directory`` holds ``checkpoint.pt`` (the resumable state, see the module docstring) and
    ``log.csv``. The scheduler's state is checkpointed; it is stepped once per epoch here unless
    ``scheduler_per_epoch`` is False (then ``run_epoch`` steps it per batch). ``validate`` (called
    with the modules in eval mode after each epoch) adds ``val_loss`` to the log; with ``plateau``
    it also stops training early and restores the best weights (see the module docstring).
    Returns the log rows (one per epoch, with the dict ``run_epoch`` returned plus the epoch
    number; with validation also ``val_loss``, ``best_val_loss``, ``best_epoch`` and ``since_best``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / LOG
    rows: List[Dict[str, float]] = []
    start = 0
    best: Optional[dict] = None  # {"epoch", "val", "modules"}
    state = _load_checkpoint(directory, modules, optimizer, scheduler, desc)
    if state is not None:
        rows, start = list(state["log"]), int(state["epoch"])
        best = state.get("best")
        if start < epochs:
            log.info(f"{desc}: resuming from epoch {start}/{epochs} ({directory / CHECKPOINT})")

    def exhausted() -> bool:
        return bool(plateau and rows and rows[-1].get("since_best", 0) >= plateau.patience)

    epoch = start
    while epoch < epochs and not exhausted():
        for m in modules.values():
            m.train()
        g = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
        bar = Progress(steps_per_epoch, f"{desc} {epoch + 1}/{epochs}")
        # modules that draw from the global RNG (dropout) get a per-epoch seed without leaking it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "global", epoch))
            metrics = run_epoch(epoch, g, bar)
        bar.close()
        if scheduler is not None and scheduler_per_epoch:
            scheduler.step()
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in metrics.items()}}
        if validate is not None:
            for m in modules.values():
                m.eval()
            with torch.no_grad():
                val = float(validate())
            row["val_loss"] = val
            if plateau is None or plateau.improved(val, None if best is None else best["val"]):
                best = {
                    "epoch": epoch + 1,
                    "val": val,
                    "modules": {k: copy.deepcopy(m.state_dict()) for k, m in modules.items()},
                }
            row["best_val_loss"] = best["val"]
            row["best_epoch"] = best["epoch"]
            row["since_best"] = epoch + 1 - best["epoch"]
        rows.append(row)
        epoch += 1
        save_checkpoint(
            directory,
            {
                "epoch": epoch,
                "modules": {k: m.state_dict() for k, m in modules.items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "log": rows,
                "best": best if plateau is not None else None,
            },
        )
        _write_log(log_path, rows)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in rows[-1].items() if k != "epoch")
        log.info(f"{desc} epoch {epoch}/{epochs}: {shown}")
    if plateau is not None and best is not None:
        for k, m in modules.items():
            m.load_state_dict(best["modules"][k])
    for m in modules.values():
        m.eval()
    return rows


def batches(
    n: int, batch_size: int, g: torch.Generator, shuffle: bool = True, drop_last: bool = True
) -> Iterable[torch.Tensor]:
    """Index batches of a seeded permutation."""
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for s in range(0, stop, batch_size):
        yield order[s : s + batch_size]
