"""Figures: curves, bars and the qualitative grid are written as non-empty PNG and PDF, with the
layout they promise (panels, rows = sampled images), from a run directory and from the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_leaderboard import make_run

from xaibench.cli import main
from xaibench.errors import UserError
from xaibench.plots import plot_run

N = 8


def _curves():
    rows = []
    x = np.linspace(1 / 16, 1, 16)
    for method, gain in (("a", 1.0), ("random", 0.0)):
        for metric, sign in (("mif", 1), ("lif", -1), ("r_mif", 1), ("r_lif", -1)):
            y = 50 + sign * gain * 30 * np.sqrt(x) * (1 - x) + 40 * x
            rows += [
                {
                    "dataset": "synthetic",
                    "model": "m1",
                    "method": method,
                    "metric": metric,
                    "x": xi,
                    "value": yi,
                    "n": N,
                }
                for xi, yi in zip(x, y)
            ]
    return pd.DataFrame(rows)


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    maps = {"a": torch.rand(N, 8, 8, generator=g), "random": torch.rand(N, 8, 8, generator=g)}
    values = {
        "a": {"srg": rng.normal(30, 5, N), "r_srg": rng.normal(10, 2, N)},
        "random": {"srg": rng.normal(0, 5, N), "r_srg": rng.normal(0, 2, N)},
    }
    return make_run(tmp_path, "run", values, curves=_curves(), maps=maps, labels={"a": "Method_A"})


def _image(path):
    import matplotlib.image as mpimg

    return mpimg.imread(path)


def test_all_figures_written_and_not_blank(run_dir, tmp_path):
    paths = plot_run(run_dir, out_dir=tmp_path / "fig", n_images=3)
    names = sorted(p.name for p in paths)
    assert names == ["bars.pdf", "bars.png", "curves.pdf", "curves.png", "grid.pdf", "grid.png"]
    for p in paths:
        assert p.stat().st_size > 2000
        if p.suffix == ".pdf":
            assert p.read_bytes()[:5] == b"%PDF-"
        else:
            img = _image(p)
            assert img[..., :3].std() > 0.05  # something drawn, not a blank canvas
    curves = _image(tmp_path / "fig" / "curves.png")
    assert curves.shape[0] > curves.shape[1] / 3  # two rows of panels (MIF… and R-MIF…)


def test_grid_rows_follow_the_sample(run_dir, tmp_path):
    small = _image(plot_run(run_dir, kind="grid", out_dir=tmp_path / "g2", n_images=2)[0])
    big = _image(plot_run(run_dir, kind="grid", out_dir=tmp_path / "g4", n_images=4)[0])
    assert small.shape[1] == big.shape[1]  # same columns: image + 2 methods
    assert big.shape[0] == pytest.approx(2 * small.shape[0], rel=0.05)
    again = _image(plot_run(run_dir, kind="grid", out_dir=tmp_path / "g2b", n_images=2)[0])
    np.testing.assert_array_equal(small, again)  # seeded sample: same figure


def test_grid_checks_the_images_are_the_runs(tmp_path):
    maps = {"a": torch.rand(4, 8, 8)}
    d = make_run(tmp_path, "other", {"a": {"srg": np.zeros(4)}}, maps=maps, dataset="synthetic")
    # the saved ids claim other images than the dataset gives back
    import xaibench.io as xio

    xio.save_torch(
        d / "parts" / "a" / "attributions.pt",
        {"ids": [f"x{i}" for i in range(4)], "level": "patch", "maps": maps["a"]},
    )
    with pytest.raises(UserError, match="does not give the run's images back"):
        plot_run(d, kind="grid", out_dir=tmp_path / "f")


def test_cli_plot(run_dir, tmp_path, capsys):
    assert (
        main(["plot", str(run_dir), "--kind", "bars", "--metrics", "srg", "--out", str(tmp_path / "o")]) == 0
    )
    assert (tmp_path / "o" / "bars.png").stat().st_size > 0
    assert main(["plot", str(run_dir), "--kind", "curves", "--methods", "nope"]) == 2
    assert "no method 'nope'" in capsys.readouterr().err
