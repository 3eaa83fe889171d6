"""Exact, batched weighted sampling of patch subsets without replacement (Gumbel-top-k).

Successive sampling — draw a patch with probability ∝ its weight, remove it, repeat — gives
the same subset distribution as keeping the k largest keys log wᵢ + Gᵢ with Gᵢ i.i.d.
standard Gumbel noise (the Gumbel-top-k trick), so a whole batch of subsets is one sort.
Zero-weight patches come last (in a uniformly random order among themselves): they enter a
subset only when k exceeds the number of positive weights. Every draw comes from a generator
seeded by (seed, image id, purpose, k), so an image's subsets do not depend on its batch or on
which other cardinalities are evaluated.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .attribution import minmax
from .seeding import generator


def sampling_weights(phi: torch.Tensor, most_relevant_first: bool = True) -> torch.Tensor:
    """Algorithm 2 of Naouar et al. 2025 (Salvage): w = (φ − min φ)/(max φ − min φ) for R-MIF,
    1 − w for R-LIF; a constant map gives uniform weights. phi (B, P) → (B, P) in [0, 1]."""
    w = minmax(phi)
    if not most_relevant_first:
        w = 1 - w
    constant = phi.max(dim=1, keepdim=True).values == phi.min(dim=1, keepdim=True).values
    return torch.where(constant, torch.ones_like(w), w)


def gumbel_noise(
    ids: Sequence[str],
    ks: Sequence[int],
    n: int,
    p: int,
    seed: int,
    purpose: str,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard Gumbel noise (B, K, n, P), one seeded generator per (image, k)."""
    u = torch.stack(
        [
            torch.stack([torch.rand(n, p, generator=generator(seed, i, purpose, int(k))) for k in ks])
            for i in ids
        ]
    ).to(device)
    tiny = torch.finfo(u.dtype).tiny
    return -torch.log(-torch.log(u.clamp_min(tiny)))


def gumbel_top_k(weights: torch.Tensor, noise: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """The one weighted sampler without replacement: keep masks with, per row of ``noise``
    (..., P), the ``sizes`` (...,) patches with the largest keys log w + G; weights (..., P)
    broadcast against noise. Zero-weight patches come after every positive one, ordered by their
    noise alone (a uniformly random order among themselves, without float offsets that would
    round noise away)."""
    positive = (weights > 0).expand_as(noise)
    logw = torch.where(weights > 0, weights, torch.ones_like(weights)).log()
    keys = torch.where(positive, logw + noise, noise)
    order = keys.argsort(dim=-1, descending=True)
    order = order.gather(
        -1, positive.gather(-1, order).to(torch.uint8).argsort(dim=-1, descending=True, stable=True)
    )
    return order.argsort(dim=-1) < sizes.to(order.device)[..., None]


def subsets_from_keys(weights: torch.Tensor, noise: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Keep masks (B, K, n, P): for each k the k patches with the largest keys log w + G, patches of
    weight 0 after all positive ones. weights (B, P), noise (B, K, n, P), ks (K,)."""
    sizes = ks.to(noise.device)[None, :, None].expand(noise.shape[:-1])
    return gumbel_top_k(weights[:, None, None, :], noise, sizes)


def weighted_subsets(
    weights: torch.Tensor, ks: torch.Tensor, n: int, ids: Sequence[str], seed: int, purpose: str
) -> torch.Tensor:
    """``n`` subsets of each size k in ``ks`` per image, drawn ∝ ``weights`` (B, P) without
    replacement: boolean keep masks (B, K, n, P)."""
    noise = gumbel_noise(ids, ks.tolist(), n, weights.shape[1], seed, purpose, weights.device)
    return subsets_from_keys(weights, noise, ks)
