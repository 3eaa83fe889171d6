"""Mask samplers and exact Shapley values of the learned explainers, against plain references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from xaibench.methods.learned.exact_shapley import coalition_masks, exact_shapley
from xaibench.methods.learned.sampling import guided_masks, shapley_kernel_masks, shapley_kernel_sizes
from xaibench.sampling import sampling_weights as minmax


def sequential_draw_probability(weights, subset):
    """P(the first |subset| draws of sequential weighted sampling without replacement = subset), any order.
    Zero-weight items are drawn last, uniformly (the sampler's documented rule)."""
    total = 0.0
    for order in itertools.permutations(subset):
        left, p = list(range(len(weights))), 1.0
        for item in order:
            mass = sum(weights[j] for j in left)
            p *= weights[item] / mass if mass > 0 else 1.0 / len(left)
            left.remove(item)
        total += p
    return total


def algorithm3_frequencies(weights):
    """Subset → probability under Algorithm 3's recipe: size m ~ U{1..P}, then sequential draws ∝ weights."""
    P = len(weights)
    return {
        s: sequential_draw_probability(weights, s) / P
        for m in range(1, P + 1)
        for s in itertools.combinations(range(P), m)
    }


def empirical(masks):
    counts = {}
    for row in masks.tolist():
        key = tuple(i for i, k in enumerate(row) if k)
        counts[key] = counts.get(key, 0) + 1
    return {k: v / len(masks) for k, v in counts.items()}


def test_guided_sampler_matches_algorithm3_on_four_patches():
    phi = torch.tensor([[1.0, 2.0, 3.0, 5.0]])  # φ_norm = (0, .25, .5, 1)
    n = 20000
    masks = guided_masks(phi.expand(n, 4), 2, torch.Generator().manual_seed(0))
    assert masks.shape == (n, 2, 4) and masks.dtype == torch.bool
    w = minmax(phi)[0].tolist()
    assert w == [0.0, 0.25, 0.5, 1.0]
    for half, weights in ((0, w), (1, [1 - v for v in w])):
        expected = algorithm3_frequencies(weights)
        assert abs(sum(expected.values()) - 1) < 1e-12
        got = empirical(masks[:, half])
        assert set(got) <= set(expected)
        for s, p in expected.items():
            sd = math.sqrt(p * (1 - p) / n)
            assert abs(got.get(s, 0.0) - p) <= 4.5 * sd + 1e-4, (half, s, got.get(s), p)


def test_guided_sampler_constant_map_is_uniform_and_sizes_uniform():
    n = 12000
    masks = guided_masks(torch.zeros(n, 4), 2, torch.Generator().manual_seed(1))
    sizes = masks.sum(-1).flatten()
    for m in range(1, 5):
        assert abs(float((sizes == m).float().mean()) - 0.25) < 0.02
    per_patch = masks[masks.sum(-1) == 2].float().mean(0)
    assert torch.allclose(per_patch, torch.full((4,), 0.5), atol=0.03)


def test_guided_sampler_is_seeded():
    phi = torch.randn(5, 9)
    a = guided_masks(phi, 8, torch.Generator().manual_seed(3))
    b = guided_masks(phi, 8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_shapley_kernel_masks_are_paired_and_follow_the_kernel():
    P, n = 6, 4000
    masks = shapley_kernel_masks(n, 4, P, torch.Generator().manual_seed(0))
    assert torch.equal(masks[:, 1], ~masks[:, 0]) and torch.equal(masks[:, 3], ~masks[:, 2])
    sizes = masks[:, ::2].sum(-1).flatten()
    expected = shapley_kernel_sizes(P)
    k = torch.arange(1, P, dtype=torch.float64)
    assert torch.allclose(expected, (1 / (k * (P - k))) / (1 / (k * (P - k))).sum(), atol=1e-12)
    for j, p in zip(range(1, P), expected.tolist()):
        sd = math.sqrt(p * (1 - p) / len(sizes))
        assert abs(float((sizes == j).float().mean()) - p) < 4.5 * sd
    with pytest.raises(ValueError):
        shapley_kernel_masks(1, 3, P, torch.Generator())


def permutation_shapley(v, P):
    """Shapley values as the mean marginal contribution over all orderings (plain reference)."""
    phi = torch.zeros(P, dtype=torch.float64)
    perms = list(itertools.permutations(range(P)))
    for order in perms:
        s = 0
        for i in order:
            phi[i] += v[s | (1 << i)] - v[s]
            s |= 1 << i
    return phi / len(perms)


def test_exact_shapley_matches_permutation_reference_and_hand_game():
    P = 4
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2**P, 3, generator=g, dtype=torch.float64)
    phi = exact_shapley(v)
    for c in range(3):
        assert torch.allclose(phi[:, c], permutation_shapley(v[:, c], P), atol=1e-12)
    assert torch.allclose(phi.sum(0), v[-1] - v[0], atol=1e-12)  # efficiency
    # additive game plus an interaction between players 1 and 2 shared equally
    masks = coalition_masks(P).double()
    a = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    game = masks @ a + 3.0 * masks[:, 1] * masks[:, 2]
    assert torch.allclose(exact_shapley(game), a + torch.tensor([0, 1.5, 1.5, 0], dtype=torch.float64))
    with pytest.raises(ValueError):
        exact_shapley(torch.zeros(10))


def test_shapley_weight_masks_follow_p_w():
    """p_w(S) ∝ w_S = |S|!(P−|S|−1)!/P!: size k ∈ {0..P−1} has mass C(P, k)·w_k ∝ 1/(P − k), and
    the subsets of one size are uniform (checked against a plain enumeration for P = 4)."""
    from xaibench.methods.learned.sampling import shapley_weight_masks, shapley_weight_sizes

    P, n = 4, 30000
    w = {k: math.factorial(k) * math.factorial(P - k - 1) / math.factorial(P) for k in range(P)}
    total = sum(w[len(s)] for k in range(P) for s in itertools.combinations(range(P), k))
    expected = {s: w[len(s)] / total for k in range(P) for s in itertools.combinations(range(P), k)}
    k = torch.arange(P, dtype=torch.float64)
    assert torch.allclose(shapley_weight_sizes(P), (1 / (P - k)) / (1 / (P - k)).sum(), atol=1e-12)
    masks = shapley_weight_masks(n // 3, 3, P, torch.Generator().manual_seed(0))
    assert masks.shape == (n // 3, 3, P) and not masks.all(-1).any()  # never the full set
    got = empirical(masks.reshape(-1, P))
    assert set(got) <= set(expected)
    for s, p in expected.items():
        sd = math.sqrt(p * (1 - p) / len(masks.reshape(-1, P)))
        assert abs(got.get(s, 0.0) - p) <= 4.5 * sd + 1e-4, (s, got.get(s), p)
