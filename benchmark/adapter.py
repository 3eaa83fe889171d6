"""ModelAdapter: wraps a classifier once and answers everything the harness and methods ask.

Introspection (ViT or CNN, patch grid, prefix tokens, attention modules, GradCAM layer)
happens here, once. Inputs are always in the model's normalised input space; use
:meth:`ModelAdapter.normalize` on images in [0, 1]. The adapter is assembled from three parts:
the wrapping itself (:class:`ModelAdapter`: normalisation, outputs, description), what methods
read inside the model (:class:`ModelInternals`: ViT tokens, attention maps, GradCAM layer), and
the entry points of the removal operation (:class:`RemovalAccess`: ``masked_probs``,
``masked_logits``, the pass size), which the adapter's :class:`~xaibench.engine.RemovalEngine`
runs in passes sized by its :class:`~xaibench.budget.Budget`.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .budget import Budget
from .engine import RemovalEngine, check_amp
from .errors import UserError
from .removal import Removal


def _is_timm_vit(model: nn.Module) -> bool:
    return all(
        hasattr(model, a)
        for a in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head", "num_prefix_tokens")
    )


@dataclass
class AttentionRecord:
    """Attention probabilities (B, heads, T, T) per block index, and their gradients when asked."""

    maps: Dict[int, torch.Tensor] = field(default_factory=dict)
    grads: Dict[int, torch.Tensor] = field(default_factory=dict)

    def ordered(self, which: str = "maps") -> List[torch.Tensor]:
        d = getattr(self, which)
        return [d[i] for i in sorted(d)]


class ModelInternals:
    """What methods read inside the model: token embeddings and sequences of a ViT, attention
    maps per block, GradCAM's layer and reshape. Part of :class:`ModelAdapter` (which provides
    ``model``, ``name``, ``is_vit``, ``grid``, ``num_prefix_tokens`` and ``_select``)."""

    def vit_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings with position, prefix tokens first: (B, prefix + P, D)."""
        m = self.model
        t = m.patch_embed(x)
        if t.ndim == 4 and not getattr(m, "dynamic_img_size", False):
            t = t.flatten(1, 2)  # NHWC patch embeddings; dynamic-size models' _pos_embed wants NHWC
        return m._pos_embed(t)

    def vit_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits from an embedded token sequence (any subset of patch tokens after the prefix)."""
        m = self.model
        t = m.norm_pre(m.patch_drop(tokens))
        t = m.norm(m.blocks(t))
        return self._select(m.forward_head(t))

    def gather_tokens(self, tokens: torch.Tensor, rows: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Prefix tokens plus the kept patch tokens ``kept`` (n, k) of images ``rows`` (n,)."""
        pre = self.num_prefix_tokens
        src = tokens[rows]
        idx = (kept + pre)[..., None].expand(-1, -1, tokens.shape[-1])
        return torch.cat([src[:, :pre], src.gather(1, idx)], dim=1)

    # ---------------------------------------------------------- attention
    def attention_modules(self) -> List[nn.Module]:
        if not self.is_vit:
            raise UserError(f"{self.name} is not a ViT: it has no attention maps")
        mods = [blk.attn for blk in self.model.blocks]
        if not all(hasattr(a, "attn_drop") and hasattr(a, "fused_attn") for a in mods):
            raise UserError(
                f"{self.name}: attention recording supports timm's standard Attention blocks only"
            )
        return mods

    @contextlib.contextmanager
    def record_attention(self, grad: bool = False):
        """Within the block, forwards store each block's attention probabilities (B, heads, T, T)
        in ``record.maps[block_index]`` (fused attention switched off), and with ``grad=True``
        backward passes store their gradients in ``record.grads[block_index]``."""
        mods = self.attention_modules()
        record = AttentionRecord()
        saved = [a.fused_attn for a in mods]
        handles = []

        def make_hook(i):
            def hook(_module, inputs, _out):
                attn = inputs[0]
                record.maps[i] = attn
                if grad and attn.requires_grad:
                    attn.register_hook(lambda g: record.grads.__setitem__(i, g))

            return hook

        try:
            for i, a in enumerate(mods):
                a.fused_attn = False
                handles.append(a.attn_drop.register_forward_hook(make_hook(i)))
            yield record
        finally:
            for h in handles:
                h.remove()
            for a, f in zip(mods, saved):
                a.fused_attn = f

    def attention_mask_forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits with removed patch tokens masked out of every attention (keys), prefix kept.

        The reference for ``drop``: for CLS-token models both give the same output."""
        B, P = keep.shape
        allowed = torch.cat(
            [torch.ones(B, self.num_prefix_tokens, dtype=torch.bool, device=keep.device), keep], 1
        )
        mask = allowed[:, None, None, :].expand(-1, 1, allowed.shape[1], -1)
        return self._select(self.model(x, attn_mask=mask))

    # ---------------------------------------------------------- GradCAM
    def gradcam_target_layers(self) -> List[nn.Module]:
        if self.is_vit:
            return [self.model.blocks[-1].norm1]
        info = getattr(self.model, "feature_info", None)
        if info is not None:
            name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
            return [self.model.get_submodule(name)]
        for attr in ("layer4", "stages", "features"):
            mod = getattr(self.model, attr, None)
            if mod is not None:
                return [mod[-1] if isinstance(mod, nn.Sequential) else mod]
        raise UserError(f"cannot find the last convolutional stage of {self.name} for GradCAM")

    def gradcam_reshape_transform(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        if not self.is_vit:
            return None
        pre, (gh, gw) = self.num_prefix_tokens, self.grid

        def reshape(t: torch.Tensor) -> torch.Tensor:
            return t[:, pre:].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

        return reshape


class RemovalAccess:
    """The removal operation's entry points and the patch grid it works on. Part of
    :class:`ModelAdapter` (which provides ``engine``, ``budget``, ``grid``, ``patch_size`` and
    ``input_size``); the operation itself is :class:`~xaibench.engine.RemovalEngine`."""

    def patch_keep_to_pixels(self, keep: torch.Tensor) -> torch.Tensor:
        """(..., P) patch mask → (..., H, W) pixel mask (each patch's value over its cells)."""
        lead = keep.shape[:-1]
        grid = keep.reshape(-1, 1, *self.grid)
        ph, pw = self.patch_size
        if (self.grid[0] * ph, self.grid[1] * pw) == self.input_size:
            pix = grid.repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3)
        else:
            dtype = grid.dtype
            pix = torch.nn.functional.interpolate(grid.float(), size=self.input_size, mode="nearest").to(
                dtype
            )
        return pix.reshape(*lead, *self.input_size)

    @property
    def memory_budget_mb(self) -> float:
        return self.budget.megabytes

    @property
    def chunk_size(self) -> int:
        """Inputs per forward pass of the removal engine: the budget's forward rows (calibrated for
        throughput, or the ``--chunk-size`` override set here)."""
        return self.budget.rows()

    @chunk_size.setter
    def chunk_size(self, value: int) -> None:
        if value < 1:
            raise UserError(f"chunk size must be ≥ 1, got {value}")
        self.budget.forward_rows = int(value)

    def masked_probs(
        self,
        x: torch.Tensor,
        keep: torch.Tensor,
        removal: Removal | str = "mean",
        ids: Optional[Sequence[str]] = None,
        target: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Class probabilities of ``x`` with parts removed: (B, M, C), or (B, M) for ``target``
        (no gradients; see :meth:`xaibench.engine.RemovalEngine.masked_probs`)."""
        return self.engine.masked_probs(x, keep, removal, ids=ids, target=target)

    def masked_logits(
        self,
        x: torch.Tensor,
        keep: torch.Tensor,
        removal: Removal | str = "mean",
        fill: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Differentiable logits (n, C) of n masked inputs (see
        :meth:`xaibench.engine.RemovalEngine.masked_logits`)."""
        return self.engine.masked_logits(x, keep, removal, fill)

    def for_metrics(self, amp: Optional[str]) -> "ModelAdapter":
        """This adapter as the metrics see it: the same model, budget and engine, with the metrics'
        autocast setting ``metric_amp`` (read by :func:`xaibench.metrics.engine.removal_probs`
        only, so methods' own calls never autocast). Returns ``self`` when nothing changes."""
        if check_amp(amp) == self.metric_amp:
            return self
        view = copy.copy(self)
        view.metric_amp = amp
        return view


class ModelAdapter(ModelInternals, RemovalAccess):
    """A classifier plus what is needed to explain it.

    Args:
        model: an ``nn.Module`` mapping normalised images (B, 3, H, W) to logits.
        mean, std: per-channel normalisation of the model's inputs.
        input_size: (H, W) the model expects.
        class_indices: optional subset of the model's logits that form the task's classes
            (e.g. the 10 ImageNet classes of Imagenette); all outputs are restricted to it.
        patch_size: size of the removal grid's cells for CNNs (ViTs use their own patches).
        memory_budget_mb: the memory :class:`~xaibench.budget.Budget` of one pass (default: 1 GiB on
            the CPU, a quarter of the free memory on CUDA).
        calibration_dir: where the budget caches its calibrated pass size (None: in this process
            only); see :mod:`xaibench.budget`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: Tuple[int, int],
        class_indices: Optional[Sequence[int]] = None,
        patch_size: Optional[int] = None,
        device: str | torch.device = "cpu",
        name: str = "",
        memory_budget_mb: Optional[float] = None,
        class_names: Optional[Sequence[str]] = None,
        calibration_dir: Optional[str] = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.name = name or type(model).__name__
        self.input_size = tuple(int(s) for s in input_size)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.class_indices = (
            torch.as_tensor(class_indices, dtype=torch.long, device=self.device)
            if class_indices is not None
            else None
        )
        self.class_names = list(class_names) if class_names is not None else None
        self.is_vit = _is_timm_vit(model)
        if self.is_vit:
            self.patch_size = tuple(model.patch_embed.patch_size)
            self.grid = tuple(model.patch_embed.grid_size)
            self.num_prefix_tokens = int(model.num_prefix_tokens)
        else:
            ps = patch_size or (16 if min(self.input_size) >= 128 and min(self.input_size) % 16 == 0 else 8)
            self.patch_size = (ps, ps)
            self.grid = (self.input_size[0] // ps, self.input_size[1] // ps)
            self.num_prefix_tokens = 0
        if min(self.grid) < 1:
            raise UserError(f"patch size {self.patch_size} is larger than the input {self.input_size}")
        self.budget = Budget(
            self.model, self.input_size, self.device, memory_budget_mb, cache_dir=calibration_dir
        )
        self.engine = RemovalEngine(self)
        #: autocast of the metrics' forwards (None, "bf16", "fp16"): set on the copy the metrics
        #: use (:meth:`for_metrics`), never on the adapter methods receive
        self.metric_amp: Optional[str] = None
        self._num_classes: Optional[int] = None

    # ----------------------------------------------------------------- basics
    @property
    def arch(self) -> str:
        return "vit" if self.is_vit else "cnn"

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            with torch.no_grad():
                self._num_classes = self.logits(
                    torch.zeros(1, 3, *self.input_size, device=self.device)
                ).shape[1]
        return self._num_classes

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01.to(self.device) - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.class_indices is None else logits.index_select(1, self.class_indices)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._select(self.model(x))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).softmax(-1)

    def forward_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The logits function as a plain callable (for captum and friends)."""
        return self.logits

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "input_size": list(self.input_size),
            "patch_size": list(self.patch_size),
            "grid": list(self.grid),
            "num_prefix_tokens": self.num_prefix_tokens,
            "num_classes": self.num_classes,
            "class_indices": None if self.class_indices is None else self.class_indices.tolist(),
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }


def same_setting(adapter: ModelAdapter, model: nn.Module, name: str) -> ModelAdapter:
    """A ModelAdapter around ``model`` (a copy or variant of ``adapter.model``) with ``adapter``'s
    preprocessing, classes, removal grid, device and memory budget."""
    out = ModelAdapter(
        model,
        mean=adapter.mean.flatten().tolist(),
        std=adapter.std.flatten().tolist(),
        input_size=adapter.input_size,
        class_indices=None if adapter.class_indices is None else adapter.class_indices.tolist(),
        patch_size=None if adapter.is_vit else adapter.patch_size[0],
        device=adapter.device,
        name=name,
        memory_budget_mb=adapter.memory_budget_mb,
        class_names=adapter.class_names,
    )
    out.budget.forward_rows = adapter.budget.forward_rows
    return out
