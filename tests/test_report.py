"""The HTML report, read without a browser: one self-contained page (no external URL), every method
in the leaderboard with its CI and marks, the aggregate ranking, curves, grid, the per-image
explorer's data (maps of every preview image, scores equal to scores.csv) and the provenance;
bad input is one line and exit code 2.

The run is a real one made fast: the untrained tiny ViT at 32×32 on 6 synthetic images
(``tiny_context``), three methods, SRG (curves) and RMA (a second metric family: a mean rank).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch
from test_leaderboard import make_run, tiny_context
from test_plots import add_previews

from xaibench.cli import main
from xaibench.exports import grid
from xaibench.leaderboard import build_leaderboard
from xaibench.report import build_report

METHODS = ("random", "saliency", "gradcam")
N = 6


def make_report_run(out):
    from xaibench.harness import execute
    from xaibench.spec import RunConfig

    config = RunConfig(
        methods=",".join(METHODS),
        metrics="srg,rma",
        n_images=N,
        batch_size=N,
        cardinalities=4,
        out=str(out),
        run_id="tiny",
    )
    return execute(config, context=tiny_context(N)).dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_report_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page(run_dir):
    return build_report([run_dir])


class Page(HTMLParser):
    """What the tests look at: every tag with its attributes, the text inside elements with an id
    or a class, and the JSON data blocks."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags, self.scripts, self.stack = [], {}, []
        self.rows, self.text = [], []
        self._script = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self._script = [a.get("id"), a.get("type"), []]
        if tag == "tr" and "data-method" in a:
            self.rows.append((a["data-method"], self._table))
        if tag == "table":
            self._table = a.get("class", "")

    _table = ""

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            sid, kind, chunks = self._script
            if kind == "application/json":
                self.scripts[sid] = json.loads("".join(chunks))
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script[2].append(data)
        else:
            self.text.append(data)


def test_page_is_self_contained(page):
    p = Page(page)
    urls = [(t, k, v) for t, a in p.tags for k, v in a.items() if k in ("src", "href", "srcset", "data")]
    assert urls  # images and in-page links exist ...
    for tag, key, value in urls:  # ... and none leaves the file
        assert value.startswith(("data:image/", "#")), (tag, key, value[:60])
    assert not [a for t, a in p.tags if t in ("script", "link", "iframe") and ("src" in a or "href" in a)]
    assert not re.search(r"""(?:src|href|srcset)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    style = page[page.index("<style>") : page.index("</style>")]
    assert "url(" not in style and "@import" not in style  # no fonts or images fetched by the CSS


def test_leaderboard_has_every_method_with_ci_and_marks(page, run_dir):
    p = Page(page)
    board = [m for m, table in p.rows if "board" in table]
    scores = pd.read_csv(run_dir / "scores.csv")
    assert sorted(board) == sorted(set(scores["method"])) == sorted(METHODS)
    table = build_leaderboard(run_dir)
    methods, cols, cells, info, directions, labels = grid(table)
    for (m, (_, metric)), cell in cells.items():
        text = cell.value()
        if cell.best:
            assert f"<strong>{text}</strong>" in page
        if cell.half_width():
            assert f"{text}</strong>" in page or f"{text}</em>" in page or f">{text}<" in page
            assert f"± {cell.half_width()}" in page
    assert "Mean rank ↓" in page  # the aggregate column (two metric families)
    text = " ".join(p.text)
    for m in methods:
        assert info[m]["label"] in text


def test_ranking_lists_methods_by_mean_rank(page, run_dir):
    p = Page(page)
    ranked = [m for m, table in p.rows if "ranking" in table]
    table = build_leaderboard(run_dir)
    agg = table[(table["metric"] == "mean_rank") & np.isfinite(table["mean"].astype(float))]
    assert len(agg) >= 2
    assert ranked == list(agg.sort_values("mean")["method"])


def test_curves_have_a_line_per_method_and_panel(page):
    p = Page(page)
    lines = [a["data-method"] for t, a in p.tags if t == "polyline"]
    panels = sum(1 for t, a in p.tags if t == "svg" and a.get("class") == "curve")
    assert panels == 3  # MIF, LIF, SRG (no R- curves in this run)
    assert sorted(set(lines)) == sorted(METHODS) and len(lines) == 3 * len(METHODS)
    toggles = [a["data-method"] for t, a in p.tags if t == "input" and a.get("type") == "checkbox"]
    assert sorted(toggles) == sorted(METHODS)


def test_explorer_data_matches_the_preview_and_scores(page, run_dir):
    from xaibench.maps import read_maps
    from xaibench.store import preview_path

    p = Page(page)
    (data,) = p.scripts.values()
    preview = read_maps(preview_path(run_dir, "saliency"))
    assert [i["id"] for i in data["images"]] == preview.ids
    assert [m["name"] for m in data["methods"]] == ["gradcam", "saliency", "random"]
    assert data["size"] == [32, 32]
    for image in data["images"]:
        assert all(u.startswith("data:image/") for u in image["maps"] + [image["src"]])
    scores = pd.read_csv(run_dir / "scores.csv", dtype={"image_id": str})
    row = scores[(scores.method == "gradcam") & (scores.metric == "srg")].iloc[0]
    shown = dict((k, v) for k, v, _ in data["scores"]["gradcam"][row.image_id])
    assert shown["SRG"] == pytest.approx(row.value, abs=1e-3)
    grid_images = [a for t, a in p.tags if t == "img" and "Qualitative grid" in a.get("alt", "")]
    assert len(grid_images) == 1 and grid_images[0]["src"].startswith(
        ("data:image/png;base64,", "data:image/jpeg;base64,")
    )


def test_provenance_names_versions_seeds_and_hashes(page, run_dir):
    identity = json.loads((run_dir / "identity.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    for value in (
        identity["dataset"]["fingerprint"],
        identity["dataset"]["image_ids_sha256"],
        identity["model"]["weights_sha256"],
        identity["source_sha256"],
        config["versions"]["torch"],
    ):
        assert value in page
    assert "training seeds" in page and "config.json in full" in page


def test_two_runs_make_column_groups_and_keep_the_own_model_mark(run_dir, tmp_path):
    rng = np.random.default_rng(0)
    other = make_run(
        tmp_path, "other", {m: {"srg": rng.normal(size=4)} for m in ("a", "comet")}, own=("comet",)
    )
    add_previews(other, {m: torch.rand(4, 8, 8) for m in ("a", "comet")}, targets={"comet": [1] * 4})
    page = build_report([run_dir, other])
    p = Page(page)
    assert sorted(m for m, t in p.rows if "board" in t) == sorted({*METHODS, "a", "comet"})
    n_first = len(set(build_leaderboard(run_dir)["metric"]))  # srg, mif, lif, rma, rra, mean_rank
    spans = [a.get("colspan") for t, a in p.tags if t == "th" and a.get("scope") == "colgroup"]
    assert spans == [str(n_first), "1"]
    assert "Comet *" in page  # explains its own model
    assert len(p.scripts) == 2  # one explorer per run
    comet = next(m for m in p.scripts["explorer-1"]["methods"] if m["name"] == "comet")
    assert comet["own"] and comet["label"] == "Comet*"


def test_cli_report_and_bad_input(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    for argv, message in (
        ([str(tmp_path)], "not a finished run directory"),
        ([str(run_dir), "--out", str(tmp_path)], "is a directory"),
        ([str(run_dir), "--out", str(tmp_path / "file" / "r.html")], "not a directory"),
        ([str(run_dir), "--out", str(out), "--n-images", "0"], "positive"),
        ([str(run_dir), "--methods", "nope", "--out", str(out)], "no method 'nope'"),
    ):
        assert main(["report", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_unfinished_run_is_refused(run_dir, tmp_path, capsys):
    import shutil

    d = shutil.copytree(run_dir, tmp_path / "copy")
    (d / "manifest.json").unlink()
    assert main(["report", str(d), "--out", str(tmp_path / "r.html")]) == 2
    assert "not finished" in capsys.readouterr().err
