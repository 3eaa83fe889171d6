"""The one training loop behind every trained artefact (classifiers, surrogates, explainers).

It saves the modules, the optimizer and the scheduler atomically after every epoch, appends a
row to a CSV log next to the checkpoint, shows a progress bar with the loss, and resumes an
interrupted training from its last epoch. Each epoch draws its randomness from generators
seeded by (seed, epoch), so a resumed training ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn

from .io import atomic_write, load_torch, save_torch
from .seeding import derive_seed

#: files of an unfinished training that a rebuild keeps, so that it resumes (checked when read)
RESUMABLE = ("checkpoint.pt", "log.csv")

EpochFn = Callable[[int, torch.Generator, "Progress"], Dict[str, float]]


class Progress:
    """A tqdm bar over one epoch's steps (silent when disabled)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr, dynamic_ncols=True
        )

    def step(self, loss: float | None = None, **extra: float) -> None:
        self.bar.update(1)
        shown = {k: f"{v:.4g}" for k, v in ({"loss": loss} if loss is not None else {}).items()}
        shown.update({k: f"{v:.4g}" for k, v in extra.items()})
        if shown:
            self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _write_log(path: Path, rows: List[Dict[str, float]]) -> None:
    keys: List[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


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
    progress: bool = True,
) -> List[Dict[str, float]]:
    """Run ``run_epoch(epoch, generator, progress)`` for the remaining epochs, checkpointing each.

    ``directory`` holds ``checkpoint.pt`` (the resumable state) and ``log.csv``. The scheduler's
    state is checkpointed; it is stepped once per epoch here unless ``scheduler_per_epoch`` is
    False (then ``run_epoch`` steps it per batch). Returns the
    log rows (one per epoch, with the dict ``run_epoch`` returned plus the epoch number).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ckpt, log_path = directory / "checkpoint.pt", directory / "log.csv"
    rows: List[Dict[str, float]] = []
    start = 0
    if ckpt.exists():
        state = load_torch(ckpt)
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        rows, start = list(state["log"]), int(state["epoch"])
        if progress and start < epochs:
            print(f"{desc}: resuming from epoch {start}/{epochs} ({ckpt})", file=sys.stderr)
    for epoch in range(start, epochs):
        for m in modules.values():
            m.train()
        g = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
        bar = Progress(steps_per_epoch, f"{desc} {epoch + 1}/{epochs}", progress)
        # modules that draw from the global RNG (dropout) get a per-epoch seed without leaking it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "global", epoch))
            metrics = run_epoch(epoch, g, bar)
        bar.close()
        if scheduler is not None and scheduler_per_epoch:
            scheduler.step()
        rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in metrics.items()}})
        save_torch(
            ckpt,
            {
                "epoch": epoch + 1,
                "modules": {k: m.state_dict() for k, m in modules.items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "log": rows,
            },
        )
        _write_log(log_path, rows)
        if progress:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in rows[-1].items() if k != "epoch")
            print(f"{desc} epoch {epoch + 1}/{epochs}: {shown}", file=sys.stderr)
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
