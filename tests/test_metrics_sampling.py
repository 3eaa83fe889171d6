"""The weighted sampler: exact successive-sampling probabilities (chi-square), zero weights last,
constant maps uniform, seeded and batch-independent."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from xaibench.sampling import gumbel_noise, sampling_weights, subsets_from_keys, weighted_subsets


def successive_subset_probability(w, subset):
    """P(successive sampling ∝ w without replacement yields ``subset``): sum over draw orders."""
    total = 0.0
    for order in itertools.permutations(subset):
        left, p = sum(w), 1.0
        for i in order:
            p *= w[i] / left
            left -= w[i]
        total += p
    return total


def draw(weights, k, n, image_id="img", seed=0):
    w = torch.tensor([weights])
    return weighted_subsets(w, torch.tensor([k]), n, [image_id], seed, "test")[0, 0]  # (n, P)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_subset_frequencies_match_successive_sampling(k):
    w = [0.4, 0.3, 0.2, 0.1]
    n = 20000
    keep = draw(w, k, n)
    assert (keep.sum(1) == k).all()
    subsets = list(itertools.combinations(range(4), k))
    observed = [int((keep == torch.tensor([i in s for i in range(4)])).all(1).sum()) for s in subsets]
    expected = [n * successive_subset_probability(w, s) for s in subsets]
    assert sum(expected) == pytest.approx(n)
    assert chisquare(observed, expected).pvalue > 1e-3
    # inclusion frequencies vs exact inclusion probabilities (within 5 standard errors)
    incl = keep.float().mean(0)
    for i in range(4):
        p = sum(successive_subset_probability(w, s) for s in subsets if i in s)
        assert abs(float(incl[i]) - p) < 5 * (p * (1 - p) / n) ** 0.5 + 1e-9


def test_zero_weights_come_last_uniformly():
    w = [0.5, 0.0, 0.5, 0.0]
    n = 4000
    assert not draw(w, 2, n)[:, [1, 3]].any()  # k ≤ #positive: zeros never drawn
    keep = draw(w, 3, n)
    assert keep[:, [0, 2]].all()
    share = keep[:, 1].float().mean()  # the third patch is a zero-weight one, uniformly
    assert abs(float(share) - 0.5) < 5 * (0.25 / n) ** 0.5


def test_weights_and_constant_map_uniform():
    phi = torch.tensor([[1.0, 3.0, 2.0, 5.0], [2.0, 2.0, 2.0, 2.0]])
    assert torch.allclose(sampling_weights(phi, True)[0], torch.tensor([0.0, 0.5, 0.25, 1.0]))
    assert torch.allclose(sampling_weights(phi, False)[0], torch.tensor([1.0, 0.5, 0.75, 0.0]))
    assert torch.equal(sampling_weights(phi, True)[1], torch.ones(4))
    assert torch.equal(sampling_weights(phi, False)[1], torch.ones(4))
    keep = draw([1.0] * 4, 1, 8000)
    assert chisquare(keep.sum(0).tolist(), [2000] * 4).pvalue > 1e-3


def test_seeded_and_independent_of_batch_and_grid():
    w = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    ids = ["a", "b", "c"]
    ks = torch.tensor([2, 5, 9])
    full = weighted_subsets(w, ks, 6, ids, 1, "r_mif")
    assert torch.equal(full, weighted_subsets(w, ks, 6, ids, 1, "r_mif"))
    one = weighted_subsets(w[1:2], torch.tensor([5]), 6, ["b"], 1, "r_mif")
    assert torch.equal(one[0, 0], full[1, 1])
    assert not torch.equal(full, weighted_subsets(w, ks, 6, ids, 2, "r_mif"))
    noise = gumbel_noise(ids, [2], 6, 16, 1, "r_mif")
    assert torch.equal(subsets_from_keys(w, noise, torch.tensor([2])), full[:, :1])
