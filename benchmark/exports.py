"""Leaderboard writers: Markdown (GitHub table), LaTeX (booktabs), tidy CSV and JSON.

All of them take the table of :mod:`xaibench.leaderboard` (one row per run × method × metric)
and lay it out like the papers' tables: one row per method, one column group per run
(dataset / model), a ↑ or ↓ after each metric, the best value of each column in bold and the
second best underlined (LaTeX; italic in Markdown, which has no underline), † on values not
significantly different from the column's best and * on methods that explain their own model.
The aggregate rank is one more column ("Mean rank ↓", last in its group) with the scores that
entered it under the table; the CSV and JSON carry it as rows (``metric`` = ``mean_rank``, the
scores in ``rank_metrics``). Methods pooled over several training seeds are named under the table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from xaibench.metrics import metric_label
from xaibench.metrics.sanity import BARELY_CHANGES

from .errors import UserError
from .io import write_text
from .leaderboard import (
    AGGREGATE,
    AGGREGATE_LABEL,
    ALPHA,
    LEVEL,
    N_BOOT,
    REFERENCE_METHODS,
    leaderboard,
    merge_runs,
    metric_sort_key,
    ordered,
)
from .registry import METRICS

FORMATS = ("markdown", "latex", "csv", "json")
EXTENSIONS = {"markdown": "md", "latex": "tex", "csv": "csv", "json": "json"}
ARROWS = {"up": "↑", "down": "↓"}
NOT_SIGNIFICANT = "†"
OWN_MODEL = "*"


# --------------------------------------------------------------------------- layout
def _with_group(table: pd.DataFrame) -> pd.DataFrame:
    return table if "group" in table.columns else merge_runs([table])


def columns(table: pd.DataFrame) -> List[Tuple[str, str]]:
    """(group, metric) pairs in display order: groups as given, metrics by preference."""
    out = []
    for group in dict.fromkeys(table["group"]):
        metrics = dict.fromkeys(table.loc[table["group"] == group, "metric"])
        out += [(group, m) for m in sorted(metrics, key=metric_sort_key)]
    return out


def decimals(values: Sequence[float]) -> int:
    """Digits after the point for a column: 2 for values ≥ 1 (scores ×100), more for small ones."""
    v = np.abs(np.asarray([x for x in values if np.isfinite(x)], dtype=float))
    big = v.max() if len(v) else 1.0
    return 2 if big >= 1 else 3 if big >= 0.01 else 4


class Cell:
    def __init__(self, r, digits: int) -> None:
        self.mean, self.lo, self.hi = float(r.mean), float(r.ci_low), float(r.ci_high)
        self.rank = r.rank
        self.tied = bool(r.tied_with_best)
        self.digits = digits
        # a mean rank's interval is lopsided near 1 and near the number of methods: shown as is
        self.as_interval = r.metric == AGGREGATE

    @property
    def finite(self) -> bool:
        return math.isfinite(self.mean)

    def value(self) -> str:
        return f"{self.mean:.{self.digits}f}" if self.finite else "n/a"

    def half_width(self) -> Optional[str]:
        if self.as_interval or not (self.finite and math.isfinite(self.lo) and math.isfinite(self.hi)):
            return None
        return f"{(self.hi - self.lo) / 2:.{self.digits}f}"

    def interval(self) -> Optional[str]:
        """ "[low, high]" for the cells whose interval is shown as bounds (the mean rank)."""
        if not (self.as_interval and self.finite and math.isfinite(self.lo) and math.isfinite(self.hi)):
            return None
        return f"[{self.lo:.{self.digits}f}, {self.hi:.{self.digits}f}]"

    @property
    def best(self) -> bool:
        return self.rank == 1

    @property
    def second(self) -> bool:
        return self.rank == 2


def grid(table: pd.DataFrame):
    """(methods, column keys, cells {(method, (group, metric)): Cell}, row info) of a table."""
    table = _with_group(table)
    cols = columns(table)
    digits = {m: decimals(table.loc[table["metric"] == m, "mean"].astype(float)) for _, m in cols}
    cells = {(r.method, (r.group, r.metric)): Cell(r, digits[r.metric]) for r in table.itertuples()}
    methods = ordered(list(table["method"]), table)
    info = {
        m: {
            "label": table.loc[table["method"] == m, "method_label"].iloc[0],
            "own": bool(table.loc[table["method"] == m, "explains_own_model"].any()),
        }
        for m in methods
    }
    directions = {
        (g, m): table.loc[(table["group"] == g) & (table["metric"] == m), "direction"].iloc[0]
        for g, m in cols
    }
    labels = {
        (g, m): table.loc[(table["group"] == g) & (table["metric"] == m), "metric_label"].iloc[0]
        for g, m in cols
    }
    return methods, cols, cells, info, directions, labels


def legend(table: pd.DataFrame, ci: bool, runs_info: Optional[list] = None) -> List[str]:
    """The notes under a table, as plain sentences."""
    lines = [
        f"{'Mean ± half-width of the ' if ci else 'Mean over images; '}"
        f"{int(LEVEL * 100)} % bootstrap confidence interval over images ({N_BOOT} resamples)"
        f"{'.' if ci else ' in the CSV/JSON exports.'} "
        f"Best of each column in bold, second best marked; the reference rows "
        f"({', '.join(m.capitalize() for m in REFERENCE_METHODS)}) are not ranked.",
        f"{NOT_SIGNIFICANT} not significantly different from the best of its column (paired Wilcoxon "
        f"signed-rank test over images, Holm-corrected, {int(ALPHA * 100)} % level).",
    ]
    if table["explains_own_model"].any():
        lines.append(
            f"{OWN_MODEL} explains its own model (the metrics run on that model's predictions, "
            f"not on the classifier's)."
        )
    lines += aggregate_notes(table) + seed_notes(table) + sanity_notes(table)
    nan = table[(table["n_nan"] > 0) & ~table["metric"].map(_sampled)]
    if len(nan):
        lines.append(
            "Images with no value (NaN), left out of the mean: "
            + ", ".join(f"{r.method_label} {r.metric_label} ({r.n_nan})" for r in nan.itertuples())
            + "."
        )
    return lines + not_run(runs_info)


def _sampled(metric: str) -> bool:
    """Scores computed on a sample of the images only: their NaNs are not failures."""
    return metric in METRICS and getattr(METRICS.get(metric), "sampled", False)


def sanity_notes(table: pd.DataFrame) -> List[str]:
    """What the randomisation columns mean, and the methods whose maps barely change."""
    rows = table[table["metric"].isin(("rand_top", "rand_all"))]
    if rows.empty:
        return []
    lines = [
        "Rand. top / Rand. all: Spearman correlation between each map and the map of the same method on "
        "the classifier with its last block / every layer re-initialised (Adebayo et al. 2018), on a seeded "
        "sample of the images; near 0 = the map depends on the learned weights. n/a: the method does not "
        "query the classifier when it explains (learned explainers, COMET, reference rows)."
    ]
    what = {"rand_all": "every layer of the classifier is", "rand_top": "the classifier's last block is"}
    for r in rows[rows["mean"] >= BARELY_CHANGES].sort_values("metric").itertuples():
        lines.append(
            f"{r.method_label}: its maps barely change when {what[r.metric]} re-initialised (Spearman "
            f"{r.mean:.2f} ≥ {BARELY_CHANGES}): they say little about what "
            + ("the classifier learned." if r.metric == "rand_all" else "its last block learned.")
        )
    return lines


def _fraction(k: int) -> str:
    return "" if k == 1 else f" (1/{k} each)"


def rank_metrics_text(note: str, labels: Dict[str, str]) -> str:
    """ "srg+mif+lif; rma" → "SRG, MIF, LIF (1/3 each); RMA" (families separated by ';')."""
    families = [f.split("+") for f in str(note).split("; ") if f]
    return "; ".join(
        ", ".join(labels.get(s) or metric_label(s) for s in f) + _fraction(len(f)) for f in families
    )


def aggregate_notes(table: pd.DataFrame) -> List[str]:
    """What the mean-rank column is and which scores entered it (one line per distinct set)."""
    agg = table[table["metric"] == AGGREGATE]
    if agg.empty:
        return []
    labels = dict(zip(table["metric"], table["metric_label"]))
    several = table["group"].nunique() > 1 if "group" in table.columns else False
    notes = {}
    for note, g in agg.groupby("rank_metrics", sort=False):
        groups = list(dict.fromkeys(g["group"])) if several else []
        notes[note] = groups
    lines = [
        f"{AGGREGATE_LABEL} {ARROWS['down']}: each method's rank on every score (ties share the average "
        f"rank; reference rows not ranked) averaged with one vote per metric family, shared by its scores; "
        f"its {int(LEVEL * 100)} % interval, shown as [low, high], resamples the images (and training seeds) "
        f"jointly for all methods and scores."
    ]
    for note, groups in notes.items():
        where = f" in {', '.join(groups)}" if groups else ""
        lines.append(f"Scores in the {AGGREGATE_LABEL.lower()}{where}: {rank_metrics_text(note, labels)}.")
    missing = agg[~np.isfinite(agg["mean"].astype(float))]
    if len(missing):
        lines.append(
            f"No {AGGREGATE_LABEL.lower()} (a score is missing): "
            + ", ".join(dict.fromkeys(missing["method_label"]))
            + "."
        )
    return lines


def seed_notes(table: pd.DataFrame) -> List[str]:
    """The methods pooled over several training seeds."""
    if "n_seeds" not in table.columns:
        return []
    pooled = table[table["n_seeds"] > 1].groupby("method_label", sort=False)["n_seeds"].max()
    if pooled.empty:
        return []
    return [
        "Pooled over training seeds (mean over seeds of the per-seed values; interval from a bootstrap "
        "over seeds and images): " + ", ".join(f"{m} ({n} seeds)" for m, n in pooled.items()) + "."
    ]


def not_run(runs_info: Optional[list]) -> List[str]:
    """Per run: the methods that FAILED (with where their traceback is) and those skipped, with
    the reason; then each method's own caveats (``notes``)."""
    lines = []
    for run in runs_info or []:
        where = f"{run.dataset} / {run.model}"
        methods = run.config.get("methods", {})
        for status, title in (("failed", "FAILED in"), ("skipped", "Not in")):
            chosen = {m: i for m, i in methods.items() if i.get("status") == status}
            if chosen:
                lines.append(f"{title} {where}: " + "; ".join(_why(m, i) for m, i in chosen.items()) + ".")
        for m, i in methods.items():
            for note in i.get("notes") or []:
                lines.append(f"{i.get('label') or m}: {note}")
    return lines


def _why(method: str, info: dict) -> str:
    reason = (info.get("reason") or "").splitlines()
    text = f"{method} ({reason[0] if reason else info.get('status')}"
    if info.get("traceback_file"):
        text += f"; traceback in {info['traceback_file']}"
    return text + ")"


# --------------------------------------------------------------------------- Markdown
def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def to_markdown(table: pd.DataFrame, ci: bool = True, runs_info: Optional[list] = None) -> str:
    """GitHub table: methods as rows; headers "group · metric ↑" when several runs are merged."""
    if table.empty:
        return "\n".join(["(no results)"] + not_run(runs_info)) + "\n"
    table = _with_group(table)
    methods, cols, cells, info, directions, labels = grid(table)
    several = len({g for g, _ in cols}) > 1
    head = ["Method"] + [
        (f"{g} · " if several else "") + f"{labels[c]} {ARROWS.get(directions[c], '')}".strip()
        for c in cols
        for g in [c[0]]
    ]
    lines = ["| " + " | ".join(_md_escape(h) for h in head) + " |", "|---|" + "---:|" * len(cols)]
    for m in methods:
        row = [_md_escape(info[m]["label"]) + (f" {OWN_MODEL}" if info[m]["own"] else "")]
        for c in cols:
            cell = cells.get((m, c))
            if cell is None:
                row.append("")
                continue
            text = cell.value()
            hw = cell.half_width() if ci else None
            if cell.best:
                text = f"**{text}**"
            elif cell.second:
                text = f"_{text}_"
            if hw is not None:
                text += f" ± {hw}"
            elif ci and cell.interval():
                text += f" {cell.interval()}"
            if cell.tied:
                text += f" {NOT_SIGNIFICANT}"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    notes = legend(table, ci, runs_info)
    notes[0] = notes[0].replace("second best marked", "second best in italics")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


# --------------------------------------------------------------------------- LaTeX
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "×": r"$\times$",
    "±": r"$\pm$",
    "→": r"$\rightarrow$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "†": r"\textsuperscript{\dag}",
    "·": r"$\cdot$",
    "≈": r"$\approx$",
    "φ": r"$\varphi$",
    "σ": r"$\sigma$",
    "λ": r"$\lambda$",
    "α": r"$\alpha$",
    "–": "--",
    "—": "---",
    "−": "-",
}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table: the special characters escaped, the usual symbols mapped
    to math, anything else non-ASCII replaced by '?' (pdfLaTeX would fail on it)."""
    out = []
    for ch in str(text):
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def to_latex(
    table: pd.DataFrame,
    ci: bool = True,
    caption: Optional[str] = None,
    label: str = "tab:xaibench",
    runs_info: Optional[list] = None,
    standalone: bool = False,
) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``); ``standalone`` wraps it in a
    compilable document."""
    if table.empty:
        raise UserError("nothing to put in the LaTeX table: no results match the selection")
    table = _with_group(table)
    methods, cols, cells, info, directions, labels = grid(table)
    groups = list(dict.fromkeys(g for g, _ in cols))
    spec = "l" + "".join("c" * sum(1 for g2, _ in cols if g2 == g) for g in groups)
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if len(groups) > 1 or groups[0]:
        head, rules, start = [""], [], 2
        for g in groups:
            width = sum(1 for g2, _ in cols if g2 == g)
            head.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(g)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        out.append(" & ".join(head) + r" \\")
        out.append(" ".join(rules))
    arrows = {"up": r"$\uparrow$", "down": r"$\downarrow$"}
    out.append(
        " & ".join(
            ["Method"] + [f"{latex_escape(labels[c])} {arrows.get(directions[c], '')}".strip() for c in cols]
        )
        + r" \\"
    )
    out.append(r"\midrule")
    first_reference = True
    for m in methods:
        if m in REFERENCE_METHODS and first_reference and any(x not in REFERENCE_METHODS for x in methods):
            out.append(r"\midrule")
            first_reference = False
        row = [latex_escape(info[m]["label"]) + (r"$^{*}$" if info[m]["own"] else "")]
        for c in cols:
            cell = cells.get((m, c))
            if cell is None:
                row.append("--")
                continue
            text = cell.value().replace("-", "$-$")
            if cell.best:
                text = rf"\textbf{{{text}}}"
            elif cell.second:
                text = rf"\underline{{{text}}}"
            hw = cell.half_width() if ci else None
            if hw is not None:
                text += rf"{{\scriptsize$\pm${hw}}}"
            elif ci and cell.interval():
                text += rf"{{\scriptsize{cell.interval().replace('-', '$-$')}}}"
            if cell.tied:
                text += r"\textsuperscript{\dag}"
            row.append(text)
        out.append(" & ".join(row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    notes = legend(table, ci, runs_info)
    notes[0] = notes[0].replace("second best marked", "second best underlined")
    text = (caption + " " if caption else "") + " ".join(notes)
    out += [rf"\caption{{{latex_escape(text)}}}", rf"\label{{{label}}}", r"\end{table}"]
    body = "\n".join(out) + "\n"
    if standalone:
        body = (
            "\\documentclass{article}\n\\usepackage{booktabs}\n"
            "\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n" + body + "\\end{document}\n"
        )
    return body


# --------------------------------------------------------------------------- CSV / JSON
def to_csv(table: pd.DataFrame) -> str:
    """Tidy: one row per run × method × metric, every column of the table."""
    return _with_group(table).to_csv(index=False)


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _clean(obj.item())
    return obj


def to_json(table: pd.DataFrame, runs_info: Optional[list] = None) -> str:
    """Everything: the rows, the settings of the statistics, and each run's full config.json."""
    table = _with_group(table)
    doc = {
        "statistics": {
            "confidence_level": LEVEL,
            "bootstrap_resamples": N_BOOT,
            "bootstrap": "percentile",
            "test": "paired two-sided Wilcoxon signed-rank vs the best of each column",
            "correction": "holm",
            "alpha": ALPHA,
            "reference_rows": list(REFERENCE_METHODS),
            "aggregate_rank": {
                "metric": AGGREGATE,
                "value": "mean over the scores that entered of each method's rank (1 = best, ↑/↓ respected, "
                "ties share the average rank), one vote per metric family shared equally by its scores",
                "scores": "rows' rank_metrics: families separated by '; ', scores of a family by '+'",
                "interval": "percentile bootstrap; each replicate resamples the images jointly for all "
                "methods and scores (and each method's training seeds), recomputes every score and re-ranks",
            },
            "training_seeds": "rows with n_seeds > 1 pool the seeds: mean over seeds of the per-seed values; "
            "interval from a two-level bootstrap (seeds with replacement, images with replacement shared by "
            "the seeds); Wilcoxon tests on per-image values averaged over the seeds",
        },
        "rows": table.to_dict(orient="records"),
        "runs": [
            {
                "dir": str(r.dir),
                "run_id": r.run_id,
                "dataset": r.dataset,
                "model": r.model,
                "config": r.config,
            }
            for r in (runs_info or [])
        ],
    }
    return json.dumps(_clean(doc), indent=2, ensure_ascii=False) + "\n"


def render(table: pd.DataFrame, fmt: str, *, ci: bool = True, runs_info: Optional[list] = None) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'. Valid formats: {', '.join(FORMATS)}")
    if fmt == "markdown":
        return to_markdown(table, ci=ci, runs_info=runs_info)
    if fmt == "latex":
        return to_latex(table, ci=ci, runs_info=runs_info)
    if fmt == "csv":
        return to_csv(table)
    return to_json(table, runs_info=runs_info)


def write_leaderboards(run_dir: str | Path) -> str:
    """Aggregate a finished run and write leaderboard.{md,tex,csv,json} into it; returns the Markdown."""
    table, runs = leaderboard([run_dir], verify=False)  # the run writes these before it is sealed
    texts: Dict[str, str] = {}
    for fmt in FORMATS:
        if fmt == "latex" and table.empty:
            continue
        texts[fmt] = render(table, fmt, runs_info=runs)
        write_text(Path(run_dir) / f"leaderboard.{EXTENSIONS[fmt]}", texts[fmt])
    return texts["markdown"]
