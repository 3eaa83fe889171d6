"""Exports: bold/second/arrows by direction, the † marker, column groups, escaping, a LaTeX
table that compiles (pdflatex when installed; a structural check always), tidy CSV, JSON, CLI."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from test_leaderboard import make_run

from xaibench.cli import main
from xaibench.exports import latex_escape, render, to_latex, to_markdown
from xaibench.leaderboard import leaderboard


def _three_methods(tmp_path, name="r", model="m1", **kw):
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 40)
    base -= base.mean()
    values = {
        "a": {"lif": 10 + base, "mif": 50 + base},
        "b": {"lif": 20 + base + rng.normal(0, 0.1, 40), "mif": 70 + base},
        "c": {"lif": 30 + base, "mif": 60 + base},
    }
    return make_run(tmp_path, name, values, model=model, **kw)


def _md_cells(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {
        r[0]: dict(zip(head[1:], r[1:]))
        for r in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    }
    return head, rows


def test_markdown_bold_second_and_arrows_follow_direction(tmp_path):
    t, runs = leaderboard([_three_methods(tmp_path)])
    head, rows = _md_cells(to_markdown(t, runs_info=runs))
    assert head == ["Method", "MIF ↑", "LIF ↓"]
    assert rows["A"]["LIF ↓"].startswith("**10.")  # ↓: minimum bold
    assert rows["B"]["LIF ↓"].startswith("_20.")  # second in italics
    assert rows["C"]["LIF ↓"].startswith("30.")
    assert rows["B"]["MIF ↑"].startswith("**70.")  # ↑: maximum bold
    assert rows["C"]["MIF ↑"].startswith("_60.")
    assert " ± " in rows["A"]["LIF ↓"]
    _, rows = _md_cells(to_markdown(t, ci=False))
    assert " ± " not in rows["A"]["LIF ↓"]


def test_latex_bold_underline_arrows(tmp_path):
    t, runs = leaderboard([_three_methods(tmp_path)])
    tex = to_latex(t, runs_info=runs)
    lines = {line.split(" & ")[0]: line for line in tex.splitlines() if " & " in line}
    assert r"MIF $\uparrow$" in lines["Method"] and r"LIF $\downarrow$" in lines["Method"]
    a, b, c = (lines[k].split(" & ") for k in "ABC")
    assert a[2].startswith(r"\textbf{10.") and b[2].startswith(r"\underline{20.") and c[2].startswith("30.")
    assert b[1].startswith(r"\textbf{70.") and c[1].startswith(r"\underline{60.") and a[1].startswith("50.")
    assert r"{\scriptsize$\pm$" in a[1]
    assert r"\scriptsize" not in to_latex(t, ci=False)


def test_not_significant_marker_in_exports(tmp_path):
    rng = np.random.default_rng(1)
    best = rng.normal(60, 5, 50)
    tied = best.copy()
    tied[0] -= 0.2
    d = make_run(tmp_path, "r", {"best": {"srg": best}, "tied": {"srg": tied}, "worse": {"srg": best - 5}})
    t, _ = leaderboard([d])
    _, rows = _md_cells(to_markdown(t))
    assert rows["Tied"]["SRG ↑"].endswith("†")
    assert "†" not in rows["Worse"]["SRG ↑"] and "†" not in rows["Best"]["SRG ↑"]
    tex = to_latex(t)
    assert re.search(r"^Tied & .*\\textsuperscript\{\\dag\} \\\\$", tex, re.M)
    assert not re.search(r"^Worse & .*\\dag", tex, re.M)


def test_two_runs_make_two_column_groups(tmp_path):
    t, runs = leaderboard([_three_methods(tmp_path, "r1", "m1"), _three_methods(tmp_path, "r2", "m2")])
    tex = to_latex(t, runs_info=runs)
    assert tex.count(r"\multicolumn{2}{c}") == 2
    assert r"\cmidrule(lr){2-3} \cmidrule(lr){4-5}" in tex
    assert r"\begin{tabular}{lcccc}" in tex
    head, rows = _md_cells(to_markdown(t))
    assert head == [
        "Method",
        "synthetic / m1 · MIF ↑",
        "synthetic / m1 · LIF ↓",
        "synthetic / m2 · MIF ↑",
        "synthetic / m2 · LIF ↓",
    ]
    assert len(rows["A"]) == 4


def test_latex_escapes_names(tmp_path):
    assert latex_escape("grad_x_input 50% & #1 {x} $") == r"grad\_x\_input 50\% \& \#1 \{x\} \$"
    d = make_run(
        tmp_path,
        "r",
        {"my_method": {"srg": np.arange(5.0)}, "b": {"srg": np.arange(5.0) - 1}},
        labels={"my_method": "My_Method 10%", "b": "B#2 & co"},
        dataset="pets_v2",
    )
    tex = to_latex(leaderboard([d])[0])
    assert r"My\_Method 10\%" in tex and r"B\#2 \& co" in tex and r"pets\_v2" in tex
    body = tex.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
    assert not re.search(r"(?<!\\)[_%#]", body.replace(r"\_", "").replace(r"\%", "").replace(r"\#", ""))


def _structure_ok(tex: str) -> None:
    """booktabs rules in order, balanced braces, every row as wide as the column spec."""
    body = tex.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
    spec = re.match(r"\{([lcr]+)\}", body).group(1)
    pos = [body.index(k) for k in (r"\toprule", r"\midrule", r"\bottomrule")]
    assert pos == sorted(pos)
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += ch == "{"
        depth -= ch == "}"
        assert depth >= 0
    assert depth == 0
    for line in body.splitlines():
        if line.endswith(r"\\"):
            widths = [int(m) for m in re.findall(r"\\multicolumn\{(\d+)\}", line)]
            cells = line.count(" & ") + 1
            assert cells - len(widths) + sum(widths) == len(spec), line


def _latex_of_two_runs(tmp_path) -> str:
    """A standalone document of two runs, with names that need escaping and skipped methods."""
    d1 = make_run(
        tmp_path,
        "r1",
        {
            "saliency_x": {"srg": np.arange(6.0), "lif": -np.arange(6.0)},
            "comet": {"srg": np.arange(6.0) + 0.5, "lif": np.arange(6.0)},
            "random": {"srg": np.zeros(6), "lif": np.ones(6)},
        },
        labels={"saliency_x": "Grad × Input_1 % #", "comet": "COMET"},
        own=("comet",),
        skipped={"gradcam": "gradcam needs a CNN & co"},
    )
    d2 = _three_methods(tmp_path, "r2", "vit_small_patch16_224.augreg_in21k")
    t, runs = leaderboard([d1, d2])
    return to_latex(t, runs_info=runs, standalone=True)


def test_latex_structure(tmp_path):
    tex = _latex_of_two_runs(tmp_path)
    _structure_ok(tex)
    assert r"COMET$^{*}$" in tex


def test_latex_compiles_with_pdflatex(tmp_path):
    if shutil.which("pdflatex") is None:
        missing = "pdflatex is not installed (Debian: apt-get install texlive-latex-recommended)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must compile the LaTeX table: {missing}")
        pytest.skip(missing)
    (tmp_path / "t.tex").write_text(_latex_of_two_runs(tmp_path))
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_csv_is_tidy_and_json_has_everything(tmp_path):
    v = np.arange(5.0)
    v2 = v.copy()
    v2[1] = np.nan
    d1 = make_run(tmp_path, "r1", {"a": {"srg": v, "lif": v}, "b": {"srg": v2, "lif": v}})
    d2 = make_run(tmp_path, "r2", {"a": {"srg": v, "lif": v}, "b": {"srg": v, "lif": v}}, dataset="pets")
    t, runs = leaderboard([d1, d2])
    frame = pd.read_csv(io.StringIO(render(t, "csv")))
    assert len(frame) == 2 * 2 * 2
    assert not frame.duplicated(["run_id", "method", "metric"]).any()
    assert {"mean", "ci_low", "ci_high", "n", "n_nan", "direction", "group", "p_holm"} <= set(frame.columns)
    assert frame.query("run_id == 'r1' and method == 'b' and metric == 'srg'")["n_nan"].item() == 1
    doc = json.loads(render(t, "json", runs_info=runs))
    assert len(doc["rows"]) == 8 and doc["statistics"]["correction"] == "holm"
    assert [r["run_id"] for r in doc["runs"]] == ["r1", "r2"]
    assert doc["runs"][0]["config"]["versions"] == {"xaibench": "test"}
    assert all(r["p_holm"] is None or isinstance(r["p_holm"], float) for r in doc["rows"])  # NaN → null


def test_own_model_marker_and_notes(tmp_path):
    d = make_run(
        tmp_path,
        "r",
        {"comet": {"srg": np.arange(4.0)}, "a": {"srg": np.arange(4.0)}},
        own=("comet",),
        labels={"comet": "COMET"},
        skipped={"gradcam": "gradcam needs a CNN"},
    )
    t, runs = leaderboard([d])
    text = to_markdown(t, runs_info=runs)
    _, rows = _md_cells(text)
    assert "COMET *" in rows and "A" in rows
    assert "* explains its own model" in text and "gradcam (gradcam needs a CNN)" in text


def test_cli_leaderboard(tmp_path, capsys):
    d1, d2 = _three_methods(tmp_path, "r1", "m1"), _three_methods(tmp_path, "r2", "m2")
    out = tmp_path / "lb.tex"
    assert (
        main(["leaderboard", str(d1), str(d2), "--format", "latex", "--metrics", "lif", "--out", str(out)])
        == 0
    )
    tex = out.read_text()
    assert tex.count(r"\multicolumn{1}{c}") == 2 and "MIF" not in tex
    assert main(["leaderboard", str(d1), "--format", "csv", "--methods", "a,b"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(frame["method"]) == {"a", "b"}
    assert main(["leaderboard", str(d1), "--metrics", "nope"]) == 2
    assert "no metric 'nope'" in capsys.readouterr().err
    assert main(["leaderboard", str(tmp_path / "absent")]) == 2


def _ranked_run(tmp_path, name="rk", **kw):
    rng = np.random.default_rng(7)
    cfg = {
        "srg": {"provides": ["srg"], "directions": {"srg": "up"}},
        "rma": {"provides": ["rma"], "directions": {"rma": "up"}},
    }
    values = {
        "a": {"srg": rng.normal(3, 1, 30), "rma": rng.normal(3, 1, 30)},
        "b": {"srg": rng.normal(2, 1, 30), "rma": rng.normal(1, 1, 30)},
        "salvage": {k: {s: rng.normal(0, 1, 30) for s in range(3)} for k in ("srg", "rma")},
        "random": {"srg": rng.normal(0, 1, 30), "rma": rng.normal(0, 1, 30)},
    }
    return make_run(tmp_path, name, values, metrics_config=cfg, labels={"salvage": "Salvage"}, **kw)


def test_mean_rank_column_and_notes_in_markdown_and_latex(tmp_path):
    t, runs = leaderboard([_ranked_run(tmp_path)])
    text = to_markdown(t, runs_info=runs)
    head, rows = _md_cells(text)
    assert head == ["Method", "SRG ↑", "RMA ↑", "Mean rank ↓"]  # the summary column comes last
    assert re.fullmatch(r"\*\*1\.00\*\* \[1\.00, \d\.\d\d\]", rows["A"]["Mean rank ↓"])  # bounds, not ±
    assert rows["Salvage"]["Mean rank ↓"].startswith("3.00 [")
    assert rows["Random"]["Mean rank ↓"] == ""  # reference rows are not ranked
    assert "Scores in the mean rank: SRG; RMA." in text
    assert "Pooled over training seeds" in text and "Salvage (3 seeds)" in text
    tex = to_latex(t, runs_info=runs, standalone=True)
    _structure_ok(tex)
    assert r"Mean rank $\downarrow$ \\" in tex and r"\textbf{1.00}{\scriptsize[1.00, " in tex
    assert "Scores in the mean rank: SRG; RMA." in tex
    assert r"\scriptsize[" not in to_latex(t, ci=False)


def test_mean_rank_rows_in_csv_and_json(tmp_path):
    t, runs = leaderboard([_ranked_run(tmp_path)])
    frame = pd.read_csv(io.StringIO(render(t, "csv")))
    agg = frame[frame["metric"] == "mean_rank"].set_index("method")
    assert set(agg.index) == {"a", "b", "salvage"}
    assert set(agg["rank_metrics"]) == {"srg; rma"} and set(agg["kind"]) == {"aggregate"}
    assert agg.loc["salvage", "n_seeds"] == 3 and agg.loc["a", "n_seeds"] == 1
    assert (agg["ci_low"] <= agg["mean"]).all() and (agg["mean"] <= agg["ci_high"]).all()
    doc = json.loads(render(t, "json", runs_info=runs))
    rows = [r for r in doc["rows"] if r["metric"] == "mean_rank"]
    assert len(rows) == 3 and all(r["rank_metrics"] == "srg; rma" for r in rows)
    assert doc["statistics"]["aggregate_rank"]["metric"] == "mean_rank"
    assert "seeds" in doc["statistics"]["training_seeds"]
    assert render(t, "csv") == render(leaderboard([_ranked_run(tmp_path, "rk2")])[0], "csv").replace(
        "rk2", "rk"
    )


def test_cli_rank_metrics(tmp_path, capsys):
    d = _ranked_run(tmp_path)
    assert main(["leaderboard", str(d), "--format", "csv", "--rank-metrics", "localisation,srg"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(frame.loc[frame["metric"] == "mean_rank", "rank_metrics"]) == {"srg; rma"}
    assert main(["leaderboard", str(d), "--format", "csv", "--rank-metrics", "none"]) == 0
    assert "mean_rank" not in set(pd.read_csv(io.StringIO(capsys.readouterr().out))["metric"])
    assert main(["leaderboard", str(d), "--rank-metrics", "srg"]) == 0  # one score: nothing to aggregate
    assert "Mean rank" not in capsys.readouterr().out
    assert main(["leaderboard", str(d), "--rank-metrics", "fidelity_*"]) == 2
    assert "no metric or category 'fidelity_*'" in capsys.readouterr().err
