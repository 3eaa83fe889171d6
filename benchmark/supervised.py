"""Supervised training of classifiers, shared by the embedded recipes and timm fine-tuning.

Both train with cross-entropy and random patch removal as augmentation (so that the classifier
behaves sensibly on inputs with parts removed, which every removal metric feeds it): the first
``removal_fraction`` of each batch has a random subset of patches removed, one subset size
k ~ U(1, P) per step. Each epoch's batches, flips and removed subsets come from the epoch's
seeded generator (see :func:`xaibench.training.train_epochs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .adapter import ModelAdapter
from .loading import load_batches
from .removal import Removal
from .training import batches, train_epochs


def random_keep(n: int, num_patches: int, g: torch.Generator) -> torch.Tensor:
    """One random patch subset per row, all of one size k ~ U(1, P) (so tokens can be gathered)."""
    k = int(torch.randint(1, num_patches + 1, (1,), generator=g))
    idx = torch.rand(n, num_patches, generator=g).argsort(1)[:, :k]
    return torch.zeros(n, num_patches, dtype=torch.bool).scatter_(1, idx, True)


def removal_augmented_step(
    adapter: ModelAdapter, x, y, removal: Removal, removal_fraction: float, g: torch.Generator, opt, sched
) -> Tuple[float, torch.Tensor]:
    """One optimiser step of cross-entropy, the first ``removal_fraction`` of the batch with a
    random patch subset removed. Returns the loss and the logits."""
    n_mask = int(round(removal_fraction * len(x)))
    logits = adapter.logits(x[n_mask:])
    if n_mask:
        keep = random_keep(n_mask, adapter.num_patches, g).to(x.device)
        logits = torch.cat([adapter.masked_logits(x[:n_mask], keep, removal), logits])
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach()), logits.detach()


def supervised_epoch(
    adapter: ModelAdapter, split, *, batch_size: int, g: torch.Generator, opt, sched, removal: Removal,
    removal_fraction: float, flip: bool, bar,
) -> Dict[str, float]:  # fmt: skip
    """One epoch over an in-memory split (``split.images`` uint8, ``split.labels``)."""
    total = hits = seen = clean = 0.0
    for idx in batches(len(split), batch_size, g):
        x = adapter.normalize(split.images[idx].float() / 255.0)
        y = split.labels[idx].to(adapter.device)
        if flip:
            flips = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flips.to(x.device)[:, None, None, None], x.flip(3), x)
        loss, logits = removal_augmented_step(adapter, x, y, removal, removal_fraction, g, opt, sched)
        n_mask = int(round(removal_fraction * len(idx)))
        total += loss * len(idx)
        seen += len(idx)
        hits += int((logits[n_mask:].argmax(1) == y[n_mask:]).sum())
        clean += len(idx) - n_mask
        bar.step(loss)
    return {
        "loss": total / max(1, seen),
        "train_acc_clean": hits / max(1, clean),
        "lr": sched.get_last_lr()[-1],
    }


def accuracy(adapter: ModelAdapter, split, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``adapter`` on the readable images of ``split``."""
    correct = seen = 0
    groups = [range(s, min(len(split), s + batch_size)) for s in range(0, len(split), batch_size)]
    with torch.no_grad():
        for samples in load_batches(split, groups):
            if not samples:
                continue
            x = adapter.normalize(torch.stack([smp.image for smp in samples]))
            y = torch.tensor([smp.label for smp in samples], device=adapter.device)
            correct += int((adapter.logits(x).argmax(1) == y).sum())
            seen += len(samples)
    return correct / max(1, seen)


def fit_classifier(
    directory: Path, adapter: ModelAdapter, train, val, *, opt, sched, epochs: int, batch_size: int,
    seed: int, removal: Removal, removal_fraction: float, flip: bool, desc: str,
    before_epoch: Optional[Callable[[], None]] = None,
) -> List[Dict[str, float]]:  # fmt: skip
    """Train ``adapter.model`` on the in-memory split ``train`` for ``epochs`` (resumable, through
    :func:`~xaibench.training.train_epochs`; the scheduler steps per batch), with the validation
    accuracy on ``val`` after each epoch; ``before_epoch`` sets module modes (e.g. head only)."""
    model = adapter.model

    def run_epoch(epoch: int, g: torch.Generator, bar) -> Dict[str, float]:
        if before_epoch is not None:
            before_epoch()
        row = supervised_epoch(
            adapter, train, batch_size=batch_size, g=g, opt=opt, sched=sched, removal=removal,
            removal_fraction=removal_fraction, flip=flip, bar=bar,
        )  # fmt: skip
        model.eval()
        return {**row, "val_acc": accuracy(adapter, val, batch_size)}

    steps = max(1, len(train) // batch_size)
    return train_epochs(
        directory, {"model": model}, opt, epochs, run_epoch, steps, seed=seed, scheduler=sched,
        scheduler_per_epoch=False, desc=desc,
    )  # fmt: skip
