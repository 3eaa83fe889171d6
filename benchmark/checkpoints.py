"""Local checkpoints: reading a state dict from any common file layout, and loading it strictly.

:func:`read_state_dict` reads ``.safetensors`` files and ``torch.save`` files (with
``weights_only=True``: tensors and plain data only, never code) and unwraps the usual wrappers
(``{"state_dict": …}``, ``{"model": …}``, our own training checkpoints, ``module.`` prefixes).
:func:`load_state` loads it into a model and turns every mismatch into one readable line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn

from .errors import UserError
from .io import load_torch

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "ema", "state_dict_ema")


def read_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    """Tensors of a local checkpoint (``.safetensors`` or a weights-only ``torch.save`` file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:
            raise UserError(f"--weights {path}: not a readable safetensors file ({exc})") from exc
    else:
        try:
            state = load_torch(path)
        except Exception as exc:
            raise UserError(
                f"--weights {path}: cannot be loaded with weights_only=True ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); save a plain state dict "
                f"(torch.save(model.state_dict(), PATH)) or a .safetensors file"
            ) from exc
    # unwrap {"state_dict": {...}}, {"model": {...}}, and our own training checkpoints
    # {"modules": {"model": ...}}
    for _ in range(3):
        if isinstance(state, dict) and isinstance(state.get("modules"), dict) and "model" in state["modules"]:
            state = state["modules"]["model"]
        inner = next(
            (state[k] for k in _WRAPPER_KEYS if isinstance(state, dict) and isinstance(state.get(k), dict)),
            None,
        )
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"--weights {path}: expected a state dict of tensors")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _names(keys) -> str:
    keys = list(keys)
    return f"{len(keys)} ({', '.join(keys[:3])}{'…' if len(keys) > 3 else ''})"


def load_state(model: nn.Module, state: Dict[str, torch.Tensor], source: str, what: str, hint: str) -> None:
    """Load ``state`` into ``model`` strictly; any mismatch is a one-line :class:`UserError`
    naming ``source``, the ``what`` it was loaded into and a ``hint`` on how to fix it."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        details = [f"{_names(missing)} missing keys", f"{_names(unexpected)} unexpected"]
        if shapes:
            k = shapes[0]
            details.append(
                f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} "
                f"instead of {tuple(own[k].shape)})"
            )
        raise UserError(f"{source} does not fit {what}: {', '.join(details)}; {hint}")
    model.load_state_dict(state)
