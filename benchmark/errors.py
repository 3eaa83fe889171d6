"""Errors caused by what the user asked for.

The CLI prints a :class:`UserError` as one line and exits with code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input: an unknown name, a nonsensical number, missing data, a failing plugin."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UserError:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown {kind} '{name}'.{hint} Valid {kind}s: {', '.join(valid) or '(none)'}")


def check_positive(name: str, value, allow_zero: bool = False):
    """Return ``value`` if it is a positive number (or zero when allowed), else raise."""
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise UserError(f"{name} must be {bound}, got {value}")
    return value
