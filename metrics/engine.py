"""The one engine every removal-based metric runs on.

Metrics build keep-masks on the device (patch masks (B, M, P) or pixel masks (B, M, H, W)) and
hand them to :func:`removal_probs`, which calls :meth:`ModelAdapter.masked_probs` (the one
removal operation) in chunks along M so that the pixel masks and filled inputs of one call
stay within a memory budget. ``drop`` needs only the patch masks and the adapter already
groups them by cardinality (compute ∝ kept tokens), so it runs in one call.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from xaibench.removal import Removal

#: bound on the elements of the pixel keep-masks materialised by one ``masked_probs`` call
PIXEL_MASK_BUDGET = 2**24


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
    B, M = keep.shape[:2]
    if removal.strategy == "drop" or M == 0:
        return adapter.masked_probs(x, keep, removal, ids=ids, target=targets)
    pixels = B * adapter.input_size[0] * adapter.input_size[1] * removal.draws
    step = max(1, PIXEL_MASK_BUDGET // pixels)
    parts = [
        adapter.masked_probs(x, keep[:, s : s + step], removal, ids=ids, target=targets)
        for s in range(0, M, step)
    ]
    return torch.cat(parts, dim=1)
