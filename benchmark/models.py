"""Model registry and loading.

Registered models are *recipes*: an architecture plus how to train it on a dataset. They are
trained on first use (with random patch removal as augmentation, so that the classifier
behaves sensibly on masked inputs) and cached under ``<cache>/models/<name>-<hash>/``, where
the hash covers everything that determines the weights (recipe, dataset, seed). Any other
name is looked up in timm (see :func:`load_model`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from . import artifacts
from .adapter import ModelAdapter
from .checkpoints import load_state, read_state_dict
from .datasets import load_dataset
from .errors import UserError, unknown_name
from .io import cache_dir as resolve_cache_dir
from .io import load_torch, read_json, save_torch, stable_hash, weights_fingerprint, write_json
from .pretrained import is_timm_model, load_timm_model
from .registry import DATASETS, MODELS
from .removal import Removal
from .seeding import derive_seed
from .supervised import accuracy, fit_classifier
from .training import RESUMABLE

log = logging.getLogger(__name__)

register_model = MODELS.register


@dataclass(frozen=True)
class ClassifierRecipe:
    """A trainable classifier: architecture arguments and training hyper-parameters."""

    arch: str  # "vit" or "resnet"
    arch_args: Dict[str, Any]
    dataset: str = "synthetic"
    dataset_options: Dict[str, Any] = field(default_factory=dict)
    input_size: Tuple[int, int] = (64, 64)
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    removal_fraction: float = 0.5  # share of each batch trained with random patch removal
    flip: bool = True
    seed: int = 0
    version: int = 2  # bump when the training code changes what it produces

    def build(self, num_classes: int) -> nn.Module:
        if self.arch == "vit":
            from timm.models.vision_transformer import VisionTransformer

            return VisionTransformer(img_size=self.input_size, num_classes=num_classes, **self.arch_args)
        if self.arch == "resnet":
            from timm.models.resnet import BasicBlock, ResNet

            return ResNet(block=BasicBlock, num_classes=num_classes, **self.arch_args)
        raise ValueError(f"unknown architecture {self.arch!r}")

    def removal(self) -> Removal:
        return Removal("drop" if self.arch == "vit" else "mean")


@register_model("xaibench_vit")
def xaibench_vit() -> ClassifierRecipe:
    """Tiny ViT with registers for ``synthetic``: 64×64, patch 8 (64 patches), CLS + 4 registers."""
    return ClassifierRecipe(
        "vit",
        dict(
            patch_size=8,
            embed_dim=128,
            depth=4,
            num_heads=4,
            mlp_ratio=2.0,
            reg_tokens=4,
            no_embed_class=True,
            global_pool="token",
        ),
        epochs=20,
        lr=2e-3,
    )


@register_model("xaibench_resnet")
def xaibench_resnet() -> ClassifierRecipe:
    """Small ResNet (one BasicBlock per stage, 32–256 channels) for CNN-only methods on ``synthetic``."""
    return ClassifierRecipe(
        "resnet",
        dict(layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32),
        epochs=16,
        lr=3e-3,
        weight_decay=1e-4,
    )


# --------------------------------------------------------------------------- training


def _channel_stats(images_u8: torch.Tensor) -> Tuple[list, list]:
    x = images_u8.float() / 255.0
    return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


def train_classifier(recipe: ClassifierRecipe, directory: Path, device: torch.device) -> dict:
    """Train ``recipe`` on its dataset; write ``model.pt`` and ``meta.json`` into ``directory``."""
    opts = dict(recipe.dataset_options, seed=recipe.seed)
    train, val, test = (load_dataset(recipe.dataset, s, **opts) for s in ("train", "val", "test"))
    mean, std = _channel_stats(train.images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(recipe.seed, "classifier-init"))
        model = recipe.build(train.num_classes).to(device)
    adapter = ModelAdapter(model, mean=mean, std=std, input_size=recipe.input_size, device=device)
    removal = recipe.removal()
    steps = len(train) // recipe.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps, pct_start=0.15
    )

    start = time.time()
    fit_classifier(
        directory, adapter, train, val, opt=opt, sched=sched, epochs=recipe.epochs,
        batch_size=recipe.batch_size, seed=recipe.seed, removal=removal,
        removal_fraction=recipe.removal_fraction, flip=recipe.flip, desc=f"training {recipe.arch} classifier",
    )  # fmt: skip
    test_acc = accuracy(adapter, test)
    meta = {
        "recipe": asdict(recipe),
        "mean": mean,
        "std": std,
        "num_classes": train.num_classes,
        "classes": list(train.classes),
        "test_accuracy": test_acc,
        "val_accuracy": accuracy(adapter, val),
        "train_seconds": round(time.time() - start, 1),
        "weights_sha256": weights_fingerprint(model),
    }
    save_torch(directory / "model.pt", model.state_dict())
    write_json(directory / "meta.json", meta)
    (directory / "checkpoint.pt").unlink(missing_ok=True)
    log.info(f"trained {recipe.arch} classifier: test accuracy {test_acc:.2%} → {directory}")
    return meta


# --------------------------------------------------------------------------- loading


def recipe_key(name: str, recipe: ClassifierRecipe) -> str:
    return f"{name}-{stable_hash(asdict(recipe))}"


def load_model(
    name: str,
    *,
    dataset: str = "synthetic",
    device: str | torch.device = "cpu",
    cache_dir: Optional[str] = None,
    weights: Optional[str] = None,
    dataset_options: Optional[dict] = None,
    seed: int = 0,
    data=None,
    data_root: Optional[str] = None,
) -> ModelAdapter:
    """A :class:`ModelAdapter` for a registered recipe (trained and cached on first use), or for
    any other timm model name (pretrained, ``--weights``, or fine-tuned: see :mod:`xaibench.pretrained`;
    ``data`` is the split it will see, loaded here from ``dataset`` when not given)."""
    device = torch.device(device)
    if name.lower() not in MODELS:
        if not is_timm_model(name):
            raise unknown_model(name)
        if data is None:
            data = load_dataset(
                dataset,
                "test",
                seed=seed,
                cache_dir=cache_dir,
                data_root=data_root,
                **(dataset_options or {}),
            )
        return load_timm_model(
            name,
            data=data,
            dataset=dataset,
            device=device,
            weights=weights,
            cache_dir=cache_dir,
        )
    recipe: ClassifierRecipe = MODELS.get(name)()
    if recipe.dataset != dataset:
        raise UserError(
            f"model '{name}' is trained for dataset '{recipe.dataset}', not '{dataset}': "
            f"choose a model for '{dataset}' (xaibench list models, or any timm model name)"
        )
    opts = {k: v for k, v in (dataset_options or {}).items() if k in ("n_train", "n_val", "image_size")}
    if opts or seed:
        from dataclasses import replace

        recipe = replace(recipe, dataset_options={**recipe.dataset_options, **opts}, seed=seed)
    if weights:
        return _recipe_with_weights(name, recipe, weights, device)
    directory = resolve_cache_dir(cache_dir) / "models" / recipe_key(name, recipe)

    def build(d: Path) -> dict:
        log.info(f"model '{name}' is not in the cache: training it once ({d})")
        meta = train_classifier(recipe, d, device)
        return {k: meta[k] for k in ("weights_sha256", "test_accuracy", "val_accuracy")}

    def load(d: Path):
        meta = read_json(d / "meta.json")
        model = recipe.build(meta["num_classes"])
        model.load_state_dict(load_torch(d / "model.pt"))
        if weights_fingerprint(model) != artifacts.meta(d).get("weights_sha256"):
            raise ValueError("the loaded weights differ from those recorded when the model was trained")
        return model, meta

    model, meta = artifacts.cached(
        directory,
        f"model '{name}'",
        build,
        load,
        files=lambda d: ["model.pt", "meta.json"],
        resumable=RESUMABLE,
    )
    adapter = ModelAdapter(
        model,
        mean=meta["mean"],
        std=meta["std"],
        input_size=recipe.input_size,
        device=device,
        name=name,
        class_names=meta["classes"],
    )
    adapter.meta = {
        "source": "xaibench recipe",
        "cache_key": directory.name,
        "weights_sha256": weights_fingerprint(model),
        "test_accuracy": meta["test_accuracy"],
        "train_seconds": meta.get("train_seconds"),
    }
    return adapter


def _recipe_with_weights(
    name: str, recipe: ClassifierRecipe, weights: str, device: torch.device
) -> ModelAdapter:
    """The recipe's architecture with a user's checkpoint (no training; the input normalisation is
    the recipe's, computed from its training data)."""
    train = load_dataset(recipe.dataset, "train", **dict(recipe.dataset_options, seed=recipe.seed))
    mean, std = _channel_stats(train.images)
    model = recipe.build(train.num_classes)
    load_state(
        model,
        read_state_dict(weights),
        f"--weights {weights}",
        f"model '{name}'",
        f"pass a checkpoint of '{name}' ({train.num_classes} classes) or the --model it was saved from",
    )
    adapter = ModelAdapter(
        model,
        mean=mean,
        std=std,
        input_size=recipe.input_size,
        device=device,
        name=name,
        class_names=train.classes,
    )
    adapter.meta = {
        "source": "xaibench recipe architecture, --weights",
        "weights": str(weights),
        "weights_sha256": weights_fingerprint(model),
        "test_accuracy": None,
    }
    return adapter


def unknown_model(name: str) -> UserError:
    err = unknown_name("model", name, MODELS.names())
    return UserError(f"{err}, or any timm model name (timm.list_models())")


def list_models(pattern: str = "*"):
    return MODELS.names(pattern)


def architecture(spec) -> ModelAdapter:
    """An untrained model of ``spec.model`` with its input size and normalisation, for estimating
    costs without data or weights."""
    import timm

    classes = getattr(DATASETS.get(spec.dataset), "classes", None) or range(10)
    if spec.model in MODELS:
        recipe: ClassifierRecipe = MODELS.get(spec.model)()
        model, mean, std, size = recipe.build(len(classes)), [0.5] * 3, [0.25] * 3, recipe.input_size
    else:
        model = timm.create_model(spec.model, pretrained=False)
        config = timm.data.resolve_data_config({}, model=model)
        mean, std, size = config["mean"], config["std"], tuple(config["input_size"][-2:])
    adapter = ModelAdapter(model, mean=mean, std=std, input_size=size, device=spec.device, name=spec.model)
    if spec.chunk_size:
        adapter.chunk_size = spec.chunk_size
    return adapter
