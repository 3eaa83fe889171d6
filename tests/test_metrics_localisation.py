"""RMA, RRA, PxAP, IoU-AUC and MI: hand-computed cases, sklearn, oracle maps, NaN rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xaibench.attribution import Attribution
from xaibench.metrics import Batch, EvalContext, create_metric
from xaibench.metrics.information import binned_mutual_information
from xaibench.metrics.iou import iou_curve
from xaibench.metrics.localisation import relevance_mass_accuracy, relevance_rank_accuracy
from xaibench.metrics.pxap import pxap_from_histograms, pxap_histograms
from xaibench.removal import Removal


def t(values, dtype=torch.float32):
    return torch.tensor([values], dtype=dtype)


def test_rma_hand_computed_and_nan_rules():
    maps = t([2.0, -1.0, 1.0, 0.0])
    mask = t([1, 0, 0, 1], torch.bool)
    assert float(relevance_mass_accuracy(maps, mask)[0]) == pytest.approx(2 / 3)
    # negative relevance inside the mask does not count; only R+ enters numerator and denominator
    assert float(relevance_mass_accuracy(t([-5.0, 1.0, 3.0, 0.0]), mask)[0]) == pytest.approx(0.0)
    assert math.isnan(float(relevance_mass_accuracy(t([-1.0, -2.0, 0.0, -3.0]), mask)[0]))  # Σ R+ = 0
    assert math.isnan(float(relevance_mass_accuracy(maps, t([0, 0, 0, 0], torch.bool))[0]))  # empty mask


def test_rra_hand_computed_with_ties():
    mask = t([1, 1, 0, 0, 0], torch.bool)
    # K = 2; one pixel above the 2nd value (in the mask), three tied at it (one in the mask):
    # expected share (1 + 1·1/3)/2
    assert float(relevance_rank_accuracy(t([3.0, 1.0, 1.0, 1.0, 0.0]), mask)[0]) == pytest.approx(2 / 3)
    assert float(relevance_rank_accuracy(t([3.0, 2.0, 1.0, 1.0, 0.0]), mask)[0]) == pytest.approx(1.0)
    assert float(relevance_rank_accuracy(t([0.0, 0.0, 5.0, 4.0, 0.0]), mask)[0]) == pytest.approx(0.0)
    # all tied: share of the mask among all pixels = 2/5
    assert float(relevance_rank_accuracy(t([1.0] * 5), mask)[0]) == pytest.approx(2 / 5)
    assert math.isnan(float(relevance_rank_accuracy(t([1.0] * 5), t([0] * 5, torch.bool))[0]))


def test_rra_equals_mean_over_tie_orders_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        maps = torch.randint(0, 3, (1, 6), generator=g).float()
        mask = torch.rand(1, 6, generator=g) > 0.5
        if not mask.any():
            continue
        K = int(mask.sum())
        # brute force: average over every permutation-based tie break (sorted by value, then random order)
        import itertools

        total = count = 0
        for perm in itertools.permutations(range(6)):
            order = sorted(range(6), key=lambda i: (-float(maps[0, i]), perm.index(i)))
            total += sum(bool(mask[0, i]) for i in order[:K]) / K
            count += 1
        assert float(relevance_rank_accuracy(maps, mask)[0]) == pytest.approx(total / count, abs=1e-6)


def test_pxap_three_pixel_example_by_hand():
    # scores after min-max: [1, 0.5, 0]; mask [1, 0, 1].
    # thresholds high→low: at 1.0: TP 1, FP 0 (P 1, R 1/2); at 0.5: TP 1, FP 1 (P 1/2, R 1/2);
    # at 0: TP 2, FP 1 (P 2/3, R 1). AP = 1·1/2 + 1/2·0 + 2/3·1/2 = 5/6.
    states = pxap_histograms(t([4.0, 3.0, 2.0]), t([1, 0, 1], torch.bool))
    assert states.shape == (1, 2 * 1002)  # 1000 thresholds + the bins [1, 2) and [2, 3]
    assert pxap_from_histograms(states) == pytest.approx(100 * 5 / 6)
    # dataset level: states add up across images (two copies give the same AP; a perfect image raises it)
    assert pxap_from_histograms(torch.cat([states, states])) == pytest.approx(100 * 5 / 6)
    perfect = pxap_histograms(t([1.0, 0.0, 1.0]), t([1, 0, 1], torch.bool))
    # pooled: at 1.0 TP 3 FP 0 (P 1, R 3/4); at 0.5 TP 3 FP 1; at 0 TP 4 FP 2 (P 2/3, R 1)
    assert pxap_from_histograms(torch.cat([states, perfect])) == pytest.approx(100 * (3 / 4 + 2 / 3 * 1 / 4))
    # a constant map: every pixel at threshold 0: precision = mask share
    assert pxap_from_histograms(pxap_histograms(t([7.0] * 3), t([1, 0, 1], torch.bool))) == pytest.approx(
        100 * 2 / 3
    )


def wsol_pxap(maps: np.ndarray, masks: np.ndarray, interval: float = 0.001) -> float:
    """Choe et al.'s PxAP procedure (wsolevaluation ``MaskEvaluator``), written plainly: min-max
    normalise each map; histogram mask and background scores with numpy on the edges
    arange(0, 1, interval) + [1, 2, 3]; TP/FP from the reversed cumulative sums; AP =
    Σ precision[1:]·diff(recall) over the edges with TP + FP ≠ 0."""
    edges = np.append(np.arange(0, 1, interval), [1.0, 2.0, 3.0])
    pos = np.zeros(len(edges) - 1)
    neg = np.zeros(len(edges) - 1)
    for m, gt in zip(maps, masks):
        m = m.astype(np.float32)
        span = m.max() - m.min()
        s = (m - m.min()) / span if span > 0 else np.zeros_like(m)
        pos += np.histogram(s[gt], bins=edges)[0]
        neg += np.histogram(s[~gt], bins=edges)[0]
    tp, fp = pos[::-1].cumsum(), neg[::-1].cumsum()
    nonzero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / pos.sum()
    return float(100 * (precision[1:] * np.diff(recall))[nonzero[1:]].sum())


def floor_binned_pxap(maps: np.ndarray, masks: np.ndarray, T: int = 1000) -> float:
    """The previous binning: bin ⌊s·T⌋ with s = 1.0 merged into the last bin [(T−1)/T, 1]."""
    pos, neg = np.zeros(T), np.zeros(T)
    for m, gt in zip(maps, masks):
        m = m.astype(np.float32)
        s = (m - m.min()) / (m.max() - m.min())
        b = np.minimum(np.floor(s * T), T - 1).astype(int)
        pos += np.bincount(b[gt], minlength=T)
        neg += np.bincount(b[~gt], minlength=T)
    tp, fp = pos[::-1].cumsum(), neg[::-1].cumsum()
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0)
    recall = tp / pos.sum()
    return float(100 * (precision * np.diff(recall, prepend=0)).sum())


def _ours(maps: np.ndarray, masks: np.ndarray) -> float:
    return pxap_from_histograms(pxap_histograms(torch.from_numpy(maps), torch.from_numpy(masks)))


def test_pxap_equals_wsolevaluation_procedure_on_random_maps():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 400)) < np.linspace(0.1, 0.6, 400)
    maps = [
        rng.random((6, 400)),  # continuous
        rng.integers(0, 5, (6, 400)),  # heavy ties, many exact 1.0 after min-max
        np.repeat(rng.random((6, 25)), 16, axis=1),  # patch maps upsampled: blocks of equal values
        rng.integers(0, 1001, (6, 400)) / 1000.0,  # scores on the thresholds themselves
        rng.random((6, 400)) ** 8 + masks * 0.3,  # informative, skewed
    ]
    for m in maps:
        m = m.astype(np.float32)
        assert _ours(m, masks) == pytest.approx(wsol_pxap(m, masks), rel=1e-12)
    m = rng.random((6, 400)).astype(np.float32)
    m[2] = 3.0  # a constant map: all its pixels score 0
    assert _ours(m, masks) == pytest.approx(wsol_pxap(m, masks), rel=1e-12)
    assert _ours(m[:, :50], masks[:, :50]) == pytest.approx(wsol_pxap(m[:, :50], masks[:, :50]), rel=1e-12)


def test_pxap_gives_exact_maxima_their_own_bin():
    """Half the object at the map's maximum (score exactly 1.0), as many background pixels just
    below it in [0.999, 1), the rest at 0. wsolevaluation: at 1.0 precision 1, recall 1/2; at
    0.999 nothing new is found; at 0 precision 200/1100: AP = 1/2 + 1/2·2/11 = 59.09. Merging 1.0
    into [0.999, 1) reports precision 1/2 at recall 1/2: 34.09."""
    mask = np.zeros(1100, dtype=bool)
    mask[:200] = True
    m = np.zeros(1100, dtype=np.float32)
    m[:100] = 1.0
    m[200:300] = 0.9995
    maps, masks = m[None], mask[None]
    expected = 100 * (0.5 + 0.5 * 200 / 1100)
    assert wsol_pxap(maps, masks) == pytest.approx(expected)
    assert _ours(maps, masks) == pytest.approx(expected, rel=1e-12)
    assert floor_binned_pxap(maps, masks) == pytest.approx(100 * (0.25 + 0.5 * 200 / 1100))
    assert _ours(maps, masks) - floor_binned_pxap(maps, masks) == pytest.approx(25.0)


def test_iou_curve_hand_computed():
    taus, iou = iou_curve(t([1.0, 0.5, 0.0]), t([1, 1, 0], torch.bool), 100)
    assert torch.allclose(iou[0, :50], torch.ones(50))  # S > τ for τ < 0.5: {0, 1} = mask
    assert torch.allclose(iou[0, 50:], torch.full((50,), 0.5))
    assert float(iou.mean()) == pytest.approx(0.75)
    assert torch.isnan(iou_curve(t([1.0, 0.0]), t([0, 0], torch.bool))[1]).all()


def test_mutual_information_matches_sklearn():
    from sklearn.metrics import mutual_info_score

    g = torch.Generator().manual_seed(3)
    maps = torch.randn(6, 400, generator=g) * torch.linspace(0.1, 3, 400)
    masks = torch.rand(6, 400, generator=g) < torch.linspace(0.1, 0.9, 400)
    maps[5] = 2.0  # constant map → MI 0
    mi = binned_mutual_information(maps, masks, 20)
    for i in range(6):
        a = maps[i].abs().numpy().astype(np.float64)
        s = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.zeros_like(a)
        bins = np.minimum(np.floor(s * 20), 19).astype(int)
        assert float(mi[i]) == pytest.approx(mutual_info_score(masks[i].numpy(), bins), abs=1e-6)
    assert float(mi[5]) == 0.0


def make_mask_batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, size - 10, (2,), generator=g).tolist()
        masks[i, r : r + 6 + i, c : c + 8] = True
    x = torch.randn(n, 3, size, size, generator=g)
    probs = torch.softmax(torch.randn(n, 10, generator=g), 1)
    return Batch(
        x=x,
        labels=probs.argmax(1),
        targets=probs.argmax(1),
        ids=[f"m{i}" for i in range(n)],
        probs=probs,
        masks=masks,
    )


def test_oracle_scores_100_and_registered_metadata(tiny_vit):
    batch = make_mask_batch()
    ctx = EvalContext(tiny_vit, Removal("drop"))
    oracle = Attribution(batch.masks.float(), "pixel")
    res = create_metric("rma").compute(ctx, batch, oracle)
    assert torch.allclose(res.scores["rma"], torch.full((4,), 100.0))
    assert torch.allclose(res.scores["rra"], torch.full((4,), 100.0))
    metric = create_metric("pxap")
    assert metric.dataset_level
    assert metric.aggregate("pxap", metric.compute(ctx, batch, oracle).states["pxap"]) == pytest.approx(100.0)
    iou = create_metric("iou_auc").compute(ctx, batch, oracle)
    assert torch.allclose(iou.scores["iou_auc"], torch.full((4,), 100.0))
    assert create_metric("rma").applies(tiny_vit, has_masks=False) is not None
    assert create_metric("srg").applies(tiny_vit, has_masks=False) is None


def test_random_maps_are_near_chance():
    """A uniform random map: RMA ≈ RRA ≈ PxAP ≈ mask share, MI ≈ 0."""
    batch = make_mask_batch(n=8)
    g = torch.Generator().manual_seed(1)
    rnd = Attribution(torch.rand(8, 32, 32, generator=g), "pixel")
    share = float(batch.masks.float().mean()) * 100
    rr = create_metric("rma").compute(None, batch, rnd).scores
    assert abs(float(rr["rma"].mean()) - share) < 3
    assert abs(float(rr["rra"].mean()) - share) < 4
    pm = create_metric("pxap")
    assert abs(pm.aggregate("pxap", pm.compute(None, batch, rnd).states["pxap"]) - share) < 3
    assert float(create_metric("mi").compute(None, batch, rnd).scores["mi"].mean()) < 0.02
