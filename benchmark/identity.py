"""A run's identity: everything its numbers depend on, as one JSON document.

Two runs with the same identity produce the same scores. It holds the resolved settings, the
dataset's identity (name, split, options, a content fingerprint of the split and the exact ids
of the scored images; the training split's fingerprint when training images are used), the
model's identity (its weights' content hash, output subset, input normalisation), the removal
operation, and a hash of the source of the whole installed package and of the plugin modules.
The default run id and every finished part's key are derived from it, so nothing is reused
after the data, the weights, a setting or the code changed.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Iterable, List

from .context import RunContext
from .io import content_hash, stable_hash, weights_fingerprint
from .spec import RunSpec

_PACKAGES = ("xaibench", "xaibench.methods", "xaibench.metrics")


def source_fingerprint(plugins: Iterable[str] = ()) -> str:
    """sha256 over the ``.py`` files of the installed xaibench package and of the plugin modules."""
    files: List[Path] = []
    for name in _PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent
        files += sorted(root.rglob("*.py"))
    for module in plugins:
        if module.endswith(".py") or os.sep in module:  # a plugin given as a file
            files.append(Path(module).expanduser())
            continue
        mod = sys.modules.get(module) or importlib.import_module(module)
        if getattr(mod, "__file__", None):
            files.append(Path(mod.__file__))
    seen = {}
    for f in files:
        seen.setdefault(str(f.resolve()), content_hash(f))
    return stable_hash(sorted(seen.items()), 16)


def model_identity(adapter) -> dict:
    return {
        "name": adapter.name,
        "weights_sha256": weights_fingerprint(adapter.model),
        "class_indices": None if adapter.class_indices is None else adapter.class_indices.tolist(),
        "input_size": list(adapter.input_size),
        "mean": adapter.mean.flatten().tolist(),
        "std": adapter.std.flatten().tolist(),
    }


def dataset_identity(ctx: RunContext, with_train: bool) -> dict:
    data = ctx.data
    ids = [data.image_id(i) for i in ctx.indices]
    out = {
        "name": data.name,
        "split": data.split,
        "options": getattr(data, "options", {}),
        "fingerprint": data.fingerprint(),
        "image_ids_sha256": stable_hash(ids, 16),
        "n_images": len(ids),
    }
    if with_train:
        out["train_fingerprint"] = ctx.split("train").fingerprint()
    return out


def run_identity(spec: RunSpec, ctx: RunContext, with_train: bool) -> dict:
    return {
        "settings": spec.numbers(),
        "dataset": dataset_identity(ctx, with_train),
        "model": model_identity(ctx.adapter),
        "removal": ctx.removal.settings(),
        "source_sha256": source_fingerprint(spec.plugins),
    }


def differences(old: dict, new: dict, prefix: str = "") -> List[str]:
    """``path: old → new`` for every leaf that differs between two identity documents."""
    out: List[str] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: {_short(a)} → {_short(b)}")
    return out


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "…"
