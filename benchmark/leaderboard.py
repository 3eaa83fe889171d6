"""Aggregation of a run's per-image scores into a leaderboard table.

For every method × metric of a run directory (``scores.csv``, ``states.pt``, ``config.json``):

- the mean over images and a 95 % percentile-bootstrap confidence interval (1000 resamples of
  the images, drawn from a generator seeded by (seed, "bootstrap", method, metric));
- dataset-level metrics (PxAP) are bootstrapped over images too: each resample of the
  per-image *states* goes through the metric's own ``aggregate``;
- MI / MI(IG) (ratio of the method's mean MI to Integrated Gradients' mean MI on the same
  images, as the feature-suppression paper reports it: "Sampling Matters in Explanations:
  Towards Robust Attribution Analysis with Feature Suppression", 2024) when both the ``mi``
  score and the ``integrated_gradients`` method are in the run; its CI resamples images
  jointly for the two methods;
- the number of images with a finite value (``n``), with NaN (``n_nan``) and the number of
  training seeds pooled (``n_seeds``, below);
- the rank within the column, and a paired two-sided Wilcoxon signed-rank test (scipy) of
  each method against the column's best over the images both have finite values for, with a
  Holm correction over the methods of the column; ``tied_with_best`` marks the methods whose
  difference to the best is not significant at 5 %;
- an aggregate rank across metrics (``mean_rank`` rows, see :func:`aggregate_rank`).

Learned explainers trained with several seeds (``scores.csv`` column ``train_seed``; the
states of dataset-level metrics as ``{method: {score: {seed: tensor}}}``) are pooled: the
value is the mean over seeds of the per-seed values, its interval comes from a two-level
bootstrap over seeds and images (:func:`pooled_mean_ci`), the Wilcoxon tests use each
image's value averaged over the seeds, and ``n`` still counts images. Rows without a seed
(untrained methods, runs written before the column existed) are one realisation.

Choices documented here (the papers give no rule): the reference rows (``random`` and
``oracle``, which the salvage and COMET papers print to calibrate their tables) are shown but
take no part in the ranking or the tests, so that the Oracle's RMA = 100 does not take the
bold of every mask metric; dataset-level metrics and MI / MI(IG) have no per-image pairs and
are ranked but not tested.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from scipy.stats import bootstrap

from xaibench.metrics import metric_label

from .errors import UserError
from .io import load_torch, read_json
from .registry import METRICS
from .seeding import generator
from .store import verify_run

N_BOOT = 1000
LEVEL = 0.95
ALPHA = 0.05
REFERENCE_METHODS = ("random", "oracle")
IG_METHOD = "integrated_gradients"
MI_METRIC = "mi"
MI_RATIO = "mi_ig"
MI_RATIO_LABEL = "MI/MI(IG)"
#: scores.csv column with the training seed of a learned explainer (empty for untrained methods)
SEED_COLUMN = "train_seed"
#: the aggregate rank across metrics: its rows' ``metric``, its label, and the selections
AGGREGATE = "mean_rank"
AGGREGATE_LABEL = "Mean rank"
RANK_ALL = "all"
RANK_NONE = "none"
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
    "n_seeds",
    "kind",
    "reference",
    "explains_own_model",
    "rank",
    "p_holm",
    "tied_with_best",
    "rank_metrics",
]
_TEST_COLUMNS = ("rank", "p_holm", "tied_with_best")  # added by rank_and_test


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


def _seed_draws(n_seeds: int, g: torch.Generator, n_boot: int) -> torch.Tensor:
    """(n_boot, n_seeds) indices of training seeds drawn with replacement."""
    return torch.randint(n_seeds, (n_boot, n_seeds), generator=g)


def pooled_mean_ci(
    values,
    g: torch.Generator,
    g_seeds: torch.Generator,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
):
    """Percentile-bootstrap CI of the mean over training seeds of the per-seed mean over images.

    ``values`` is (S, N): seed × image, NaN where an image has no value. Seeds and images are
    *crossed* (every seed's explainer is scored on the same images), so each replicate draws
    the images once, with replacement, shared by all seeds, and draws S seeds with
    replacement independently of the images; the replicate is the mean over the drawn seeds of
    each seed's mean over the drawn images. This is the two-factor ("pigeonhole") bootstrap of
    Owen, "The pigeonhole bootstrap", Ann. Appl. Stat. 2007: for a crossed design it covers
    both sources of variance (drawing only images ignores how much retraining moves the
    result; drawing images independently per seed would break the image effect the seeds
    share), and it errs on the wide side (McCullagh, "Resampling and exchangeable arrays",
    Bernoulli 2000, shows no bootstrap is exact for crossed designs). With few seeds (3) the
    seed level has only a handful of distinct draws: the interval is then a coarse one.

    Images with no finite value for any seed are left out first. The image indices come from
    ``g`` exactly as :func:`bootstrap_mean_ci` draws them and the seeds from their own ``g_seeds``,
    so one seed (S = 1) gives the image bootstrap's interval, and S identical seeds give it up
    to float rounding."""
    v = np.atleast_2d(np.asarray(values, dtype=np.float64))
    v = v[:, np.isfinite(v).any(0)]
    if v.shape[0] == 1:
        return bootstrap_mean_ci(v[0], g, n_boot, level)
    if v.shape[1] < 2:
        return float("nan"), float("nan")
    t = torch.tensor(v)
    idx = bootstrap_indices(t.shape[1], g, n_boot)
    per_seed = torch.stack([t[s][idx].nanmean(1) for s in range(t.shape[0])], 1)  # (n_boot, S)
    boots = per_seed.gather(1, _seed_draws(t.shape[0], g_seeds, n_boot)).nanmean(1)
    boots = boots[torch.isfinite(boots)]
    if len(boots) == 0:
        return float("nan"), float("nan")
    return _quantiles(boots, level)


def pooled_statistic_ci(
    n: int,
    statistics: Sequence[Callable[[torch.Tensor], float]],
    g: torch.Generator,
    g_seeds: torch.Generator,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
):
    """:func:`pooled_mean_ci` for any dataset-level value: ``statistics[s](image_indices)`` is
    seed s's value on the drawn images (the same rows for every seed); a replicate is the mean
    over the drawn seeds. One statistic gives :func:`bootstrap_statistic_ci`'s interval."""
    if len(statistics) == 1:
        return bootstrap_statistic_ci(n, statistics[0], g, n_boot, level)
    if n < 2:
        return float("nan"), float("nan")
    idx = bootstrap_indices(n, g, n_boot)
    per_seed = torch.tensor([[stat(i) for stat in statistics] for i in idx], dtype=torch.float64)
    boots = per_seed.gather(1, _seed_draws(len(statistics), g_seeds, n_boot)).nanmean(1)
    boots = boots[torch.isfinite(boots)]
    if len(boots) == 0:
        return float("nan"), float("nan")
    return _quantiles(boots, level)


def ratio_ci(
    num: np.ndarray, den: np.ndarray, g: torch.Generator, n_boot: int = N_BOOT, level: float = LEVEL
):
    """BCa bootstrap CI (``scipy.stats.bootstrap``, images resampled in pairs) of mean(num) /
    mean(den): a ratio's sampling distribution is skewed, which the percentile interval ignores
    (Efron 1987, "Better bootstrap confidence intervals")."""
    if len(num) < 3:
        return float("nan"), float("nan")
    ratios = num / np.where(den == 0, np.nan, den)
    if np.allclose(ratios, ratios[0], equal_nan=True):  # a constant ratio (IG against itself)
        return float(ratios[0]), float(ratios[0])
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate resample gives a NaN interval, not a crash
        res = bootstrap(
            (num, den),
            lambda a, b, axis=-1: a.mean(axis) / b.mean(axis),
            paired=True,
            vectorized=True,
            n_resamples=n_boot,
            confidence_level=level,
            method="BCa",
            random_state=rng,
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


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
    if name == AGGREGATE:  # the summary column comes last
        return (len(PREFERRED_METRIC_ORDER) + 1, "")
    return (
        (PREFERRED_METRIC_ORDER.index(name), "")
        if name in PREFERRED_METRIC_ORDER
        else (len(PREFERRED_METRIC_ORDER), name)
    )


def _label(metric: str) -> str:
    if metric == MI_RATIO:
        return MI_RATIO_LABEL
    if metric == AGGREGATE:
        return AGGREGATE_LABEL
    return metric_label(metric)


# --------------------------------------------------------------------------- training seeds
@dataclass
class ScoreSamples:
    """One method × score of a run: the per-image values of each training seed."""

    images: pd.Index  # image ids, in the order the run wrote them
    values: np.ndarray  # (seeds, images); NaN where an image has no value
    seeds: List[Optional[int]]  # training seeds; [None] for a method without one

    @property
    def per_image(self) -> pd.Series:
        """Each image's value averaged over the seeds (seeds without a value skipped): the paired
        data of the Wilcoxon tests, one value per image as for an untrained method."""
        if len(self.seeds) == 1:
            return pd.Series(self.values[0], index=self.images)
        return pd.DataFrame(self.values.T, index=self.images).mean(axis=1)

    def mean(self) -> float:
        """Mean over seeds of each seed's mean over its finite images: every trained explainer
        weighs the same, whatever its number of NaN images."""
        means = [row[np.isfinite(row)].mean() for row in self.values if np.isfinite(row).any()]
        if len(means) == 1:
            return float(means[0])
        return float(np.mean(means)) if means else float("nan")


def score_samples(scores: pd.DataFrame) -> Dict[tuple, ScoreSamples]:
    """(method, score) → :class:`ScoreSamples` from a ``scores.csv`` frame, with or without
    the ``train_seed`` column (several rows of one image and seed are averaged, as before)."""
    out: Dict[tuple, ScoreSamples] = {}
    if not len(scores):
        return out
    has_seeds = SEED_COLUMN in scores.columns
    for (method, metric), g in scores.groupby(["method", "metric"], sort=False):
        images = pd.Index(pd.unique(g["image_id"]), name="image_id")
        seeded = g[SEED_COLUMN].notna() if has_seeds else None
        if seeded is None or not seeded.any():
            s = g.groupby("image_id", sort=False)["value"].mean()
            out[(method, metric)] = ScoreSamples(images, s.reindex(images).to_numpy(float)[None], [None])
            continue
        if not seeded.all():
            raise UserError(
                f"scores.csv: method '{method}' has rows with and rows without a {SEED_COLUMN} "
                f"(metric '{metric}'); a method is either trained with seeds or not"
            )
        try:
            seeds = sorted({int(x) for x in g[SEED_COLUMN]})
        except (TypeError, ValueError):
            raise UserError(f"scores.csv: {SEED_COLUMN} of method '{method}' is not an integer") from None
        rows = [
            g[g[SEED_COLUMN].astype(int) == seed]
            .groupby("image_id", sort=False)["value"]
            .mean()
            .reindex(images)
            .to_numpy(float)
            for seed in seeds
        ]
        out[(method, metric)] = ScoreSamples(images, np.vstack(rows), seeds)
    return out


def states_by_seed(states) -> Tuple[List[Optional[int]], List[torch.Tensor]]:
    """(seeds, per-seed state tensors) of one method × dataset-level score in ``states.pt``: a
    tensor (one realisation, seed None) or ``{seed: tensor}`` (one per training seed)."""
    if isinstance(states, dict):
        keys = sorted(states, key=int)
        return [int(k) for k in keys], [states[k] for k in keys]
    return [None], [states]


def _as_float(st: torch.Tensor) -> torch.Tensor:
    return st.double() if st.is_floating_point() else st


# --------------------------------------------------------------------------- the table
def build_leaderboard(
    run: RunResults | str | Path,
    *,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    rank_metrics=RANK_ALL,
    strict: bool = True,
) -> pd.DataFrame:
    """One row per method × score of one run, plus the aggregate rank's rows (see the module
    docstring for every column; ``rank_metrics`` and ``strict`` as in :func:`aggregate_rank`)."""
    if not isinstance(run, RunResults):
        run = load_run(run)
    directions = run.directions()
    seed = run.seed
    rows: List[dict] = []

    def row(method, metric, mean, lo, hi, n, n_nan, kind, n_seeds=1, note=""):
        info = run.method_info(method)
        return {
            "run_id": run.run_id,
            "dataset": run.dataset,
            "model": run.model,
            "method": method,
            "method_label": run.method_label(method),
            "metric": metric,
            "metric_label": _label(metric),
            "direction": directions.get(metric, {MI_RATIO: "up", AGGREGATE: "down"}.get(metric, "")),
            "mean": mean,
            "ci_low": lo,
            "ci_high": hi,
            "n": int(n),
            "n_nan": int(n_nan),
            "n_seeds": int(n_seeds),
            "kind": kind,
            "reference": method in REFERENCE_METHODS,
            "explains_own_model": bool(info.get("explains_own_model", False)),
            "rank_metrics": note,
        }

    samples = score_samples(run.scores)
    per_image: Dict[tuple, pd.Series] = {}
    for (method, metric), smp in samples.items():
        s = per_image[(method, metric)] = smp.per_image  # one value per image (seeds averaged)
        finite = np.isfinite(s.to_numpy(dtype=float))
        lo, hi = pooled_mean_ci(
            smp.values,
            generator(seed, "bootstrap", method, metric),
            generator(seed, "bootstrap_seeds", method, metric),
            n_boot,
        )
        rows.append(
            row(
                method, metric, smp.mean(), lo, hi, finite.sum(), (~finite).sum(), "per_image", len(smp.seeds)
            )
        )

    aggregators = _aggregators(run)
    for method, per_metric in run.states.items():
        for name, raw in per_metric.items():
            agg = aggregators.get(name)
            seeds, sts = states_by_seed(raw)
            if agg is None or len(sts[0]) == 0:
                continue
            if any(len(st) != len(sts[0]) for st in sts):
                raise UserError(
                    f"states.pt: the seeds of {method} / {name} have different numbers of images "
                    f"({', '.join(str(len(st)) for st in sts)}); each seed needs one row per image, in "
                    f"the same order"
                )
            sts = [_as_float(st) for st in sts]
            values = [float(agg.aggregate(name, st)) for st in sts]
            lo, hi = pooled_statistic_ci(
                len(sts[0]),
                [lambda idx, a=agg, n=name, s=st: float(a.aggregate(n, s[idx])) for st in sts],
                generator(seed, "bootstrap", method, name),
                generator(seed, "bootstrap_seeds", method, name),
                n_boot,
            )
            value = values[0] if len(values) == 1 else float(np.nanmean(values))
            rows.append(row(method, name, value, lo, hi, len(sts[0]), 0, "dataset", len(seeds)))

    if (IG_METHOD, MI_METRIC) in samples:
        rows += [
            row(method, MI_RATIO, *ratio, "ratio", len(smp.seeds))
            for (method, metric), smp in samples.items()
            if metric == MI_METRIC
            for ratio in [_mi_ratio(smp, per_image[(IG_METHOD, MI_METRIC)], seed, method, n_boot)]
        ]

    table = pd.DataFrame(rows, columns=[c for c in LEADERBOARD_COLUMNS if c not in _TEST_COLUMNS])
    aggregate = aggregate_rank(run, table, samples, rank_metrics, n_boot=n_boot, strict=strict)
    if aggregate:
        table = pd.concat(
            [table, pd.DataFrame([row(**r, kind="aggregate") for r in aggregate], columns=table.columns)],
            ignore_index=True,
        )
    return rank_and_test(table, per_image, alpha)


def _mi_ratio(smp: ScoreSamples, ig: pd.Series, seed: int, method: str, n_boot: int):
    """(value, ci_low, ci_high, n, n_nan) of MI / MI(IG) on the images both have; with several
    training seeds, the mean over seeds of each seed's ratio, bootstrapped like the means."""
    s = smp.per_image
    both = pd.concat([s, ig], axis=1, join="inner")
    both = both[np.isfinite(both.to_numpy(dtype=float)).all(1)]
    g = generator(seed, "bootstrap", method, MI_RATIO)
    if len(smp.seeds) == 1:
        pair = both.to_numpy(dtype=float)
        value = float(pair[:, 0].mean() / pair[:, 1].mean()) if len(pair) else float("nan")
        lo, hi = ratio_ci(pair[:, 0], pair[:, 1], g, n_boot)
    else:
        pos = smp.images.get_indexer(both.index)
        num = torch.tensor(smp.values[:, pos])  # (seeds, images); a seed may lack an image
        den = torch.tensor(both.iloc[:, 1].to_numpy(dtype=float))
        stats = [lambda idx, k=k: float(num[k][idx].nanmean() / den[idx].mean()) for k in range(len(num))]
        everything = torch.arange(len(den))
        value = float(np.nanmean([f(everything) for f in stats])) if len(den) else float("nan")
        lo, hi = pooled_statistic_ci(
            len(den), stats, g, generator(seed, "bootstrap_seeds", method, MI_RATIO), n_boot
        )
    return value, lo, hi, len(both), len(s) - len(both)


# --------------------------------------------------------------------------- aggregate rank
def score_families(run: RunResults) -> Dict[str, Tuple[str, Optional[str]]]:
    """Score name → (family, category) for the scores of the run's metrics.

    The family is the metric class that computes the score (its registered name: ``srg`` for
    MIF, LIF and SRG), from the registry, else the run's config entry that provides it. The
    category is the one the run recorded in ``config.json`` (``metrics.<name>.category``), else
    the class's ``category`` attribute, else None."""
    out: Dict[str, Tuple[str, Optional[str]]] = {}
    for entry, info in run.config.get("metrics", {}).items():
        for score in info.get("provides", [entry]):
            cls = METRICS.get(score) if score in METRICS else None
            family = getattr(cls, "name", "") or entry
            category = info["category"] if "category" in info else getattr(cls, "category", None)
            out[score] = (family, category.lower() if isinstance(category, str) else None)
    return out


def rankable_scores(run: RunResults, table: pd.DataFrame) -> Dict[str, Tuple[str, Optional[str]]]:
    """The scores of ``table`` that can enter the aggregate rank → (family, category): scores of
    a metric of the run (not MI / MI(IG), a ratio whose order is MI's), with a better side (↑/↓;
    raw values such as ``cs_score_a1`` have none)."""
    families = score_families(run)
    ok = table["kind"].isin(["per_image", "dataset"]) & table["direction"].isin(["up", "down"])
    return {m: families[m] for m in dict.fromkeys(table.loc[ok, "metric"]) if m in families}


def _tokens(spec) -> List[str]:
    if spec is None:
        return [RANK_ALL]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [t.strip().lower() for t in items if t.strip()] or [RANK_ALL]


def resolve_rank_metrics(spec, rankable: Dict[str, Tuple[str, Optional[str]]]):
    """(selected scores in display order, explicit, tokens that matched nothing) for a selection:
    ``all``, ``none``, category names (``faithfulness``, ``localisation``, any declared one), score
    names or shell wildcards, comma-separated and combinable (``localisation,srg``)."""
    tokens = _tokens(spec)
    if tokens == [RANK_NONE]:
        return [], True, []
    chosen, unmatched = set(), []
    for token in tokens:
        if token == RANK_ALL:
            hits = list(rankable)
        else:
            hits = [s for s, (_, c) in rankable.items() if c == token] or fnmatch.filter(
                list(rankable), token
            )
        chosen.update(hits)
        if not hits and token != RANK_ALL:  # "all" of nothing is nothing, not a typo
            unmatched.append(token)
    return sorted(chosen, key=metric_sort_key), tokens != [RANK_ALL], unmatched


def _rank_error(tokens: Sequence[str], rankable: Dict[str, tuple], scores: Sequence[str]) -> UserError:
    categories = sorted({c for _, c in rankable.values() if c})
    bad = [t for t in tokens if t in scores]
    why = (
        f"'{bad[0]}' cannot be ranked (it has no better side, or it is derived from another score)"
        if bad
        else f"no metric or category '{tokens[0]}' to rank on"
    )
    return UserError(
        f"--rank-metrics: {why}. Rankable: {', '.join(rankable) or '(none)'}; "
        f"categories: {', '.join(categories) or '(none)'}; or 'all', 'none'"
    )


def mean_ranks(values: np.ndarray, signs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over scores of each method's rank: ``values`` (..., methods, scores) → (...,
    methods). Rank 1 is the best (the largest ↑ score, the smallest ↓ one); tied methods share the
    average of their ranks, so that every score hands out the same total 1 + … + M whatever its
    ties (Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 2006).
    A score with a NaN among the methods makes the result NaN."""
    from scipy.stats import rankdata

    ranks = rankdata(-values * signs, axis=-2, method="average")
    return (ranks * weights).sum(-1) / weights.sum()


def _image_positions(run: RunResults, method: str, n_rows: int, pos: Dict[str, int]) -> Optional[np.ndarray]:
    """Positions in the run's image list of the rows of ``method``'s states: the harness writes
    them in the order it scores the images, the order of the method's rows in ``scores.csv``."""
    scores = run.scores
    ids = pd.unique(scores.loc[scores["method"] == method, "image_id"]) if len(scores) else []
    if len(ids) == n_rows and all(i in pos for i in ids):
        return np.array([pos[i] for i in ids])
    if n_rows == len(pos):
        return np.arange(n_rows)
    return None


def aggregate_rank(
    run: RunResults,
    table: pd.DataFrame,
    samples: Dict[tuple, ScoreSamples],
    rank_metrics=RANK_ALL,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    strict: bool = True,
) -> List[dict]:
    """Rows (method, mean, lo, hi, n, n_nan, n_seeds, note) of the mean rank across metrics.

    Which scores enter (``rank_metrics``, see :func:`resolve_rank_metrics`; default all): only
    scores with a better side. MIF, LIF and SRG are one experiment (SRG = MIF − LIF), as are
    R-MIF/R-LIF/R-SRG, fidelity at three thresholds, completeness/soundness or RMA/RRA: counting
    each score once would give the insertion curves three votes for PxAP's one. So each metric
    *family* (the class that computes the scores) has one vote, split equally among its scores
    that entered (MIF, LIF, SRG: 1/3 each). This needs no list of "headline" scores, and a
    family whose scores measure different things (completeness vs soundness, RMA vs RRA) keeps
    both; ``--rank-metrics srg,r_srg`` ranks on the salvage paper's headline scores alone.
    By default the aggregate is left out when a single family enters (one experiment alone is
    no ranking across metrics); an explicit selection needs two scores.

    Methods ranked: the non-reference methods with a finite value for every score that entered
    (ranks are taken among them only); any other method gets a NaN row. The point estimate
    ranks the table's means (pooled over training seeds). The interval is a percentile
    bootstrap: each replicate draws the run's images with replacement once, for all methods
    and scores (so that the ranks compare methods on the same images), and for each method with
    several training seeds draws its seeds with replacement, shared by its scores (one trained
    explainer is scored by every metric); every score is recomputed on the drawn images (the
    mean over the drawn seeds of each seed's mean; dataset-level scores such as PxAP through
    their metric's ``aggregate`` on the drawn rows), the methods are ranked per score and the
    ranks averaged. ``strict`` raises on a selection token that matches nothing here (the
    multi-run :func:`leaderboard` checks tokens against all runs instead)."""
    rankable = rankable_scores(run, table)
    selected, explicit, unmatched = resolve_rank_metrics(rank_metrics, rankable)
    if strict and unmatched:
        raise _rank_error(unmatched, rankable, list(dict.fromkeys(table["metric"])))
    families: Dict[str, List[str]] = {}
    for score in selected:
        families.setdefault(rankable[score][0], []).append(score)
    if len(selected) < 2 or (not explicit and len(families) < 2):
        return []
    weights = np.array([1.0 / len(families[rankable[s][0]]) for s in selected])
    note = "; ".join("+".join(scores) for scores in families.values())
    cand = table[~table["reference"] & table["metric"].isin(selected)]
    means = {(r.method, r.metric): float(r.mean) for r in cand.itertuples()}
    direction = dict(zip(table["metric"], table["direction"]))
    signs = np.array([-1.0 if direction[s] == "down" else 1.0 for s in selected])
    methods = list(dict.fromkeys(table.loc[~table["reference"], "method"]))

    # the joint resample: every image of the run, the rows of dataset-level states placed on them
    images = list(dict.fromkeys(i for (m, k), smp in samples.items() if k in selected for i in smp.images))
    if not images:
        n_rows = [
            len(states_by_seed(run.states[m][k])[1][0])
            for m in methods
            for k in selected
            if k in run.states.get(m, {})
        ]
        images = [f"#{i}" for i in range(max(n_rows, default=0))]
    pos = {i: p for p, i in enumerate(images)}
    data: Dict[str, Dict[str, tuple]] = {}
    for m in methods:
        cells = {}
        for k in selected:
            if not np.isfinite(means.get((m, k), np.nan)):
                break
            if (m, k) in samples:
                smp = samples[(m, k)]
                full = np.full((len(smp.seeds), len(images)), np.nan)
                full[:, [pos[i] for i in smp.images]] = smp.values
                cells[k] = ("per_image", smp.seeds, full)
            else:
                seeds, sts = states_by_seed(run.states[m][k])
                where = _image_positions(run, m, len(sts[0]), pos)
                if where is None:
                    break
                row_of = np.full(len(images), -1)
                row_of[where] = np.arange(len(where))
                cells[k] = ("dataset", seeds, ([_as_float(st) for st in sts], row_of))
        else:
            data[m] = cells
    ranked = [m for m in methods if m in data]
    if len(ranked) < 2:
        return []

    point = mean_ranks(np.array([[means[(m, k)] for k in selected] for m in ranked]), signs, weights)
    idx = bootstrap_indices(len(images), generator(run.seed, "bootstrap", AGGREGATE), n_boot)
    aggregators = _aggregators(run)
    boots = np.full((n_boot, len(ranked), len(selected)), np.nan)
    n_seeds = {}
    for j, m in enumerate(ranked):
        seeds = sorted(
            {s for _, ss, _ in data[m].values() for s in ss}, key=lambda s: (s is not None, s or 0)
        )
        if None in seeds and len(seeds) > 1:
            raise UserError(
                f"method '{m}' has scores with and scores without a {SEED_COLUMN} (scores.csv and "
                "states.pt disagree); a method is either trained with seeds or not"
            )
        n_seeds[m] = len(seeds)
        draws = (
            _seed_draws(len(seeds), generator(run.seed, "bootstrap_seeds", m, AGGREGATE), n_boot)
            if len(seeds) > 1
            else torch.zeros((n_boot, 1), dtype=torch.long)
        )
        for q, k in enumerate(selected):
            kind, cell_seeds, payload = data[m][k]
            per_seed = torch.full((n_boot, len(seeds)), float("nan"), dtype=torch.float64)
            for c, s in enumerate(cell_seeds):
                if kind == "per_image":
                    per_seed[:, seeds.index(s)] = torch.tensor(payload[c])[idx].nanmean(1)
                else:
                    sts, row_of = payload
                    rows = torch.as_tensor(row_of)[idx]  # state rows of the drawn images; -1: none
                    if not (rows >= 0).all():
                        rows = [r[r >= 0] for r in rows]
                    per_seed[:, seeds.index(s)] = torch.tensor(
                        [float(aggregators[k].aggregate(k, sts[c][r])) for r in rows], dtype=torch.float64
                    )
            boots[:, j, q] = per_seed.gather(1, draws).nanmean(1).numpy()
    replicates = mean_ranks(boots, signs, weights)  # (n_boot, methods)
    out = []
    for j, m in enumerate(ranked):
        r = torch.tensor(replicates[:, j])
        r = r[torch.isfinite(r)]
        lo, hi = _quantiles(r, level) if len(r) else (float("nan"), float("nan"))
        out.append(dict(method=m, mean=float(point[j]), lo=lo, hi=hi, n=len(images), n_nan=0))
        out[-1].update(n_seeds=n_seeds[m], note=note)
    for m in methods:
        if m not in data:
            out.append(dict(method=m, mean=float("nan"), lo=float("nan"), hi=float("nan"), n=0, n_nan=0))
            out[-1].update(n_seeds=1, note=note)
    return [{"metric": AGGREGATE, **r} for r in out]


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


def leaderboard(
    run_dirs: Sequence[str | Path], *, metrics=None, methods=None, rank_metrics=RANK_ALL, verify: bool = True
) -> tuple:
    """(merged table, [RunResults]) for the CLI and the exports. ``rank_metrics`` selects the
    scores of the aggregate rank (per run; a token must match in at least one of the runs);
    ``verify`` checks that each run is finished and unmodified."""
    runs = [load_run(d, verify) for d in run_dirs]
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise UserError(
            f"the same run was given twice: {', '.join(sorted({i for i in ids if ids.count(i) > 1}))}"
        )
    tables = [build_leaderboard(r, rank_metrics=rank_metrics, strict=False) for r in runs]
    rankable: Dict[str, tuple] = {}
    unmatched = set(_tokens(rank_metrics))
    for r, t in zip(runs, tables):
        here = rankable_scores(r, t)
        rankable.update(here)
        unmatched &= set(resolve_rank_metrics(rank_metrics, here)[2])
    if unmatched:
        scores = [m for t in tables for m in dict.fromkeys(t["metric"])]
        raise _rank_error([t for t in _tokens(rank_metrics) if t in unmatched], rankable, scores)
    table = merge_runs(tables)
    return select(table, metrics=metrics, methods=methods), runs
