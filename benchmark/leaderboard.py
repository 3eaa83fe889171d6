"""Aggregation of per-image scores into leaderboards: mean and a seeded bootstrap 95 % CI per
method × metric, with the number of images and of NaN images per cell."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import pandas as pd
import torch

from .io import write_csv, write_text
from .seeding import derive_seed

N_BOOT = 1000
LEADERBOARD_COLUMNS = ["dataset", "model", "method", "metric", "direction", "mean", "ci_low", "ci_high", "n",
                       "n_nan"]


def bootstrap_mean_ci(values: np.ndarray, seed: int, n_boot: int = N_BOOT, level: float = 0.95):
    """Percentile bootstrap CI of the mean over images (NaNs dropped); (nan, nan) for < 2 values."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def bootstrap_aggregate_ci(states: torch.Tensor, aggregate, seed: int, n_boot: int = N_BOOT, level: float = 0.95):
    """Percentile bootstrap CI of a dataset-level metric by resampling images' states."""
    n = states.shape[0]
    if n < 2:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    vals = np.array([aggregate(states[torch.randint(n, (n,), generator=g)]) for _ in range(n_boot)])
    a = (1 - level) / 2
    return float(np.nanquantile(vals, a)), float(np.nanquantile(vals, 1 - a))


def build_leaderboard(run_dir: Path, *, scores: pd.DataFrame, states: Dict[str, Dict[str, torch.Tensor]],
                      metrics: Iterable, seed: int = 0) -> pd.DataFrame:
    """One row per method × score name."""
    directions: Dict[str, str] = {}
    aggregators = {}
    for m in metrics:
        directions.update(m.directions)
        if m.dataset_level:
            for name in m.provides:
                aggregators[name] = m
    rows: List[dict] = []
    if len(scores):
        for (dataset, model, method, metric), g in scores.groupby(["dataset", "model", "method", "metric"],
                                                                   sort=False):
            v = g["value"].to_numpy(dtype=float)
            lo, hi = bootstrap_mean_ci(v, derive_seed(seed, "bootstrap", method, metric))
            finite = np.isfinite(v)
            rows.append({"dataset": dataset, "model": model, "method": method, "metric": metric,
                         "direction": directions.get(metric, ""), "mean": float(v[finite].mean()) if finite.any()
                         else float("nan"), "ci_low": lo, "ci_high": hi, "n": int(finite.sum()),
                         "n_nan": int((~finite).sum())})
        ds, md = scores["dataset"].iloc[0], scores["model"].iloc[0]
    else:
        ds = md = ""
    for method, per_metric in states.items():
        for name, st in per_metric.items():
            agg = aggregators.get(name)
            if agg is None or len(st) == 0:
                continue
            value = agg.aggregate(name, st)
            lo, hi = bootstrap_aggregate_ci(st, lambda s, a=agg, n=name: a.aggregate(n, s),
                                            derive_seed(seed, "bootstrap", method, name))
            rows.append({"dataset": ds, "model": md, "method": method, "metric": name,
                         "direction": directions.get(name, ""), "mean": value, "ci_low": lo, "ci_high": hi,
                         "n": int(st.shape[0]), "n_nan": 0})
    return pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)


def _fmt(mean: float, lo: float, hi: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {(hi - lo) / 2:.2f}"


def to_markdown(table: pd.DataFrame, labels: Optional[Dict[str, str]] = None) -> str:
    """Methods as rows, metrics as columns (↑/↓ in the header), mean ± half-width of the 95 % CI."""
    from xaibench.metrics import metric_label

    if table.empty:
        return "(no results)\n"
    labels = labels or {}
    metrics = list(dict.fromkeys(table["metric"]))
    methods = list(dict.fromkeys(table["method"]))
    arrow = {"up": " ↑", "down": " ↓"}
    head = ["Method"] + [metric_label(m) + arrow.get(table[table.metric == m]["direction"].iloc[0], "")
                         for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = {(r.method, r.metric): _fmt(r.mean, r.ci_low, r.ci_high) for r in table.itertuples()}
    for method in methods:
        lines.append("| " + " | ".join([labels.get(method, method)] +
                                       [cells.get((method, m), "") for m in metrics]) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboards(run_dir: Path, table: pd.DataFrame, labels: Optional[Dict[str, str]] = None) -> str:
    write_csv(run_dir / "leaderboard.csv", table)
    text = to_markdown(table, labels)
    write_text(run_dir / "leaderboard.md", text)
    return text
