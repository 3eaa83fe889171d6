"""What the learned explainers share: cache keys, cached training, model copies, data access.

A learned artefact (surrogate, explainer, COMET model) lives in
``<cache>/explainers/<kind>-<key>/`` where ``key`` hashes everything that determines its weights:
the dataset, a fingerprint of the classifier's weights, the recipe and the seed (and the key of
the surrogate it was trained against). The directory holds ``checkpoint.pt`` while training
(:func:`xaibench.training.train_epochs`: resumable, atomic per epoch), ``log.csv``, and, once
finished, ``weights.pt`` (loaded with ``weights_only=True``) and ``meta.json``.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from xaibench.adapter import ModelAdapter
from xaibench.io import load_torch, read_json, save_torch, stable_hash, weights_fingerprint, write_json
from xaibench.training import train_epochs


def seeded_init(seed: int, *keys: object, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with the global RNG seeded by (seed, *keys) and restored afterwards, so that a
    freshly initialised module is the same in every run (and in a resumed one)."""
    from xaibench.seeding import derive_seed

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init", *keys))
        return build()


def cache_key(
    kind: str,
    adapter: ModelAdapter,
    recipe: Any,
    seed: int,
    dataset: str = "",
    extra: Optional[Dict[str, Any]] = None,
) -> str:
    """``<kind>-<hash>``: the hash covers dataset, classifier weights, recipe, seed and ``extra``."""
    rec = asdict(recipe) if hasattr(recipe, "__dataclass_fields__") else recipe
    return f"{kind}-" + stable_hash(
        {
            "kind": kind,
            "dataset": dataset,
            "classifier": weights_fingerprint(adapter.model),
            "class_indices": None if adapter.class_indices is None else adapter.class_indices.tolist(),
            "recipe": rec,
            "seed": int(seed),
            "extra": extra or {},
        },
        16,
    )


def dataset_name(ctx, train_split) -> str:
    return str(ctx.key.get("dataset") or getattr(train_split, "name", ""))


def clone_adapter(adapter: ModelAdapter, model: Optional[nn.Module] = None, name: str = "") -> ModelAdapter:
    """A ModelAdapter with the classifier's preprocessing around ``model`` (default: a deep copy)."""
    model = copy.deepcopy(adapter.model) if model is None else model
    return ModelAdapter(
        model,
        mean=adapter.mean.flatten().tolist(),
        std=adapter.std.flatten().tolist(),
        input_size=adapter.input_size,
        class_indices=None if adapter.class_indices is None else adapter.class_indices.tolist(),
        patch_size=None if adapter.is_vit else adapter.patch_size[0],
        device=adapter.device,
        name=name or adapter.name,
        memory_budget_mb=adapter.memory_budget_mb,
        class_names=adapter.class_names,
    )


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


def epoch_batches(n: int, batch_size: int, steps: int, g: torch.Generator):
    """``steps`` index batches of a seeded permutation (wrapping around when steps exceed one pass)."""
    bs = min(batch_size, n)
    order = torch.randperm(n, generator=g)
    for s in range(steps):
        start = (s * bs) % n
        idx = order[start : start + bs]
        if len(idx) < bs:
            idx = torch.cat([idx, order[: bs - len(idx)]])
        yield idx


def train_cached(
    directory: Path,
    modules: Dict[str, nn.Module],
    make_optimizer: Callable[[], torch.optim.Optimizer],
    epochs: int,
    steps: int,
    run_epoch,
    *,
    seed: int,
    desc: str,
    progress: bool,
    meta: Optional[dict] = None,
) -> dict:
    """Load ``weights.pt`` if this artefact was trained before; else train (resuming) and save it.

    Returns the artefact's meta (log, train seconds, cached or not)."""
    directory = Path(directory)
    weights = directory / "weights.pt"
    if weights.exists():
        state = load_torch(weights)
        for k, m in modules.items():
            m.load_state_dict(state[k])
            m.eval()
        info = read_json(directory / "meta.json")
        info["cached"] = True
        return info
    if progress:
        print(f"{desc}: not in the cache, training ({directory})", file=sys.stderr)
    t = time.time()
    log = train_epochs(
        directory,
        modules,
        make_optimizer(),
        epochs,
        run_epoch,
        steps,
        seed=seed,
        desc=desc,
        progress=progress,
    )
    info = {
        "desc": desc,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "train_seconds": round(time.time() - t, 1),
        "log": log,
        **(meta or {}),
    }
    save_torch(weights, {k: m.state_dict() for k, m in modules.items()})
    write_json(directory / "meta.json", info)
    (directory / "checkpoint.pt").unlink(missing_ok=True)
    info["cached"] = False
    return info


@dataclass(frozen=True)
class ExplainerRecipe:
    """How an explainer (ViT-Shapley or Salvage) is trained.

    ``steps_per_epoch = 0`` means one pass over the training split per epoch.
    ``freeze_backbone`` trains only the added block, LayerNorm and MLP (the quick preset's
    budget choice; the papers fine-tune the whole explainer)."""

    epochs: int
    batch_size: int
    masks_per_image: int
    lr: float
    weight_decay: float
    steps_per_epoch: int = 0
    freeze_backbone: bool = False
    mlp_hidden: int = 0  # 0: the backbone's width
    guided: bool = True  # Salvage only: attribution-guided sampling (Algorithm 3)
    version: int = 1

    def steps(self, n_train: int) -> int:
        return self.steps_per_epoch or max(1, n_train // self.batch_size)
