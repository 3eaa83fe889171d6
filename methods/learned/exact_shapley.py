"""Exact Shapley values of a small game by enumeration (the ground truth of the learned explainers).

A game over P players is given as a table ``values`` (2^P, ...) indexed by the bitmask of the
coalition (bit i set = player i present). φ_i = Σ_{S ⊆ N∖{i}} |S|!(P−|S|−1)!/P! · (v(S∪{i}) − v(S)).
For image models the players are patches and v(S) the (log-)probability of the input with only
the patches in S kept (:func:`removal_game`). Feasible up to P ≈ 20.
"""

from __future__ import annotations

import math

import torch


def coalition_masks(num_players: int, device=None) -> torch.Tensor:
    """(2^P, P) boolean masks; row s holds the bits of s (player i present iff bit i is set)."""
    s = torch.arange(2**num_players, device=device)
    return ((s[:, None] >> torch.arange(num_players, device=device)) & 1).bool()


def exact_shapley(values: torch.Tensor) -> torch.Tensor:
    """Shapley values (P, ...) of the game ``values`` (2^P, ...), computed in float64."""
    n = values.shape[0]
    P = n.bit_length() - 1
    if 2**P != n:
        raise ValueError(f"the game table needs 2^P rows, got {n}")
    v = values.double()
    s = torch.arange(n, device=values.device)
    size = coalition_masks(P, values.device).sum(1)
    weight = torch.tensor(
        [
            math.factorial(k) * math.factorial(P - k - 1) / math.factorial(P) if k < P else 0.0
            for k in range(P + 1)
        ],
        dtype=torch.float64,
        device=values.device,
    )
    out = []
    for i in range(P):
        without = s[(s >> i) & 1 == 0]
        w = weight[size[without]].view(-1, *([1] * (v.ndim - 1)))
        out.append((w * (v[without | (1 << i)] - v[without])).sum(0))
    return torch.stack(out)


def removal_game(adapter, x: torch.Tensor, removal="drop", chunk: int = 4096) -> torch.Tensor:
    """Class probabilities (B, 2^P, C) of every coalition of patches, for images ``x`` (B, 3, H, W)."""
    P = adapter.num_patches
    masks = coalition_masks(P, x.device)
    parts = [
        adapter.masked_probs(x, masks[s : s + chunk][None].expand(len(x), -1, -1), removal)
        for s in range(0, len(masks), chunk)
    ]
    return torch.cat(parts, 1)
