"""Curve metrics (MIF/LIF/SRG, R-MIF/R-LIF/R-SRG, fidelity, completeness/soundness) against plain
references written straightforwardly here: per image, per k, one mask at a time, Python loops."""

from __future__ import annotations

import pytest
import torch

from xaibench.attribution import Attribution
from xaibench.metrics import Batch, EvalContext, create_metric
from xaibench.removal import Removal
from xaibench.sampling import gumbel_noise, sampling_weights
from xaibench.seeding import generator

IDS = ["im0", "im1", "im2"]


def make_batch(adapter, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, *adapter.input_size, generator=g)
    with torch.no_grad():
        probs = adapter.probs(x).float()
    labels = torch.randint(0, probs.shape[1], (n,), generator=g)
    masks = torch.rand(n, *adapter.input_size, generator=g) > 0.6
    return Batch(
        x=x,
        labels=labels,
        targets=probs.argmax(1),
        ids=[f"im{i}" for i in range(n)],
        probs=probs,
        masks=masks,
    )


def make_removal(strategy):
    pool = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    return Removal(strategy, n_draws=2, seed=3, distractors=pool if strategy == "distractor" else None), pool


def patch_attribution(n, ties=True, seed=2):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, 4, 4, generator=g)
    if ties:  # a few exact ties so that the seeded tie-break matters
        maps[:, 0, :2] = 0.5
        maps[:, 3, 1:] = -0.25
    return Attribution(maps, "patch")


def one_mask_prob(adapter, batch, i, keep, removal, target):
    """Target probability of image i with one keep mask (patch (P,) or pixel (H, W))."""
    p = adapter.masked_probs(batch.x[i : i + 1], keep[None, None], removal, ids=[batch.ids[i]])
    return float(p[0, 0, int(target)])


def plain_order(values, image_id, seed, purpose, descending):
    """Indices sorted by value, equal values in the order of the image's seeded permutation."""
    perm = torch.randperm(len(values), generator=generator(seed, image_id, purpose)).tolist()
    pos = {idx: j for j, idx in enumerate(perm)}
    sign = -1 if descending else 1
    return sorted(range(len(values)), key=lambda idx: (sign * float(values[idx]), pos[idx]))


def model_for(strategy, tiny_vit, tiny_cnn):
    """Both architectures are covered across the strategies: the ViT for drop and mean, the CNN otherwise."""
    return tiny_vit if strategy in ("drop", "mean") else tiny_cnn


@pytest.mark.parametrize("strategy", ["drop", "mean", "blur", "distractor"])
def test_mif_lif_equal_plain_reference(strategy, tiny_vit, tiny_cnn):
    removal, pool = make_removal(strategy)
    for adapter in [model_for(strategy, tiny_vit, tiny_cnn)]:
        batch = make_batch(adapter, n=2)
        attr = patch_attribution(len(batch))
        ctx = EvalContext(adapter, removal, seed=5)
        res = create_metric("srg").compute(ctx, batch, attr)
        P = adapter.num_patches
        scores = attr.patch_scores(adapter.grid)
        for i in range(len(batch)):
            ref = {}
            for name, desc in (("mif", True), ("lif", False)):
                order = plain_order(scores[i].tolist(), batch.ids[i], 5, "tie-break", desc)
                vals = []
                for k in range(1, P + 1):
                    keep = torch.zeros(P, dtype=torch.bool)
                    keep[order[:k]] = True
                    vals.append(one_mask_prob(adapter, batch, i, keep, removal, batch.targets[i]))
                ref[name] = 100 * sum(vals) / P
                assert torch.allclose(res.curves[name][1][i] / 100, torch.tensor(vals), atol=1e-6)
            assert abs(float(res.scores["mif"][i]) - ref["mif"]) < 1e-4
            assert abs(float(res.scores["lif"][i]) - ref["lif"]) < 1e-4
            assert abs(float(res.scores["srg"][i]) - (ref["mif"] - ref["lif"])) < 1e-4


def plain_weighted_subset(weights, noise_row, k):
    """Successive sampling realised by Gumbel keys: positive weights by log w + G, zeros after by G."""
    pos = [j for j in range(len(weights)) if weights[j] > 0]
    zero = [j for j in range(len(weights)) if weights[j] <= 0]
    import math

    pos.sort(key=lambda j: -(math.log(weights[j]) + float(noise_row[j])))
    zero.sort(key=lambda j: -float(noise_row[j]))
    return (pos + zero)[:k]


@pytest.mark.parametrize("strategy", ["drop", "mean", "blur", "distractor"])
def test_relative_metrics_equal_plain_reference(strategy, tiny_vit, tiny_cnn):
    removal, _ = make_removal(strategy)
    adapter = model_for(strategy, tiny_vit, tiny_cnn)
    batch = make_batch(adapter)
    attr = patch_attribution(len(batch))
    attr.maps[1] = 0.3  # a constant map: uniform weights for both R-MIF and R-LIF
    ks = [1, 6, 16]
    n_masks = 3
    ctx = EvalContext(adapter, removal, seed=4, cardinalities=ks, n_masks=n_masks)
    res = create_metric("r_srg").compute(ctx, batch, attr)
    P = adapter.num_patches
    phi = attr.patch_scores(adapter.grid)
    for i in range(len(batch)):
        lo, hi = float(phi[i].min()), float(phi[i].max())
        for name, most in (("r_mif", True), ("r_lif", False)):
            if hi > lo:
                w = [(float(v) - lo) / (hi - lo) for v in phi[i]]
                w = w if most else [1 - v for v in w]
            else:
                w = [1.0] * P
            assert torch.allclose(sampling_weights(phi[i : i + 1], most)[0], torch.tensor(w), atol=1e-6)
            curve = []
            for k in ks:
                if k == P:
                    curve.append(
                        one_mask_prob(
                            adapter, batch, i, torch.ones(P, dtype=torch.bool), removal, batch.targets[i]
                        )
                    )
                    continue
                noise = gumbel_noise([batch.ids[i]], [k], n_masks, P, 4, name)[0, 0]
                vals = []
                for j in range(n_masks):
                    keep = torch.zeros(P, dtype=torch.bool)
                    keep[plain_weighted_subset(w, noise[j], k)] = True
                    assert int(keep.sum()) == k
                    vals.append(one_mask_prob(adapter, batch, i, keep, removal, batch.targets[i]))
                curve.append(sum(vals) / n_masks)
            assert torch.allclose(res.curves[name][1][i] / 100, torch.tensor(curve), atol=1e-6), (name, i)
            assert abs(float(res.scores[name][i]) - 100 * sum(curve) / len(curve)) < 1e-4
    assert torch.allclose(res.scores["r_srg"], res.scores["r_mif"] - res.scores["r_lif"])


def test_per_image_results_independent_of_batch(tiny_vit):
    """Splitting or reordering the batch changes no image's scores (all seeds are per image)."""
    removal, _ = make_removal("drop")
    batch = make_batch(tiny_vit, n=4)
    attr = patch_attribution(4)
    ctx = EvalContext(tiny_vit, removal, seed=0, cardinalities=5, n_masks=4)

    def sub(idx):
        b = Batch(
            x=batch.x[idx],
            labels=batch.labels[idx],
            targets=batch.targets[idx],
            ids=[batch.ids[i] for i in idx],
            probs=batch.probs[idx],
            masks=batch.masks[idx],
        )
        return b, attr.index(idx)

    for name in ("srg", "r_srg", "fidelity"):
        metric = create_metric(name)
        full = metric.compute(ctx, batch, attr).scores
        for idx in ([3, 1], [0, 2], [2]):
            b, a = sub(torch.tensor(idx))
            part = metric.compute(ctx, b, a).scores
            for key in full:
                assert torch.allclose(part[key], full[key][idx], atol=1e-4), (name, key, idx)


@pytest.mark.parametrize("strategy", ["drop", "mean", "blur", "distractor"])
def test_fidelity_equals_plain_reference(strategy, tiny_vit, tiny_cnn):
    removal, _ = make_removal(strategy)
    adapter = model_for(strategy, tiny_vit, tiny_cnn)
    batch = make_batch(adapter, n=2)
    attr = patch_attribution(len(batch))
    ctx = EvalContext(adapter, removal, seed=9)
    fractions = (0.05, 0.1, 0.2, 0.5)
    res = create_metric("fidelity", fractions=fractions).compute(ctx, batch, attr)
    assert set(res.scores) == {"fidelity_05", "fidelity_10", "fidelity_20", "fidelity_50"}
    if strategy == "drop":
        values = attr.patch_scores(adapter.grid)
    else:
        values = attr.to_pixels(adapter.input_size).flatten(1)
    n = values.shape[1]
    for i in range(len(batch)):
        order = plain_order(values[i].tolist(), batch.ids[i], 9, "fidelity", True)
        for f in fractions:
            keep = torch.ones(n, dtype=torch.bool)
            keep[order[: round(f * n)]] = False
            if strategy != "drop":
                keep = keep.view(adapter.input_size)
            p = adapter.masked_probs(batch.x[i : i + 1], keep[None, None], removal, ids=[batch.ids[i]])[0, 0]
            expected = 100.0 * float(int(p.argmax()) == int(batch.labels[i]))
            assert float(res.scores[f"fidelity_{round(100 * f):02d}"][i]) == expected


@pytest.mark.parametrize("strategy", ["distractor", "mean"])
def test_completeness_soundness_equal_plain_reference(strategy, tiny_cnn):
    adapter = tiny_cnn
    batch = make_batch(adapter, n=2)
    pool = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    ctx = EvalContext(adapter, Removal("drop" if adapter.is_vit else "mean"), seed=2, distractors=pool)

    def explain(targets):
        explain.calls += 1
        out = torch.stack(
            [
                torch.rand(32, 32, generator=generator(0, "map", i, int(t)))
                for i, t in enumerate(targets.tolist())
            ]
        )
        return Attribution(out, "pixel")

    explain.calls = 0
    attribution = explain(batch.targets)
    metric = create_metric("completeness", removal=strategy, n_draws=3, eps1=0.0, eps2=0.1, labels="worst")
    res = metric.compute(ctx, batch, attribution, explain)
    assert explain.calls == 2  # the top label reuses the run's map; the second label is explained
    mean_rule = create_metric("completeness", removal=strategy, n_draws=3, labels="mean").compute(
        ctx, batch, attribution, explain
    )
    removal = Removal(strategy, n_draws=3, seed=2, distractors=pool if strategy == "distractor" else None)
    fractions = (0.2, 0.3, 0.4, 0.5, 0.6)
    for i in range(len(batch)):
        p_sorted = sorted(batch.probs[i].tolist(), reverse=True)
        a1 = int(batch.probs[i].argmax())
        a2 = int(batch.probs[i].topk(2).indices[1])
        comp, sound, raw = [], [], []
        for a, p_a in ((a1, p_sorted[0]), (a2, p_sorted[1])):
            m = torch.rand(32, 32, generator=generator(0, "map", i, a)).flatten()
            order = plain_order(m.tolist(), batch.ids[i], 2, "completeness", True)
            g = []
            for s in fractions:
                keep = torch.zeros(32 * 32, dtype=torch.bool)
                keep[order[: round(s * 32 * 32)]] = True
                g.append(one_mask_prob(adapter, batch, i, keep.view(32, 32), removal, a))
            score = sum(g) / len(g)
            raw.append(score)
            comp.append(score >= p_a)
            sound.append(score <= 1.1 * p_a)
        assert abs(float(res.scores["cs_score_a1"][i]) - raw[0]) < 1e-6
        assert abs(float(res.scores["cs_score_a2"][i]) - raw[1]) < 1e-6
        assert float(res.scores["completeness"][i]) == float(all(comp))
        assert float(res.scores["soundness"][i]) == float(all(sound))
        assert float(mean_rule.scores["completeness"][i]) == sum(comp) / 2
        assert float(mean_rule.scores["soundness"][i]) == sum(sound) / 2


def test_completeness_worst_case_rule_on_constructed_scores(monkeypatch, tiny_cnn):
    """score(x, a) set by hand per image and label (p_a1 = 0.6, p_a2 = 0.3; complete: score ≥ p_a,
    sound: score ≤ 1.1·p_a). The default rule is the appendix's worst case over {a1, a2}: an image
    is complete (sound) only if both labels are. Each row below breaks a different wrong rule
    (a1 only, a2 only, either label, the mean)."""
    import xaibench.metrics.completeness as cs

    rows = [  # score a1, score a2 → worst-case completeness, soundness; mean-rule completeness, soundness
        (0.6, 0.2, 0, 1, 0.5, 1.0),  # a1 complete (at equality) and sound; a2 incomplete
        (0.7, 0.3, 1, 0, 1.0, 0.5),  # a1 unsound; a2 complete and sound
        (0.5, 0.4, 0, 0, 0.5, 0.5),  # a1 incomplete, a2 unsound: fails both, yet the mean sums to 1
        (0.62, 0.31, 1, 1, 1.0, 1.0),
        (0.7, 0.5, 1, 0, 1.0, 0.0),
    ]
    n = len(rows)
    probs = torch.zeros(n, 10)
    probs[:, 0], probs[:, 1], probs[:, 2] = 0.6, 0.3, 0.1
    batch = Batch(
        x=torch.zeros(n, 3, 32, 32),
        labels=torch.zeros(n, dtype=torch.long),
        targets=torch.zeros(n, dtype=torch.long),
        ids=[f"c{i}" for i in range(n)],
        probs=probs,
        masks=None,
    )
    table = torch.tensor([[r[0], r[1]] for r in rows])

    def scores(adapter, x, maps, targets, ids, removal, fractions, seed):
        assert set(targets.tolist()) <= {0, 1}
        score = table[torch.arange(n), targets]
        return score, score[:, None].expand(-1, len(fractions))

    monkeypatch.setattr(cs, "top_fraction_scores", scores)
    pool = torch.zeros(2, 3, 32, 32)
    ctx = EvalContext(tiny_cnn, Removal("mean"), seed=0, distractors=pool)
    attr = Attribution(torch.rand(n, 32, 32, generator=torch.Generator().manual_seed(0)), "pixel")
    assert create_metric("completeness").settings()["labels"] == "worst"
    worst = create_metric("completeness").compute(ctx, batch, attr, lambda t: attr).scores
    mean = create_metric("completeness", labels="mean").compute(ctx, batch, attr, lambda t: attr).scores
    assert worst["completeness"].tolist() == [float(r[2]) for r in rows]
    assert worst["soundness"].tolist() == [float(r[3]) for r in rows]
    assert mean["completeness"].tolist() == [r[4] for r in rows]
    assert mean["soundness"].tolist() == [r[5] for r in rows]
    # the raw per-label scores are reported under either rule
    for res in (worst, mean):
        assert torch.equal(res["cs_score_a1"], table[:, 0]) and torch.equal(res["cs_score_a2"], table[:, 1])
    # with ε1 = 0 every label is complete or sound: the per-label mean sums to ≥ 1 for every image,
    # the worst case does not
    assert ((mean["completeness"] + mean["soundness"]) >= 1).all()
    assert float(worst["completeness"][2] + worst["soundness"][2]) == 0.0
    with pytest.raises(Exception, match="labels rule"):
        create_metric("completeness", labels="best").compute(ctx, batch, attr, lambda t: attr)


def test_quick_preset_and_run_overrides(tiny_vit):
    m = create_metric("r_srg", preset="quick")
    assert m.settings()["n_masks"] == 2 and m.settings()["cardinalities"] == 6
    assert create_metric("r_srg").settings()["n_masks"] == 128
    ctx = EvalContext(tiny_vit, Removal("drop"), cardinalities=[2, 16])
    assert ctx.ks(16, 8).tolist() == [2, 16]
    assert EvalContext(tiny_vit, Removal("drop")).ks(16, 8).tolist()[0] == 1
    assert EvalContext(tiny_vit, Removal("drop")).ks(16, 8).tolist()[-1] == 16
    assert EvalContext(tiny_vit, Removal("drop")).ks(16).tolist() == list(range(1, 17))


def test_completeness_needs_a_pool_and_valid_removal(tiny_vit):
    from xaibench.errors import UserError

    batch = make_batch(tiny_vit)
    attr = patch_attribution(3)
    with pytest.raises(UserError, match="pool"):
        create_metric("completeness").compute(
            EvalContext(tiny_vit, Removal("drop")), batch, attr, lambda t: attr
        )
    with pytest.raises(UserError, match="drop"):
        create_metric("completeness", removal="drop").compute(
            EvalContext(tiny_vit, Removal("drop")), batch, attr, lambda t: attr
        )
    with pytest.raises(UserError, match="pixel"):
        create_metric("fidelity", unit="pixel").compute(EvalContext(tiny_vit, Removal("drop")), batch, attr)
