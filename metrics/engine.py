"""The one engine every removal-based metric runs on.

Metrics build keep-masks on the device (patch masks (B, M, P) or pixel masks (B, M, H, W)) and
hand them to :func:`removal_probs`, which runs the adapter's removal engine
(:class:`xaibench.engine.RemovalEngine`: the one removal operation, in passes sized by the
adapter's budget; patch masks become pixel masks one pass at a time, so nothing here needs
chunking). It is also where the metrics' mixed-precision setting enters: the adapter the
metrics receive (``EvalContext.adapter``) carries ``metric_amp``, passed to the engine here and
nowhere else, so methods' own calls to the engine never autocast.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from xaibench.removal import Removal


def removal_probs(
    adapter,
    x: torch.Tensor,
    keep: torch.Tensor,
    removal: Removal,
    ids: Sequence[str],
    targets: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Probabilities with the parts outside ``keep`` removed.

    Args:
        x: clean inputs (B, 3, H, W).
        keep: (B, M, P) boolean patch masks or (B, M, H, W) pixel masks.
        removal: the removal operation (its strategy, draws and seed).
        ids: image ids (seed the distractor draws).
        targets: optional (B,) class per image: return (B, M) target probabilities.
    Returns:
        (B, M) if ``targets`` is given, else (B, M, C).
    """
    amp = getattr(adapter, "metric_amp", None)
    return adapter.engine.masked_probs(x, keep, removal, ids=ids, target=targets, amp=amp)
