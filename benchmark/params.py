"""Typed, validated hyper-parameters of methods and metrics.

Each method or metric class declares ``Params``, a frozen dataclass whose defaults are the
paper's values, ``__post_init__`` checks the ranges, and ``presets`` maps a preset name to the
fields it changes (data, not code). :func:`build` resolves a preset and user overrides into one
``Params`` instance: unknown names, wrong types and out-of-range values are one-line
:class:`~xaibench.errors.UserError` s raised when the object is created, before any work.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Mapping

from .errors import UserError

#: ``paper``: the papers' settings; ``quick``: small budgets for the embedded default on a CPU;
#: ``fast``: the papers' methods, metrics estimated on cardinality sub-grids with fewer draws
#: (a class does not list ``fast`` when the paper's values serve it)
PRESETS = ("paper", "quick", "fast")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A method or metric without hyper-parameters."""


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """``value`` as the annotated ``kind`` (int, float, bool, str, tuples and Optional of them)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list of values, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UserError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind is str and not isinstance(value, str):
        raise UserError(f"{where} must be a text, got {value!r}")
    return value


def build(
    params: type, presets: Mapping[str, Dict[str, Any]], preset: str, overrides: Dict[str, Any], owner: str
):
    """The ``params`` dataclass with the ``preset``'s values and ``overrides`` applied, checked."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'. Valid presets: {', '.join(PRESETS)}")
    hints = typing.get_type_hints(params)
    names = [f.name for f in dataclasses.fields(params)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UserError(
            f"{owner} has no parameter(s) {', '.join(unknown)}. Valid: {', '.join(names) or '(none)'}"
        )
    values = {**presets.get(preset, {}), **overrides}
    typed = {k: _coerce(v, hints[k], f"{owner}: {k}") for k, v in values.items()}
    try:
        return params(**typed)
    except ValueError as exc:
        raise UserError(f"{owner}: {exc}") from exc


def check(condition: bool, message: str) -> None:
    """For ``__post_init__``: raise ValueError(message) unless ``condition``."""
    if not condition:
        raise ValueError(message)
