"""What a run works on: the scored images, the model, the removal operation and the distractors.

:func:`load_context` builds a :class:`RunContext` from a :class:`~xaibench.spec.RunSpec` (loading
data and model; training the model on first use). Tests build a ``RunContext`` directly from a
split, an adapter and a removal. :func:`batches` turns it into the :class:`~xaibench.batch.Batch`
objects methods and metrics see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .adapter import ModelAdapter
from .batch import Batch
from .datasets import DatasetSplit, load_dataset
from .datasets.folder import attach_preprocessing, read_samples
from .errors import UserError
from .io import cache_path
from .loading import decoded, load_batches
from .models import load_model
from .removal import Removal
from .seeding import generator
from .spec import EMBEDDED_DATASET, RunSpec

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """The loaded ingredients of a run.

    ``indices`` are the positions of the scored images in ``data``; ``load_split(name)`` loads
    another split of the same dataset (training images for learned methods and distractors,
    validation images for early stopping), already prepared for the model.
    """

    data: DatasetSplit
    adapter: ModelAdapter
    removal: Removal
    indices: List[int]
    distractors: Optional[torch.Tensor] = None
    load_split: Optional[Callable[[str], DatasetSplit]] = None
    _splits: Dict[str, DatasetSplit] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> DatasetSplit:
        if name not in self._splits:
            if self.load_split is None:
                raise UserError(f"this run cannot load the '{name}' split of {self.data.name}")
            self._splits[name] = self.load_split(name)
        return self._splits[name]

    def training_split(self, name: str) -> DatasetSplit:
        """A split a training loop revisits every epoch: decoded once and kept in memory when it fits."""
        return decoded(self.split(name))


def distractor_pool(adapter: ModelAdapter, train: DatasetSplit, size: int, seed: int) -> torch.Tensor:
    """A seeded pool of ``size`` normalised training images (distractor removal, mask optimisation)."""
    pick = torch.randperm(len(train), generator=generator(seed, "distractor-pool"))[:size].tolist()
    return adapter.normalize(torch.stack([smp.image for smp in read_samples(train, pick)]))


def balanced_indices(data: DatasetSplit, n: int) -> List[int]:
    """``n`` images of ``data`` taking the classes in turn (each class in the split's own, seeded
    order), in split order: a class-balanced subset that is the same on every machine."""
    if n >= len(data):
        return list(range(len(data)))
    labels = data.labels.tolist() if hasattr(data, "labels") else [data[i].label for i in range(len(data))]
    by_class: Dict[int, List[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: List[int] = []
    for rank in range(max(len(q) for q in queues)):
        chosen += [q[rank] for q in queues if rank < len(q)]
        if len(chosen) >= n:
            break
    return sorted(chosen[:n])


def load_context(spec: RunSpec, needs_train_images: bool) -> RunContext:
    """Load the dataset split and the model of ``spec`` (training the model on first use)."""
    opts = dict(seed=spec.seed, cache_dir=spec.cache_dir, data_root=spec.data_root)
    scored = dict(opts)
    if spec.dataset == EMBEDDED_DATASET and spec.n_images:
        scored[f"n_{spec.split}"] = spec.n_images
    data = load_dataset(spec.dataset, spec.split, **scored)
    adapter = load_model(
        spec.model,
        dataset=spec.dataset,
        device=spec.device,
        cache_dir=spec.cache_dir,
        weights=spec.weights,
        seed=spec.seed,
        data=data,
        data_root=spec.data_root,
    )
    adapter.budget.cache_dir = cache_path(spec.cache_dir) / "calibration"
    attach_preprocessing(data, adapter)  # image files → the model's size and crop, masks alike
    if spec.chunk_size:
        adapter.chunk_size = spec.chunk_size
    if spec.n_images and spec.n_images > len(data):
        log.info(f"scoring all {len(data)} images of the {spec.split} split (fewer than {spec.n_images})")
    indices = balanced_indices(data, spec.n_images) if spec.n_images else list(range(len(data)))

    def load_split(name: str) -> DatasetSplit:
        return attach_preprocessing(load_dataset(spec.dataset, name, **opts), adapter)

    strategy = spec.removal if spec.removal != "auto" else ("drop" if adapter.is_vit else "mean")
    ctx = RunContext(data, adapter, Removal(strategy), indices, load_split=load_split)
    if strategy == "distractor" or needs_train_images:
        ctx.distractors = distractor_pool(adapter, ctx.split("train"), spec.distractor_pool, spec.seed)
    ctx.removal = Removal(
        strategy,
        n_draws=spec.n_draws,
        seed=spec.seed,
        distractors=ctx.distractors if strategy == "distractor" else None,
    )
    return ctx


def n_batches(ctx: RunContext, batch_size: int) -> int:
    return -(-len(ctx.indices) // batch_size)


def batches(
    ctx: RunContext,
    batch_size: int,
    target: str,
    adapter: Optional[ModelAdapter] = None,
    numbers: Optional[Sequence[int]] = None,
) -> Iterator[Tuple[int, Batch]]:
    """(batch number, batch) for the scored images, with clean probabilities and explained targets.

    Batch ``b`` holds images ``indices[b * batch_size : (b + 1) * batch_size]`` whoever scores it,
    so a rank of a sharded run (``numbers``: the batches it scores) sees exactly the batches a
    single process would. ``adapter``: the model whose probabilities and predicted targets the
    batches carry (default: the classifier; a method that explains its own model passes that
    model). Images are decoded ahead of use by worker processes (:mod:`xaibench.loading`);
    unreadable image files are skipped (recorded in ``ctx.data.skipped``)."""
    model = adapter or ctx.adapter
    numbers = list(range(n_batches(ctx, batch_size)) if numbers is None else numbers)
    groups = [ctx.indices[b * batch_size : (b + 1) * batch_size] for b in numbers]
    for b, samples in zip(numbers, load_batches(ctx.data, groups)):
        if not samples:
            continue
        x = ctx.adapter.normalize(torch.stack([smp.image for smp in samples]))
        labels = torch.tensor([smp.label for smp in samples], device=x.device)
        masks = torch.stack([smp.mask for smp in samples]).to(x.device) if ctx.data.has_masks else None
        with torch.no_grad():
            probs = model.probs(x).float()
        targets = probs.argmax(1) if target == "pred" else labels
        yield (
            b,
            Batch(
                x=x, labels=labels, targets=targets, ids=[smp.id for smp in samples], probs=probs, masks=masks
            ),
        )
