"""Dataset registry: ``load_dataset(name, split, ...)`` returns a :class:`DatasetSplit`.

A dataset is registered as a factory ``f(split, *, seed, cache_dir, data_root, **options)``
that returns a :class:`DatasetSplit`; unknown options are ignored by the factory.
"""

from __future__ import annotations

from ..errors import UserError
from ..registry import DATASETS
from .base import DatasetSplit, Sample, TensorSplit

register_dataset = DATASETS.register

SPLITS = ("train", "val", "test")


def load_dataset(name: str, split: str = "test", **options) -> DatasetSplit:
    factory = DATASETS.get(name)
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'. Valid splits: {', '.join(SPLITS)}")
    return factory(split, **options)


def list_datasets(pattern: str = "*"):
    return DATASETS.names(pattern)


from . import (  # noqa: E402,F401  (real datasets: download or --data-root)
    imagenette,
    mura,
    pets,
    synthetic,  # noqa: E402,F401  (registers the embedded default)
)

__all__ = ["DatasetSplit", "Sample", "TensorSplit", "register_dataset", "load_dataset", "list_datasets"]
