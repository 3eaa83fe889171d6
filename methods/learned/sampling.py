"""Mask samplers of the learned explainers (all draws from a given seeded generator).

- :func:`shapley_kernel_masks`: the paired sampler of FastSHAP / ViT-Shapley (Covert et al. 2023):
  subset size k ∈ {1, …, P−1} with probability ∝ 1 / (k (P − k)) (the Shapley kernel), a uniformly
  random subset of that size, and its complement N∖S next to it (paired sampling).
- :func:`guided_masks`: Salvage's attribution-guided sampler (salvage-paper Appendix A.2,
  Algorithm 3): half of the subsets draw their patches with the min-max normalised attribution
  φ_norm of the target class as weights, half with 1 − φ_norm; each subset has a size
  m ~ U{1, …, P} and its patches are drawn without replacement (successive draws ∝ weight among
  the patches left). A draw is a *kept* subset S (the S of u(S) and v(S)).
- :func:`shapley_weight_masks`: the salvage paper's random distribution p_w(S) ∝ w_S (§3.1, §4.1),
  w_S = |S|! (P − |S| − 1)! / P! the weight of S in the Shapley value: every subset with |S| ≤ P − 1
  has probability ∝ w_S, so the size k ∈ {0, …, P−1} has probability ∝ C(P, k) w_k = 1 / (P − k)
  and the subset of that size is uniform (not paired). Salvage's unguided ablation.
- :func:`uniform_size_masks`: size m ~ U{0, …, P}, uniform subset (surrogate training).

Weighted sampling without replacement is exact and batched: Gumbel-top-m on log w. Where the
weights leave fewer positive-weight patches than m (φ_norm is 0 at the minimum patch), the
zero-weight patches are taken last, in uniformly random order — Algorithm 3 leaves this case open;
this is our documented choice. A constant map gives uniform weights.

Masks are boolean (n, M, P): True = the patch is kept.
"""

from __future__ import annotations

import torch

from xaibench.sampling import gumbel_top_k, sampling_weights


def shapley_kernel_sizes(num_patches: int) -> torch.Tensor:
    """Probabilities (P−1,) of the subset sizes k = 1..P−1 under the Shapley kernel."""
    k = torch.arange(1, num_patches, dtype=torch.float64)
    w = 1.0 / (k * (num_patches - k))
    return w / w.sum()


def _first_k(keys: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Boolean masks keeping, per row, the ``sizes`` entries with the largest keys."""
    rank = keys.argsort(-1, descending=True).argsort(-1)
    return rank < sizes[..., None]


def shapley_kernel_masks(n: int, num_masks: int, num_patches: int, g: torch.Generator) -> torch.Tensor:
    """(n, M, P) paired masks: M/2 subsets from the Shapley kernel, each followed by its complement."""
    if num_masks % 2:
        raise ValueError(f"paired sampling needs an even number of masks, got {num_masks}")
    if num_patches < 2:
        raise ValueError("the Shapley kernel needs at least 2 patches")
    half = num_masks // 2
    sizes = (
        torch.multinomial(
            shapley_kernel_sizes(num_patches).float().expand(n * half, -1), 1, replacement=True, generator=g
        ).view(n, half)
        + 1
    )
    keys = torch.rand(n, half, num_patches, generator=g)
    s = _first_k(keys, sizes)
    return torch.stack([s, ~s], dim=2).view(n, num_masks, num_patches)


def shapley_weight_sizes(num_patches: int) -> torch.Tensor:
    """Probabilities (P,) of the sizes k = 0..P−1 under p_w(S) ∝ w_S: ∝ 1 / (P − k)."""
    k = torch.arange(0, num_patches, dtype=torch.float64)
    w = 1.0 / (num_patches - k)
    return w / w.sum()


def shapley_weight_masks(n: int, num_masks: int, num_patches: int, g: torch.Generator) -> torch.Tensor:
    """(n, M, P) kept subsets drawn from p_w(S) ∝ w_S (sizes 0..P−1 with probability ∝ 1/(P − k))."""
    sizes = torch.multinomial(
        shapley_weight_sizes(num_patches).float().expand(n * num_masks, -1), 1, replacement=True, generator=g
    ).view(n, num_masks)
    return _first_k(torch.rand(n, num_masks, num_patches, generator=g), sizes)


def uniform_size_masks(
    n: int, num_masks: int, num_patches: int, g: torch.Generator, min_size: int = 0
) -> torch.Tensor:
    """(n, M, P) masks with size m ~ U{min_size, …, P} and a uniformly random subset of that size."""
    sizes = torch.randint(min_size, num_patches + 1, (n, num_masks), generator=g)
    return _first_k(torch.rand(n, num_masks, num_patches, generator=g), sizes)


def weighted_subsets(weights: torch.Tensor, sizes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Subsets of ``sizes`` (...,) patches drawn without replacement ∝ ``weights`` (..., P) ≥ 0."""
    u = torch.rand(weights.shape, generator=g).clamp_(1e-12, 1.0 - 1e-7).to(weights.device)
    return gumbel_top_k(weights, -torch.log(-torch.log(u)), sizes)


def guided_masks(phi: torch.Tensor, num_masks: int, g: torch.Generator) -> torch.Tensor:
    """Algorithm 3: (n, M, P) masks from the attributions ``phi`` (n, P) of the target class.

    The first ⌈M/2⌉ subsets use φ_norm as weights, the other ⌊M/2⌋ use 1 − φ_norm; every size is
    m ~ U{1, …, P}."""
    n, P = phi.shape
    w = sampling_weights(phi.detach().float())
    first = (num_masks + 1) // 2
    weights = torch.cat([w[:, None].expand(n, first, P), (1 - w)[:, None].expand(n, num_masks - first, P)], 1)
    sizes = torch.randint(1, P + 1, (n, num_masks), generator=g)
    return weighted_subsets(weights, sizes, g)
