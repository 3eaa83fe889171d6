"""Training-seed variance: learned explainers scored once per training seed are pooled (mean of
the per-seed means, a two-level bootstrap over seeds and images, Wilcoxon on seed-averaged
images), and runs written before the ``train_seed`` column still load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from test_leaderboard import SumRatio, _row, make_run, register_sum_ratio

from xaibench.errors import UserError
from xaibench.leaderboard import (
    bootstrap_indices,
    bootstrap_mean_ci,
    build_leaderboard,
    load_run,
    pooled_mean_ci,
)
from xaibench.seeding import generator
from xaibench.store import seal_run

N = 60


def _images(seed=0, loc=50.0):
    return np.random.default_rng(seed).normal(loc, 3.0, N)


def test_scores_file_layout_has_train_seed_after_method(tmp_path):
    d = make_run(tmp_path, "r", {"salvage": {"srg": {0: _images(), 1: _images()}}, "a": {"srg": _images()}})
    frame = pd.read_csv(d / "scores.csv", dtype={"image_id": str})
    assert list(frame.columns) == [
        "dataset",
        "model",
        "method",
        "train_seed",
        "image_id",
        "target",
        "metric",
        "value",
    ]
    assert frame.loc[frame["method"] == "a", "train_seed"].isna().all()
    assert set(frame.loc[frame["method"] == "salvage", "train_seed"]) == {0, 1}


def test_seeds_that_disagree_widen_the_interval_around_the_mean_of_seed_means(tmp_path):
    base = _images()
    offsets = {0: 0.0, 1: 10.0, 2: 20.0}  # retraining moves the score far more than the images do
    noise = np.random.default_rng(1)
    by_seed = {s: base + o + noise.normal(0, 0.5, N) for s, o in offsets.items()}
    pooled = _row(
        build_leaderboard(make_run(tmp_path, "r3", {"vit_shapley": {"srg": by_seed}})), "vit_shapley", "srg"
    )
    one = _row(
        build_leaderboard(make_run(tmp_path, "r1", {"vit_shapley": {"srg": {0: by_seed[0]}}})),
        "vit_shapley",
        "srg",
    )

    seed_means = [v.mean() for v in by_seed.values()]
    assert pooled["mean"] == pytest.approx(np.mean(seed_means))
    assert (pooled["n"], pooled["n_nan"], pooled["n_seeds"]) == (N, 0, 3)  # n counts images
    assert pooled["ci_low"] < np.mean(seed_means) < pooled["ci_high"]
    assert pooled["ci_high"] - pooled["ci_low"] > 5 * (one["ci_high"] - one["ci_low"])
    # three seeds 10 apart: drawing three seeds with replacement spreads the replicates over
    # most of [mean(seed 0), mean(seed 2)]; an image-only bootstrap would stay within ±1 of 60
    assert pooled["ci_low"] < seed_means[0] + 5 and pooled["ci_high"] > seed_means[2] - 5
    # the one-seed run is the plain image bootstrap of that seed
    assert one["n_seeds"] == 1
    assert (one["ci_low"], one["ci_high"]) == bootstrap_mean_ci(
        by_seed[0], generator(0, "bootstrap", "vit_shapley", "srg")
    )


def test_identical_seeds_reduce_to_the_image_bootstrap(tmp_path):
    v = _images()
    v[[3, 7]] = np.nan  # NaN images are the same for every seed and left out as before
    seeded = _row(
        build_leaderboard(make_run(tmp_path, "s", {"comet": {"srg": {0: v, 1: v, 2: v}}})), "comet", "srg"
    )
    plain = _row(build_leaderboard(make_run(tmp_path, "p", {"comet": {"srg": v}})), "comet", "srg")
    assert seeded["mean"] == pytest.approx(plain["mean"], rel=1e-12)
    assert seeded["ci_low"] == pytest.approx(plain["ci_low"], rel=1e-12)
    assert seeded["ci_high"] == pytest.approx(plain["ci_high"], rel=1e-12)
    assert (seeded["n"], seeded["n_nan"]) == (plain["n"], plain["n_nan"]) == (N - 2, 2)


def test_pooled_ci_is_the_documented_two_level_bootstrap():
    """Brute force: images drawn once per replicate and shared by the seeds, seeds drawn with
    replacement from their own generator, replicate = mean over drawn seeds of image means."""
    rng = np.random.default_rng(4)
    values = rng.normal(0, 1, (3, 25)) + np.array([[0.0], [2.0], [5.0]])
    values[1, 4] = np.nan  # one seed lacks one image: that seed's mean skips it
    lo, hi = pooled_mean_ci(values, generator(7, "a"), generator(7, "b"), n_boot=500)
    idx = bootstrap_indices(25, generator(7, "a"), 500).numpy()
    draws = torch.randint(3, (500, 3), generator=generator(7, "b")).numpy()
    reps = np.array([np.mean([np.nanmean(values[s, i]) for s in d]) for i, d in zip(idx, draws)])
    assert (lo, hi) == (pytest.approx(np.quantile(reps, 0.025)), pytest.approx(np.quantile(reps, 0.975)))


def test_old_scores_without_the_column_still_load(tmp_path):
    d = make_run(tmp_path, "old", {"a": {"srg": _images()}, "b": {"srg": _images(2)}})
    assert "train_seed" not in pd.read_csv(d / "scores.csv").columns
    t = build_leaderboard(load_run(d))
    assert set(t["n_seeds"]) == {1} and set(t["method"]) == {"a", "b"}
    assert _row(t, "a", "srg")["mean"] == pytest.approx(_images().mean())


def test_untrained_methods_beside_seeded_ones_are_one_realisation(tmp_path):
    d = make_run(
        tmp_path, "r", {"salvage": {"srg": {0: _images(), 5: _images(1)}}, "rise": {"srg": _images(2)}}
    )
    t = build_leaderboard(d)
    assert _row(t, "rise", "srg")["n_seeds"] == 1 and _row(t, "salvage", "srg")["n_seeds"] == 2
    assert _row(t, "rise", "srg")["mean"] == pytest.approx(_images(2).mean())


def test_wilcoxon_uses_the_per_image_mean_over_seeds(tmp_path):
    best = _images(0, 60.0)
    noise = np.random.default_rng(3).normal(0, 4, N)
    other = _images(5, 58.0)
    # seeds far from the best on each image, but their average is the best's value plus a hair
    seeded = {0: best + noise, 1: best - noise + 0.01}
    d = make_run(tmp_path, "r", {"best": {"srg": best}, "trained": {"srg": seeded}, "other": {"srg": other}})
    t = build_leaderboard(d)
    avg = (seeded[0] + seeded[1]) / 2
    assert _row(t, "trained", "srg")["rank"] == 1  # pooled mean = best's + 0.01
    p_best = stats.wilcoxon(avg, best).pvalue
    p_other = stats.wilcoxon(avg, other).pvalue
    assert _row(t, "best", "srg")["p_holm"] == pytest.approx(max(min(1, 2 * min(p_best, p_other)), p_best))
    assert _row(t, "other", "srg")["p_holm"] == pytest.approx(
        min(1, 2 * p_other) if p_other < p_best else max(min(1, 2 * p_best), p_other)
    )


SUM_RATIO_CONFIG = {
    "test_sum_ratio": {"provides": ["test_sum_ratio"], "directions": {"test_sum_ratio": "up"}},
    "srg": {"provides": ["srg"], "directions": {"srg": "up"}},
}


def test_dataset_level_states_per_seed(tmp_path, monkeypatch):
    register_sum_ratio(monkeypatch)
    g = torch.Generator().manual_seed(3)
    totals = torch.randint(5, 20, (30,)).double()
    per_seed = {
        s: torch.stack([(totals * (0.2 + 0.3 * s) * torch.rand(30, generator=g)).round(), totals], 1)
        for s in range(3)
    }
    cfg = SUM_RATIO_CONFIG
    d = make_run(
        tmp_path,
        "r",
        {"salvage": {"srg": {s: np.zeros(30) for s in range(3)}}},
        states={"salvage": {"test_sum_ratio": per_seed}},
        metrics_config=cfg,
    )
    row = _row(build_leaderboard(d), "salvage", "test_sum_ratio")
    ratios = [SumRatio().aggregate("", st) for st in per_seed.values()]
    assert row["mean"] == pytest.approx(np.mean(ratios))
    assert (row["n"], row["n_seeds"], row["kind"]) == (30, 3, "dataset")
    idx = bootstrap_indices(30, generator(0, "bootstrap", "salvage", "test_sum_ratio"))
    draws = torch.randint(
        3, (1000, 3), generator=generator(0, "bootstrap_seeds", "salvage", "test_sum_ratio")
    )
    reps = [
        np.mean([SumRatio().aggregate("", per_seed[s][i]) for s in dr.tolist()]) for i, dr in zip(idx, draws)
    ]
    assert row["ci_low"] == pytest.approx(np.quantile(reps, 0.025))
    assert row["ci_high"] == pytest.approx(np.quantile(reps, 0.975))
    # seeds with different numbers of images cannot share the image draws
    bad = dict(per_seed)
    bad[1] = bad[1][:20]
    d2 = make_run(
        tmp_path,
        "bad",
        {"salvage": {"srg": {s: np.zeros(30) for s in range(3)}}},
        states={"salvage": {"test_sum_ratio": bad}},
        metrics_config=cfg,
    )
    with pytest.raises(UserError, match="different numbers of images"):
        build_leaderboard(d2)


def test_mi_ratio_pools_the_seeds(tmp_path):
    rng = np.random.default_rng(0)
    ig = rng.uniform(0.1, 0.3, 40)
    by_seed = {0: rng.uniform(0.2, 0.5, 40), 1: rng.uniform(0.4, 0.7, 40)}
    d = make_run(tmp_path, "r", {"integrated_gradients": {"mi": ig}, "salvage": {"mi": by_seed}})
    row = _row(build_leaderboard(d), "salvage", "mi_ig")
    assert row["mean"] == pytest.approx(np.mean([v.mean() / ig.mean() for v in by_seed.values()]))
    assert row["ci_low"] < row["mean"] < row["ci_high"] and row["n_seeds"] == 2


def test_a_method_with_and_without_seeds_is_refused(tmp_path):
    d = make_run(tmp_path, "r", {"salvage": {"srg": {0: _images()}}})
    frame = pd.read_csv(d / "scores.csv", dtype={"image_id": str})
    frame.loc[3, "train_seed"] = None
    frame.to_csv(d / "scores.csv", index=False)
    seal_run(d)  # as if a run had written it so
    with pytest.raises(UserError, match="with and rows without a train_seed"):
        build_leaderboard(d)


def test_one_training_seed_is_one_realisation_in_the_mean_rank(tmp_path, monkeypatch):
    """A learned method trained with one seed: its scores and its dataset-level states carry that
    seed, the mean rank counts one realisation, and no note claims pooled seeds; states without
    the seed beside seeded scores are refused."""
    from xaibench.exports import seed_notes

    register_sum_ratio(monkeypatch)
    totals = torch.randint(5, 20, (N,), generator=torch.Generator().manual_seed(1)).double()
    hits = (totals * torch.rand(N, generator=torch.Generator().manual_seed(2))).round()
    methods = {"salvage": {"srg": {0: _images(1)}}, "rise": {"srg": _images(2)}}
    rise = {"test_sum_ratio": torch.stack([(hits * 0.5).round(), totals], 1)}
    states = {"salvage": {"test_sum_ratio": {0: torch.stack([hits, totals], 1)}}, "rise": rise}
    table = build_leaderboard(
        make_run(tmp_path, "r", methods, states=states, metrics_config=SUM_RATIO_CONFIG)
    )
    assert not seed_notes(table)
    assert ((table.method == "salvage") & (table.metric == "mean_rank")).any()
    assert set(table.loc[table.method == "salvage", "n_seeds"]) == {1}
    states["salvage"] = {"test_sum_ratio": torch.stack([hits, totals], 1)}
    bad = make_run(tmp_path, "bad", methods, states=states, metrics_config=SUM_RATIO_CONFIG)
    with pytest.raises(UserError, match="trained with seeds or not"):
        build_leaderboard(bad)
