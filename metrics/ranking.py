"""Ranking helpers shared by the metrics: seeded tie-breaking, keep-first masks, min-max.

Ties are broken by a random permutation seeded by (seed, image id, purpose), so an image's
ranking does not depend on its batch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from xaibench.seeding import generator


def seeded_permutations(
    ids: Sequence[str], n: int, seed: int, purpose: str, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """One random permutation of ``n`` per image id: (B, n) long."""
    return torch.stack([torch.randperm(n, generator=generator(seed, i, purpose)) for i in ids]).to(device)


def ranked_order(
    scores: torch.Tensor, ids: Sequence[str], seed: int, descending: bool, purpose: str = "tie-break"
) -> torch.Tensor:
    """Indices (B, n) sorting ``scores`` (B, n); equal scores in a random order seeded per image."""
    perm = seeded_permutations(ids, scores.shape[1], seed, purpose, scores.device)
    order = scores.gather(1, perm).argsort(dim=1, descending=descending, stable=True)
    return perm.gather(1, order)


def keep_first(order: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Keep masks (B, K, n): for each k in ``ks``, the first k entries of ``order`` (B, n)."""
    rank = order.argsort(dim=1)
    return rank[:, None, :] < ks.to(order.device)[None, :, None]


def pixel_maps(attribution, size) -> torch.Tensor:
    """(B, H·W) pixel-level map: patch maps upsampled (nearest), pixel maps resized if needed."""
    return attribution.to_pixels(tuple(size)).flatten(1)
