"""Aggregation of a run's per-image scores into a leaderboard table.

For every method × metric of a run directory (``scores.csv``, ``states.pt``, ``config.json``):

- the mean over images and a 95 % percentile-bootstrap confidence interval (1000 resamples of
  the images, drawn from a generator seeded by (seed, "bootstrap", method, metric));
- dataset-level metrics (PxAP) are bootstrapped over images too: each resample of the
  per-image *states* goes through the metric's own ``aggregate``;
- MI / MI(IG) (ratio of the method's mean MI to Integrated Gradients' mean MI on the same
  images, SPEC §4) when both the ``mi`` score and the ``integrated_gradients`` method are in
  the run; its CI resamples images jointly for the two methods;
- the number of images with a finite value (``n``) and with NaN (``n_nan``);
- the rank within the column, and a paired two-sided Wilcoxon signed-rank test (scipy) of
  each method against the column's best over the images both have finite values for, with a
  Holm correction over the methods of the column; ``tied_with_best`` marks the methods whose
  difference to the best is not significant at 5 %.

Choices documented here (the papers give no rule): the reference rows (``random`` and
``oracle``, SPEC §4: they calibrate the table) are shown but take no part in the ranking or
the tests, so that the Oracle's RMA = 100 does not take the bold of every mask metric;
dataset-level metrics and MI / MI(IG) have no per-image pairs and are ranked but not tested.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .errors import UserError
from .io import load_torch, read_json
from .seeding import generator

N_BOOT = 1000
LEVEL = 0.95
ALPHA = 0.05
REFERENCE_METHODS = ("random", "oracle")
IG_METHOD = "integrated_gradients"
MI_METRIC = "mi"
MI_RATIO = "mi_ig"
MI_RATIO_LABEL = "MI/MI(IG)"
#: column order in tables: the papers' headline metrics first, anything else after, as found
PREFERRED_METRIC_ORDER = (
    "srg",
    "r_srg",
    "mif",
    "lif",
    "r_mif",
    "r_lif",
    "rma",
    "rra",
    "pxap",
    "mi",
    MI_RATIO,
    "completeness",
    "soundness",
)

LEADERBOARD_COLUMNS = [
    "run_id",
    "dataset",
    "model",
    "method",
    "method_label",
    "metric",
    "metric_label",
    "direction",
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "n_nan",
    "kind",
    "reference",
    "explains_own_model",
    "rank",
    "p_holm",
    "tied_with_best",
]


# --------------------------------------------------------------------------- statistics
def _quantiles(values: torch.Tensor, level: float):
    a = (1 - level) / 2
    q = torch.quantile(values.double(), torch.tensor([a, 1 - a], dtype=torch.float64))
    return float(q[0]), float(q[1])


def bootstrap_indices(n: int, g: torch.Generator, n_boot: int = N_BOOT) -> torch.Tensor:
    """(n_boot, n) indices of images drawn with replacement."""
    return torch.randint(n, (n_boot, n), generator=g)


def bootstrap_mean_ci(values, g: torch.Generator, n_boot: int = N_BOOT, level: float = LEVEL):
    """Percentile-bootstrap CI of the mean over the finite values; (nan, nan) for fewer than 2."""
    v = torch.tensor(np.array(values, dtype=np.float64))
    v = v[torch.isfinite(v)]
    if len(v) < 2:
        return float("nan"), float("nan")
    means = v[bootstrap_indices(len(v), g, n_boot)].mean(1)
    return _quantiles(means, level)


def bootstrap_statistic_ci(
    n: int,
    statistic: Callable[[torch.Tensor], float],
    g: torch.Generator,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
):
    """Percentile-bootstrap CI of ``statistic(image_indices)`` (any dataset-level value)."""
    if n < 2:
        return float("nan"), float("nan")
    vals = torch.tensor([statistic(idx) for idx in bootstrap_indices(n, g, n_boot)], dtype=torch.float64)
    vals = vals[torch.isfinite(vals)]
    if len(vals) == 0:
        return float("nan"), float("nan")
    return _quantiles(vals, level)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN entries stay NaN and do not count as tests)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value over the pairs where both are finite; 1.0 when the
    two agree on every image (no evidence of a difference), NaN with no pairs."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return float("nan")
    d = a[ok] - b[ok]
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(a[ok], b[ok], zero_method="wilcox", alternative="two-sided").pvalue)


# --------------------------------------------------------------------------- run directories
@dataclass
class RunResults:
    """A finished run directory, read back."""

    dir: Path
    config: dict
    scores: pd.DataFrame
    curves: pd.DataFrame
    states: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.config.get("run_id") or self.dir.name

    @property
    def dataset(self) -> str:
        return self.config.get("resolved", {}).get("dataset") or self.config.get("config", {}).get(
            "dataset", ""
        )

    @property
    def model(self) -> str:
        return (
            self.config.get("resolved", {}).get("model") or self.config.get("config", {}).get("model") or ""
        )

    @property
    def seed(self) -> int:
        return int(self.config.get("config", {}).get("seed", 0))

    def method_info(self, method: str) -> dict:
        return self.config.get("methods", {}).get(method, {})

    def method_label(self, method: str) -> str:
        return self.method_info(method).get("label") or method

    def directions(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for info in self.config.get("metrics", {}).values():
            out.update(info.get("directions", {}))
        return out


def load_run(run_dir: str | Path, verify: bool = True) -> RunResults:
    """Read a run directory written by :mod:`xaibench.harness` (UserError if it is not one, or
    if ``verify`` and its files are not those the finished run recorded)."""
    from .store import verify_run

    d = Path(run_dir)
    missing = [f for f in ("config.json", "scores.csv") if not (d / f).exists()]
    if missing:
        raise UserError(
            f"'{run_dir}' is not a finished run directory (no {' or '.join(missing)}); "
            f"pass the folder that `xaibench run` printed after 'results:'"
        )
    problem = verify_run(d) if verify else None
    if problem is not None:
        raise UserError(f"'{run_dir}' cannot be used: {problem}")
    scores = pd.read_csv(d / "scores.csv", dtype={"image_id": str})
    curves = (
        pd.read_csv(d / "curves.csv")
        if (d / "curves.csv").exists()
        else pd.DataFrame(columns=["dataset", "model", "method", "metric", "x", "value", "n"])
    )
    states = load_torch(d / "states.pt") if (d / "states.pt").exists() else {}
    return RunResults(d, read_json(d / "config.json"), scores, curves, states)


def _aggregators(run: RunResults) -> Dict[str, object]:
    """Score name → metric instance able to ``aggregate`` it (dataset-level metrics only)."""
    from .registry import METRICS

    out: Dict[str, object] = {}
    for name, info in run.config.get("metrics", {}).items():
        if name not in METRICS:
            continue
        cls = METRICS.get(name)
        if not getattr(cls, "dataset_level", False):
            continue
        try:
            metric = cls(**info.get("settings", {}))
        except UserError:
            metric = cls()
        for score in info.get("provides", [name]):
            out[score] = metric
    return out


def metric_sort_key(name: str):
    return (
        (PREFERRED_METRIC_ORDER.index(name), "")
        if name in PREFERRED_METRIC_ORDER
        else (len(PREFERRED_METRIC_ORDER), name)
    )


def _label(metric: str) -> str:
    if metric == MI_RATIO:
        return MI_RATIO_LABEL
    from xaibench.metrics import metric_label

    return metric_label(metric)


# --------------------------------------------------------------------------- the table
def build_leaderboard(
    run: RunResults | str | Path, *, n_boot: int = N_BOOT, alpha: float = ALPHA
) -> pd.DataFrame:
    """One row per method × score of one run (see the module docstring for every column)."""
    if not isinstance(run, RunResults):
        run = load_run(run)
    directions = run.directions()
    seed = run.seed
    rows: List[dict] = []

    def row(method, metric, mean, lo, hi, n, n_nan, kind):
        info = run.method_info(method)
        return {
            "run_id": run.run_id,
            "dataset": run.dataset,
            "model": run.model,
            "method": method,
            "method_label": run.method_label(method),
            "metric": metric,
            "metric_label": _label(metric),
            "direction": directions.get(metric, "up" if metric == MI_RATIO else ""),
            "mean": mean,
            "ci_low": lo,
            "ci_high": hi,
            "n": int(n),
            "n_nan": int(n_nan),
            "kind": kind,
            "reference": method in REFERENCE_METHODS,
            "explains_own_model": bool(info.get("explains_own_model", False)),
        }

    per_image: Dict[tuple, pd.Series] = {}
    scores = run.scores
    if len(scores):
        for (method, metric), g in scores.groupby(["method", "metric"], sort=False):
            s = g.groupby("image_id", sort=False)["value"].mean()  # one value per image
            per_image[(method, metric)] = s
            v = s.to_numpy(dtype=float)
            finite = np.isfinite(v)
            lo, hi = bootstrap_mean_ci(v, generator(seed, "bootstrap", method, metric), n_boot)
            rows.append(
                row(
                    method,
                    metric,
                    float(v[finite].mean()) if finite.any() else float("nan"),
                    lo,
                    hi,
                    finite.sum(),
                    (~finite).sum(),
                    "per_image",
                )
            )

    aggregators = _aggregators(run)
    for method, per_metric in run.states.items():
        for name, st in per_metric.items():
            agg = aggregators.get(name)
            if agg is None or len(st) == 0:
                continue
            st = st.double() if st.is_floating_point() else st
            value = float(agg.aggregate(name, st))
            lo, hi = bootstrap_statistic_ci(
                len(st),
                lambda idx, a=agg, n=name, s=st: float(a.aggregate(n, s[idx])),
                generator(seed, "bootstrap", method, name),
                n_boot,
            )
            rows.append(row(method, name, value, lo, hi, len(st), 0, "dataset"))

    ig = per_image.get((IG_METHOD, MI_METRIC))
    if ig is not None:
        for (method, metric), s in per_image.items():
            if metric != MI_METRIC:
                continue
            both = pd.concat([s, ig], axis=1, join="inner").to_numpy(dtype=float)
            both = both[np.isfinite(both).all(1)]
            t = torch.tensor(both)

            def ratio(idx, t=t):
                return float(t[idx, 0].mean() / t[idx, 1].mean())

            value = ratio(torch.arange(len(t))) if len(t) else float("nan")
            lo, hi = bootstrap_statistic_ci(
                len(t), ratio, generator(seed, "bootstrap", method, MI_RATIO), n_boot
            )
            rows.append(row(method, MI_RATIO, value, lo, hi, len(t), len(s) - len(t), "ratio"))

    table = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS[:-3])
    return rank_and_test(table, per_image, alpha)


def rank_and_test(
    table: pd.DataFrame, per_image: Dict[tuple, pd.Series], alpha: float = ALPHA
) -> pd.DataFrame:
    """Add ``rank`` (1 = best, ties share; reference rows NaN), ``p_holm`` (Holm-adjusted
    Wilcoxon p-value against the best; NaN for the best, references and untested columns)
    and ``tied_with_best`` (p_holm ≥ alpha)."""
    table = table.copy()
    table["rank"] = np.nan
    table["p_holm"] = np.nan
    table["tied_with_best"] = False
    for metric, g in table.groupby("metric", sort=False):
        cand = g[~g["reference"] & np.isfinite(g["mean"].astype(float))]
        if cand.empty:
            continue
        direction = g["direction"].iloc[0]
        if direction not in ("up", "down"):  # informative scores without a better side are not ranked
            continue
        sign = -1.0 if direction == "down" else 1.0
        key = sign * cand["mean"].astype(float)
        table.loc[cand.index, "rank"] = key.rank(ascending=False, method="min")
        if (cand["kind"] != "per_image").any():
            continue
        best = key.idxmax()
        best_method = table.at[best, "method"]
        others = [i for i in cand.index if i != best]
        ref = per_image[(best_method, metric)]
        raw = []
        for i in others:
            s = per_image[(table.at[i, "method"], metric)]
            pair = pd.concat([ref, s], axis=1, join="inner").to_numpy(dtype=float)
            raw.append(paired_wilcoxon(pair[:, 0], pair[:, 1]) if len(pair) else float("nan"))
        adjusted = holm(raw)
        for i, p in zip(others, adjusted):
            table.at[i, "p_holm"] = p
            table.at[i, "tied_with_best"] = bool(np.isfinite(p) and p >= alpha)
    table["tied_with_best"] = table["tied_with_best"].astype(bool)
    return table[LEADERBOARD_COLUMNS]


def select(
    table: pd.DataFrame, *, metrics: Optional[Sequence[str]] = None, methods: Optional[Sequence[str]] = None
) -> pd.DataFrame:
    """Rows whose metric / method match any of the names or shell wildcards given."""
    for column, wanted in (("metric", metrics), ("method", methods)):
        if not wanted:
            continue
        available = list(dict.fromkeys(table[column]))
        keep = set()
        for pattern in wanted:
            hits = fnmatch.filter(available, pattern.lower())
            if not hits:
                raise UserError(
                    f"no {column} '{pattern}' in the run(s). Available: {', '.join(available) or '(none)'}"
                )
            keep.update(hits)
        table = table[table[column].isin(keep)]
    return table


def ordered(names: Sequence[str], table: pd.DataFrame) -> List[str]:
    """Methods for rows: real methods by label, then the reference rows (as in the papers)."""
    ref = dict(zip(table["method"], table["reference"]))
    labels = dict(zip(table["method"], table["method_label"]))
    return sorted(
        dict.fromkeys(names),
        key=lambda m: (
            bool(ref.get(m)),
            REFERENCE_METHODS.index(m) if m in REFERENCE_METHODS else 0,
            labels.get(m, m).lower(),
        ),
    )


def merge_runs(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate the tables of several runs and add ``group`` (the column-group title): the
    dataset name, with the model when a dataset appears with several models, and the run id
    when the same dataset × model appears twice."""
    table = (
        pd.concat(list(tables), ignore_index=True) if tables else pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    )
    runs = table[["run_id", "dataset", "model"]].drop_duplicates()
    by_ds = runs.groupby("dataset")["model"].nunique()
    pair_count = runs.groupby(["dataset", "model"]).size()
    group = {}
    for r in runs.itertuples():
        name = r.dataset
        if by_ds[r.dataset] > 1:
            name = f"{r.dataset} / {r.model}"
        if pair_count[(r.dataset, r.model)] > 1:
            name = f"{name} ({r.run_id})"
        group[r.run_id] = name
    table.insert(0, "group", table["run_id"].map(group))
    return table


def leaderboard(run_dirs: Sequence[str | Path], *, metrics=None, methods=None, verify: bool = True) -> tuple:
    """(merged table, [RunResults]) for the CLI and the exports."""
    runs = [load_run(d, verify) for d in run_dirs]
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise UserError(
            f"the same run was given twice: {', '.join(sorted({i for i in ids if ids.count(i) > 1}))}"
        )
    table = merge_runs([build_leaderboard(r) for r in runs])
    return select(table, metrics=metrics, methods=methods), runs
