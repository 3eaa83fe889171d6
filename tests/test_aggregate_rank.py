"""The aggregate rank across metrics: a hand-computed table (one vote per metric family, a tie,
a ↓ metric, reference rows left out), selections by category and name, the joint bootstrap
(brute force, dataset-level scores through ``aggregate``), seeds pooled like the table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_leaderboard import SumRatio, _row, make_run, register_sum_ratio

from xaibench.errors import UserError
from xaibench.leaderboard import AGGREGATE, bootstrap_indices, build_leaderboard, leaderboard, mean_ranks
from xaibench.seeding import generator

#: the families of the real metric classes: MIF, LIF and SRG are one experiment
FAMILIES = {
    "srg": {"provides": ["mif", "lif", "srg"], "directions": {"mif": "up", "lif": "down", "srg": "up"}},
    "rma": {"provides": ["rma"], "directions": {"rma": "up"}},
    "mi": {"provides": ["mi"], "directions": {"mi": "up"}},
    "completeness": {
        "provides": ["completeness", "cs_score_a1"],
        "directions": {"completeness": "up"},
    },
}

#: per-method means of the hand-computed case (every image has the mean: no image variance)
HAND = {
    #        srg ↑  mif ↑  lif ↓  rma ↑  mi ↑
    "a": dict(srg=3.0, mif=5.0, lif=2.0, rma=0.2, mi=1.0),
    "b": dict(srg=2.0, mif=5.0, lif=1.0, rma=0.9, mi=1.0),
    "c": dict(srg=1.0, mif=4.0, lif=3.0, rma=0.5, mi=1.0),
    # a reference row better than everyone everywhere: ranked, it would push every rank down by one
    "oracle": dict(srg=9.0, mif=9.0, lif=0.0, rma=1.0, mi=9.0),
}


def _hand_run(tmp_path, name="hand"):
    values = {m: {k: np.full(8, v) for k, v in per.items()} for m, per in HAND.items()}
    return make_run(tmp_path, name, values, metrics_config={k: FAMILIES[k] for k in ("srg", "rma", "mi")})


def _agg(table):
    rows = table[table["metric"] == AGGREGATE].set_index("method")
    return rows


def test_hand_computed_mean_rank_with_a_tie_and_one_vote_per_family(tmp_path):
    """srg ↑: a 1, b 2, c 3; mif ↑ (a = b): 1.5, 1.5, 3; lif ↓: a 2, b 1, c 3 → the insertion
    family (1/3 each): a 1.5, b 1.5, c 3. rma ↑: a 3, b 1, c 2. mi: all tied, 2 each.
    Mean over the three families: a (1.5 + 3 + 2)/3 = 13/6, b (1.5 + 1 + 2)/3 = 3/2, c 7/3."""
    agg = _agg(build_leaderboard(_hand_run(tmp_path)))
    assert set(agg.index) == {"a", "b", "c"}  # the Oracle is not ranked
    assert agg.loc["a", "mean"] == pytest.approx(13 / 6)
    assert agg.loc["b", "mean"] == pytest.approx(3 / 2)
    assert agg.loc["c", "mean"] == pytest.approx(7 / 3)
    assert list(agg.loc[["b", "a", "c"], "rank"]) == [1, 2, 3]
    assert set(agg["rank_metrics"]) == {"srg+mif+lif; rma; mi"}
    assert set(agg["direction"]) == {"down"} and set(agg["kind"]) == {"aggregate"}
    assert set(agg["n"]) == {8}
    # no image variance: every replicate gives the point estimate
    np.testing.assert_allclose(agg["ci_low"], agg["mean"])
    np.testing.assert_allclose(agg["ci_high"], agg["mean"])


def test_a_down_metric_ranks_its_minimum_first_and_ties_share_the_rank(tmp_path):
    """lif ↓: a 2, b 1, c 3; rma ↑: a 3, b 1, c 2 → a (2+3)/2 = 2.5, b 1, c (3+2)/2 = 2.5: a and c
    tie (both rank 2 in the column). Read as ↑, lif would give a 2.5, b 2, c 1.5."""
    agg = _agg(build_leaderboard(_hand_run(tmp_path), rank_metrics="lif,rma"))
    assert dict(agg["mean"]) == {"a": 2.5, "b": 1.0, "c": 2.5}
    assert dict(agg["rank"]) == {"a": 2.0, "b": 1.0, "c": 2.0}
    assert set(agg["rank_metrics"]) == {"lif; rma"}


def test_explicit_headline_scores_count_once_each(tmp_path):
    """srg: a 1, b 2, c 3; rma: a 3, b 1, c 2; mi: 2, 2, 2 → a 2, b 5/3, c 7/3."""
    agg = _agg(build_leaderboard(_hand_run(tmp_path), rank_metrics="srg,rma,mi"))
    assert agg.loc["a", "mean"] == pytest.approx(2.0)
    assert agg.loc["b", "mean"] == pytest.approx(5 / 3)
    assert agg.loc["c", "mean"] == pytest.approx(7 / 3)


def test_mean_ranks_by_hand():
    values = np.array([[3.0, 1.0], [3.0, 2.0], [1.0, 3.0]])  # score 0 ↑ with a tie, score 1 ↓
    got = mean_ranks(values, np.array([1.0, -1.0]), np.array([1.0, 1.0]))
    np.testing.assert_allclose(got, [(1.5 + 1) / 2, (1.5 + 2) / 2, (3 + 3) / 2])


def test_selection_by_category_name_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    values = {
        m: {
            k: rng.normal(j, 1, 10) for k in ("srg", "mif", "lif", "rma", "mi", "completeness", "cs_score_a1")
        }
        for j, m in enumerate("abc")
    }
    d = make_run(tmp_path, "r", values, metrics_config=FAMILIES)
    everything = _agg(build_leaderboard(d))
    # the raw completeness score has no better side and never enters
    assert set(everything["rank_metrics"]) == {"srg+mif+lif; rma; mi; completeness"}
    assert set(_agg(build_leaderboard(d, rank_metrics="localisation"))["rank_metrics"]) == {"rma; mi"}
    assert set(_agg(build_leaderboard(d, rank_metrics="faithfulness"))["rank_metrics"]) == {
        "srg+mif+lif; completeness"
    }
    assert set(_agg(build_leaderboard(d, rank_metrics="faithfulness,mi"))["rank_metrics"]) == {
        "srg+mif+lif; mi; completeness"
    }
    assert set(_agg(build_leaderboard(d, rank_metrics="r*,m*"))["rank_metrics"]) == {"mif; rma; mi"}
    assert _agg(build_leaderboard(d, rank_metrics="none")).empty
    with pytest.raises(UserError, match="'cs_score_a1' cannot be ranked"):
        build_leaderboard(d, rank_metrics="cs_score_a1")
    with pytest.raises(
        UserError, match="no metric or category 'robustness'.*categories: faithfulness, localisation"
    ):
        build_leaderboard(d, rank_metrics="robustness")
    with pytest.raises(UserError, match="'mi_ig' cannot be ranked"):
        build_leaderboard(
            make_run(
                tmp_path, "ig", {**values, "integrated_gradients": values["a"]}, metrics_config=FAMILIES
            ),
            rank_metrics="mi_ig",
        )


def test_one_family_alone_gives_no_aggregate_by_default(tmp_path):
    v = {m: {"srg": np.arange(5.0) + j, "lif": np.arange(5.0)} for j, m in enumerate("ab")}
    d = make_run(tmp_path, "r", v, metrics_config={"srg": FAMILIES["srg"]})
    assert AGGREGATE not in set(build_leaderboard(d)["metric"])  # it would repeat the SRG family
    assert len(_agg(build_leaderboard(d, rank_metrics="srg,lif"))) == 2  # asked for: computed


def test_a_method_missing_a_score_is_not_ranked(tmp_path):
    rng = np.random.default_rng(1)
    values = {m: {"srg": rng.normal(j, 1, 10), "rma": rng.normal(j, 1, 10)} for j, m in enumerate("abc")}
    del values["c"]["rma"]
    agg = _agg(build_leaderboard(make_run(tmp_path, "r", values, metrics_config=FAMILIES)))
    assert np.isnan(agg.loc["c", "mean"]) and np.isnan(agg.loc["c", "rank"])
    assert agg.loc[["a", "b"], "mean"].sum() == pytest.approx(3.0)  # ranked among a and b only


def test_ci_contains_the_point_estimate_and_the_table_is_reproducible(tmp_path):
    rng = np.random.default_rng(2)
    values = {
        m: {k: rng.normal(0.3 * j, 1, 40) for k in ("srg", "mif", "lif", "rma", "mi")}
        for j, m in enumerate("abcd")
    }
    d = make_run(tmp_path, "r", values, metrics_config={k: FAMILIES[k] for k in ("srg", "rma", "mi")})
    t1, t2 = build_leaderboard(d), build_leaderboard(d)
    agg = _agg(t1)
    assert (agg["ci_low"] <= agg["mean"]).all() and (agg["mean"] <= agg["ci_high"]).all()
    assert (agg["ci_high"] > agg["ci_low"]).all()  # the images do move the ranks here
    assert t1.to_csv() == t2.to_csv()


def test_joint_bootstrap_by_brute_force_with_a_dataset_level_score(tmp_path, monkeypatch):
    """Each replicate draws one set of images for every method and score; the dataset-level
    score is recomputed through ``aggregate`` on the drawn images' state rows."""
    register_sum_ratio(monkeypatch)
    n = 25
    rng = np.random.default_rng(5)
    g = torch.Generator().manual_seed(0)
    totals = torch.randint(5, 20, (n,)).double()
    mi = {m: rng.normal(0.1 * j, 1, n) for j, m in enumerate("abc")}
    st = {m: torch.stack([(totals * torch.rand(n, generator=g)).round(), totals], 1) for m in "abc"}
    cfg = {
        "test_sum_ratio": {"provides": ["test_sum_ratio"], "directions": {"test_sum_ratio": "up"}},
        "mi": FAMILIES["mi"],
    }
    d = make_run(
        tmp_path,
        "r",
        {m: {"mi": mi[m]} for m in "abc"},
        states={m: {"test_sum_ratio": st[m]} for m in "abc"},
        metrics_config=cfg,
    )
    agg = _agg(build_leaderboard(d))
    from scipy.stats import rankdata

    idx = bootstrap_indices(n, generator(0, "bootstrap", AGGREGATE)).numpy()
    reps = []
    for i in idx:
        r_mi = rankdata([-mi[m][i].mean() for m in "abc"])
        r_px = rankdata([-SumRatio().aggregate("", st[m][i]) for m in "abc"])
        reps.append((r_mi + r_px) / 2)
    reps = np.array(reps)
    for j, m in enumerate("abc"):
        assert agg.loc[m, "ci_low"] == pytest.approx(np.quantile(reps[:, j], 0.025))
        assert agg.loc[m, "ci_high"] == pytest.approx(np.quantile(reps[:, j], 0.975))
    assert set(agg["rank_metrics"]) == {"mi; test_sum_ratio"}


def test_seeds_are_pooled_in_the_aggregate(tmp_path):
    """A method whose best seed would rank first but whose pooled means rank last."""
    rng = np.random.default_rng(3)
    base = {m: {k: rng.normal(j, 0.1, 30) for k in ("srg", "rma")} for j, m in enumerate("ab")}  # b > a
    trained = {
        k: {0: rng.normal(5, 0.1, 30), 1: rng.normal(-5, 0.1, 30), 2: rng.normal(-5, 0.1, 30)}
        for k in ("srg", "rma")
    }
    d = make_run(tmp_path, "r", {**base, "salvage": trained}, metrics_config=FAMILIES)
    t = build_leaderboard(d)
    agg = _agg(t)
    assert agg.loc["salvage", "mean"] == pytest.approx(3.0) and agg.loc["salvage", "n_seeds"] == 3
    assert agg.loc["b", "mean"] == pytest.approx(1.0)
    assert agg.loc["salvage", "mean"] == pytest.approx(
        np.mean([_row(t, "salvage", k)["rank"] for k in ("srg", "rma")])
    )
    # drawing seeds {0, 0, 0} (probability 1/27 > 2.5 %) puts it first: the interval reaches far
    assert agg.loc["salvage", "ci_low"] < 2.5 and agg.loc["salvage", "ci_high"] == pytest.approx(3.0)


def test_multi_run_selection_checks_tokens_against_every_run(tmp_path):
    rng = np.random.default_rng(4)
    with_masks = {m: {"srg": rng.normal(j, 1, 8), "rma": rng.normal(j, 1, 8)} for j, m in enumerate("ab")}
    no_masks = {m: {"srg": rng.normal(j, 1, 8), "mif": rng.normal(j, 1, 8)} for j, m in enumerate("ab")}
    d1 = make_run(tmp_path, "r1", with_masks, metrics_config=FAMILIES)
    d2 = make_run(tmp_path, "r2", no_masks, metrics_config=FAMILIES, dataset="imagenette")
    t, _ = leaderboard([d1, d2], rank_metrics="srg,rma")  # rma exists in one of the two runs
    assert set(t.loc[t["metric"] == AGGREGATE, "run_id"]) == {"r1"}
    with pytest.raises(UserError, match="no metric or category 'pxap'"):
        leaderboard([d1, d2], rank_metrics="srg,pxap")
