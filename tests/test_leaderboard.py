"""Aggregation: bootstrap CIs against scipy / closed forms, Holm, the Wilcoxon marker, ranking
by direction, dataset-level metrics through ``aggregate``, MI / MI(IG), merging runs.

``make_run`` writes a run directory in the harness's layout from hand-chosen per-image values
(the exports and plots tests use it too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from xaibench.errors import UserError
from xaibench.io import save_torch, write_csv, write_json
from xaibench.leaderboard import (
    bootstrap_indices,
    bootstrap_mean_ci,
    build_leaderboard,
    holm,
    leaderboard,
    load_run,
    merge_runs,
)
from xaibench.metrics import Metric
from xaibench.registry import METRICS
from xaibench.seeding import generator
from xaibench.store import seal_run

DIRECTIONS = {
    "srg": "up",
    "lif": "down",
    "mif": "up",
    "mi": "up",
    "r_srg": "up",
    "r_mif": "up",
    "r_lif": "down",
}


def make_run(
    root: Path,
    name: str,
    values: Dict[str, Dict[str, np.ndarray]],
    *,
    dataset: str = "synthetic",
    model: str = "m1",
    labels: Optional[Dict[str, str]] = None,
    own: tuple = (),
    states: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
    metrics_config: Optional[dict] = None,
    curves: Optional[pd.DataFrame] = None,
    skipped: Optional[Dict[str, str]] = None,
    seed: int = 0,
) -> Path:
    """values[method][metric] = per-image values (image i has id synthetic-test-0000i), or
    {train_seed: per-image values} for a method trained with several seeds: scores.csv then gets
    the ``train_seed`` column after ``method`` (empty for the other methods)."""
    d = root / name
    d.mkdir(parents=True)
    rows = []
    n = 0
    seeded = any(isinstance(v, dict) for per in values.values() for v in per.values())
    for method, per_metric in values.items():
        for metric, by_seed in per_metric.items():
            for train_seed, v in by_seed.items() if isinstance(by_seed, dict) else [(None, by_seed)]:
                n = max(n, len(v))
                for i, x in enumerate(v):
                    rows.append(
                        {
                            "dataset": dataset,
                            "model": model,
                            "method": method,
                            "train_seed": train_seed,
                            "image_id": f"{dataset}-test-{i:05d}",
                            "target": i % 10,
                            "metric": metric,
                            "value": float(x),
                        }
                    )
    columns = ["dataset", "model", "method", "train_seed", "image_id", "target", "metric", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    if seeded:  # integers, and an empty cell for untrained methods
        frame["train_seed"] = frame["train_seed"].astype("Int64")
    else:  # the layout written before training seeds existed
        frame = frame.drop(columns="train_seed")
    write_csv(d / "scores.csv", frame)
    write_csv(
        d / "curves.csv",
        curves
        if curves is not None
        else pd.DataFrame(columns=["dataset", "model", "method", "metric", "x", "value", "n"]),
    )
    save_torch(d / "states.pt", states or {})
    methods = {
        m: {"label": (labels or {}).get(m, m.capitalize()), "status": "done", "explains_own_model": m in own}
        for m in values
    }
    for m, reason in (skipped or {}).items():
        methods[m] = {"label": m, "status": "skipped", "reason": reason}
    used = {k for per in values.values() for k in per}
    metrics = metrics_config or {
        k: {"provides": [k], "directions": {k: DIRECTIONS.get(k, "up")}, "settings": {}} for k in used
    }
    write_json(
        d / "config.json",
        {
            "run_id": name,
            "config": {"seed": seed, "dataset": dataset, "model": model, "n_images": n, "split": "test"},
            "resolved": {"dataset": dataset, "model": model, "split": "test", "n_images": n},
            "methods": methods,
            "metrics": metrics,
            "versions": {"xaibench": "test"},
        },
    )
    seal_run(d)  # a finished run: its files are recorded, as the harness does
    return d


def _row(table, method, metric):
    r = table[(table["method"] == method) & (table["metric"] == metric)]
    assert len(r) == 1
    return r.iloc[0]


# --------------------------------------------------------------------------- confidence intervals
def test_ci_of_a_constant_is_the_constant():
    lo, hi = bootstrap_mean_ci(np.full(50, 3.25), generator(0, "t"))
    assert lo == hi == 3.25


def test_ci_matches_scipy_bootstrap_and_the_normal_closed_form():
    x = np.random.default_rng(1).normal(10.0, 2.0, size=400)
    lo, hi = bootstrap_mean_ci(x, generator(0, "t"), n_boot=8000)
    ref = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=8000,
        method="percentile",
        confidence_level=0.95,
        random_state=np.random.default_rng(2),
    ).confidence_interval
    se = x.std() / np.sqrt(len(x))  # the bootstrap's standard error (ddof = 0)
    z = stats.norm.ppf(0.975)
    for ours, theirs, closed in ((lo, ref.low, x.mean() - z * se), (hi, ref.high, x.mean() + z * se)):
        assert abs(ours - theirs) < 0.06 * se * 2  # Monte Carlo error of two 8000-resample runs
        assert abs(ours - closed) < 0.15 * se
    assert hi - lo == pytest.approx(2 * z * se, rel=0.05)


def test_ci_ignores_nans_and_counts_them(tmp_path):
    v = np.array([1.0, 2.0, np.nan, 3.0, np.nan, 4.0])
    d = make_run(tmp_path, "r", {"a": {"srg": v}})
    row = _row(build_leaderboard(d), "a", "srg")
    assert (row["n"], row["n_nan"]) == (4, 2)
    assert row["mean"] == pytest.approx(2.5)
    lo, hi = bootstrap_mean_ci(v[np.isfinite(v)], generator(0, "bootstrap", "a", "srg"))
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


def test_bootstrap_is_seeded(tmp_path):
    v = np.random.default_rng(0).normal(size=30)
    d1 = make_run(tmp_path, "r1", {"a": {"srg": v}})
    d2 = make_run(tmp_path, "r2", {"a": {"srg": v}})
    d3 = make_run(tmp_path, "r3", {"a": {"srg": v}}, seed=5)
    t1, t2, t3 = (build_leaderboard(d) for d in (d1, d2, d3))
    assert t1["ci_low"].iloc[0] == t2["ci_low"].iloc[0]
    assert t1["ci_low"].iloc[0] != t3["ci_low"].iloc[0]


class SumRatio(Metric):
    """Σ hits / Σ totals over images (a dataset-level score), registered by tests that need it."""

    name = "test_sum_ratio"
    provides = ("test_sum_ratio",)
    directions = {"test_sum_ratio": "up"}
    dataset_level = True

    def aggregate(self, name, states):
        return float(100 * states[:, 0].sum() / states[:, 1].sum())


def register_sum_ratio(monkeypatch):
    METRICS.names()  # built-ins loaded before the temporary entry
    monkeypatch.setitem(METRICS._entries, "test_sum_ratio", SumRatio)


def test_dataset_level_metric_bootstraps_states_through_aggregate(tmp_path, monkeypatch):
    register_sum_ratio(monkeypatch)
    g = torch.Generator().manual_seed(3)
    totals = torch.randint(5, 20, (40,)).double()
    hits = (totals * torch.rand(40, generator=g)).round()
    st = torch.stack([hits, totals], 1)
    cfg = {
        "test_sum_ratio": {
            "provides": ["test_sum_ratio"],
            "directions": {"test_sum_ratio": "up"},
            "settings": {"preset": "paper"},
        },
        "srg": {"provides": ["srg"], "directions": {"srg": "up"}},
    }
    d = make_run(
        tmp_path, "r", {"a": {"srg": np.zeros(40)}}, states={"a": {"test_sum_ratio": st}}, metrics_config=cfg
    )
    row = _row(build_leaderboard(d), "a", "test_sum_ratio")
    assert row["mean"] == pytest.approx(100 * float(hits.sum() / totals.sum()))
    assert row["kind"] == "dataset" and row["n"] == 40
    # brute force: the same resamples of images, the ratio recomputed in a plain loop
    idx = bootstrap_indices(40, generator(0, "bootstrap", "a", "test_sum_ratio"))
    boots = np.array([100 * float(hits[i].sum() / totals[i].sum()) for i in idx])
    assert row["ci_low"] == pytest.approx(np.quantile(boots, 0.025))
    assert row["ci_high"] == pytest.approx(np.quantile(boots, 0.975))
    assert row["ci_low"] < row["mean"] < row["ci_high"]


def test_mi_over_mi_of_integrated_gradients(tmp_path):
    rng = np.random.default_rng(0)
    ig = rng.uniform(0.1, 0.3, 30)
    a = rng.uniform(0.2, 0.5, 30)
    a[3] = np.nan
    d = make_run(tmp_path, "r", {"integrated_gradients": {"mi": ig}, "a": {"mi": a}})
    t = build_leaderboard(d)
    ok = np.isfinite(a)
    assert _row(t, "a", "mi_ig")["mean"] == pytest.approx(a[ok].mean() / ig[ok].mean())
    assert _row(t, "a", "mi_ig")["metric_label"] == "MI/MI(IG)"
    assert _row(t, "integrated_gradients", "mi_ig")["mean"] == pytest.approx(1.0)
    # no IG in the run: no ratio column
    d2 = make_run(tmp_path, "r2", {"a": {"mi": a}})
    assert "mi_ig" not in set(build_leaderboard(d2)["metric"])


# --------------------------------------------------------------------------- ranking and tests
def test_holm_by_hand():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])


def test_wilcoxon_marker_tied_vs_significantly_worse(tmp_path):
    rng = np.random.default_rng(0)
    best = rng.normal(60, 5, 60)
    worse = best - 8 + rng.normal(0, 1, 60)
    tied = best.copy()
    tied[0] -= 0.5
    tied[1] += 0.3  # differs on two images only, mean just below
    d = make_run(
        tmp_path,
        "r",
        {
            "best": {"srg": best},
            "worse": {"srg": worse},
            "tied": {"srg": tied},
            "random": {"srg": rng.normal(0, 1, 60)},
        },
    )
    t = build_leaderboard(d)
    assert _row(t, "best", "srg")["rank"] == 1 and not _row(t, "best", "srg")["tied_with_best"]
    assert _row(t, "tied", "srg")["rank"] == 2 and _row(t, "tied", "srg")["tied_with_best"]
    w = _row(t, "worse", "srg")
    assert w["rank"] == 3 and not w["tied_with_best"]
    p_worse = stats.wilcoxon(best, worse).pvalue
    p_tied = stats.wilcoxon(best, tied).pvalue
    assert w["p_holm"] == pytest.approx(min(1, 2 * p_worse))  # Holm with two tests
    assert _row(t, "tied", "srg")["p_holm"] == pytest.approx(max(min(1, 2 * p_worse), p_tied))
    r = _row(t, "random", "srg")  # reference rows: shown, not ranked
    assert np.isnan(r["rank"]) and np.isnan(r["p_holm"]) and r["reference"]


def test_rank_follows_direction(tmp_path):
    d = make_run(
        tmp_path,
        "r",
        {
            "a": {"lif": np.array([10.0, 12, 11]), "mif": np.array([50.0, 52, 51])},
            "b": {"lif": np.array([20.0, 22, 21]), "mif": np.array([70.0, 72, 71])},
            "c": {"lif": np.array([30.0, 32, 31]), "mif": np.array([60.0, 62, 61])},
        },
    )
    t = build_leaderboard(d)
    assert [_row(t, m, "lif")["rank"] for m in "abc"] == [1, 2, 3]  # ↓: the minimum is best
    assert [_row(t, m, "mif")["rank"] for m in "abc"] == [3, 1, 2]  # ↑: the maximum is best


# --------------------------------------------------------------------------- runs
def test_merging_two_runs_gives_two_groups(tmp_path):
    v = {"a": {"srg": np.arange(5.0)}, "b": {"srg": np.arange(5.0) + 1}}
    d1 = make_run(tmp_path, "r1", v, dataset="synthetic", model="m1")
    d2 = make_run(tmp_path, "r2", v, dataset="synthetic", model="m2")
    d3 = make_run(tmp_path, "r3", v, dataset="pets", model="m1")
    t, runs = leaderboard([d1, d2, d3])
    assert list(dict.fromkeys(t["group"])) == ["synthetic / m1", "synthetic / m2", "pets"]
    assert len(t) == 6 and len(runs) == 3
    same = merge_runs([build_leaderboard(d1), build_leaderboard(make_run(tmp_path, "r4", v, model="m1"))])
    assert same["group"].nunique() == 2  # same dataset × model: run ids tell apart


def test_selection_and_bad_input(tmp_path):
    d = make_run(
        tmp_path,
        "r",
        {
            "a": {"srg": np.arange(4.0), "lif": np.arange(4.0)},
            "b_cam": {"srg": np.arange(4.0), "lif": np.arange(4.0)},
        },
    )
    t, _ = leaderboard([d], metrics=["srg"], methods=["*cam"])
    assert set(t["metric"]) == {"srg"} and set(t["method"]) == {"b_cam"}
    with pytest.raises(UserError, match="no metric 'nope'.*Available"):
        leaderboard([d], metrics=["nope"])
    with pytest.raises(UserError, match="not a finished run directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(UserError, match="given twice"):
        leaderboard([d, d])


def test_real_run_directory_from_the_harness(tmp_path):
    """The harness writes all four formats; they agree with a fresh aggregation."""
    from xaibench.harness import execute
    from xaibench.spec import RunConfig

    config = RunConfig(
        methods="random,saliency", metrics="srg", n_images=6, batch_size=3, cardinalities=4, out=str(tmp_path)
    )
    outcome = execute(config, context=tiny_context(6))
    out = outcome.dir
    for ext in ("md", "tex", "csv", "json"):
        assert (out / f"leaderboard.{ext}").stat().st_size > 0
    assert outcome.leaderboard_markdown.startswith("| Method | SRG ↑ | MIF ↑ | LIF ↓ |")
    doc = json.loads((out / "leaderboard.json").read_text())
    assert doc["runs"][0]["config"]["methods"]["saliency"]["status"] == "done"
    fresh = build_leaderboard(out)
    saved = pd.read_csv(out / "leaderboard.csv")
    np.testing.assert_allclose(saved["mean"], fresh["mean"])


def tiny_context(n: int):
    """A run's context without loading (or training) the default model: the untrained tiny ViT at
    32×32 on ``n`` synthetic test images."""
    from conftest import make_tiny_vit

    from xaibench.context import RunContext
    from xaibench.datasets import load_dataset
    from xaibench.removal import Removal

    data = load_dataset("synthetic", "test", n_test=n, image_size=32)
    adapter = make_tiny_vit()
    adapter.meta = {"source": "test"}
    return RunContext(data, adapter, Removal("drop"), list(range(n)))


def test_maps_that_barely_change_under_randomisation_are_flagged():
    """Adebayo et al. 2018: a map that stays the same when the classifier's weights are
    re-initialised is flagged, for the last block and for the whole cascade, each with its value."""
    from xaibench.exports import sanity_notes

    table = pd.DataFrame(
        [
            ("EigenCAM", "rand_top", 0.99),
            ("EigenCAM", "rand_all", 0.65),
            ("Saliency", "rand_top", 0.10),
            ("Saliency", "rand_all", 0.05),
            ("Edge detector", "rand_top", 0.97),
            ("Edge detector", "rand_all", 0.95),
        ],
        columns=["method_label", "metric", "mean"],
    )
    lines = sanity_notes(table)
    flagged = [line for line in lines[1:]]
    assert len(flagged) == 3 and not any("Saliency" in line for line in flagged)
    assert any(line.startswith("EigenCAM") and "last block" in line and "0.99" in line for line in flagged)
    assert any(
        line.startswith("Edge detector") and "every layer" in line and "0.95" in line for line in flagged
    )
    assert not any(line.startswith("EigenCAM") and "every layer" in line for line in flagged)
