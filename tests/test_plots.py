"""Figures: curves, bars and the qualitative grid are written as non-empty PNG and PDF, with the
layout they promise (panels, rows = sampled images), from a run directory and from the CLI; the
grid draws each map on the pixels the model saw (the preprocessed crop of a larger, non-square
photo) and names the class each column explains; the bars never draw the aggregate rank as a mean."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_leaderboard import make_run

from xaibench.cli import main
from xaibench.errors import UserError
from xaibench.io import read_json, write_json
from xaibench.maps import MapFile, write_maps
from xaibench.plots import bar_metrics, draw_grid, grid_images, plot_run, row_label
from xaibench.store import preview_path, seal_run

N = 8


def add_previews(run_dir, maps, *, level="patch", targets=None, ids=None, model=None):
    """Give a run made by ``make_run`` the preview maps a run keeps (and, with ``model``, the
    model section of config.json); the run is sealed again."""
    for m, mp in maps.items():
        names = ids or [f"synthetic-test-{i:05d}" for i in range(len(mp))]
        t = (targets or {}).get(m)
        write_maps(
            preview_path(run_dir, m),
            MapFile(mp, names, level, None if t is None else torch.as_tensor(t), {"method": m}),
        )
    if model is not None:
        config = read_json(run_dir / "config.json")
        config["model"] = model
        write_json(run_dir / "config.json", config)
    seal_run(run_dir)
    return run_dir


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
    d = make_run(tmp_path, "run", values, curves=_curves(), labels={"a": "Method_A"})
    return add_previews(d, maps)


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
    d = make_run(tmp_path, "other", {"a": {"srg": np.zeros(4)}}, dataset="synthetic")
    # the saved ids claim other images than the dataset gives back
    add_previews(d, {"a": torch.rand(4, 8, 8)}, ids=[f"x{i}" for i in range(4)])
    with pytest.raises(UserError, match="does not give the run's images back"):
        plot_run(d, kind="grid", out_dir=tmp_path / "f")


def test_grid_needs_preview_maps(tmp_path):
    d = make_run(tmp_path, "bare", {"a": {"srg": np.zeros(4)}})
    with pytest.raises(UserError, match="no saved maps"):
        plot_run(d, kind="grid", out_dir=tmp_path / "f")


# --------------------------------------------------------------------------- registration
PHOTO_W, PHOTO_H, INPUT = 96, 64, 32
#: Lite0-like preprocessing: shorter side to floor(32 / 0.875) = 36, centre crop 32 × 32
DATA_CONFIG = {
    "input_size": [3, INPUT, INPUT],
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "crop_mode": "center",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}
RED_BLOCK = (slice(0, 32), slice(16, 48))  # (rows, columns) of the photo


@pytest.fixture
def photo_run(tmp_path):
    """A run on one 96 × 64 photo (grey, a red block that the crop puts in its top-left quadrant:
    x 16..48 → ×36/64 = 9..27 → −11 (crop offset) = −2..16, y 0..32 → 0..18 → −2..16), scored by
    a 32 × 32 model, with maps that mark the crop's top-left quadrant; ``comet`` explains its own
    model and another class."""
    from PIL import Image

    from xaibench.datasets.folder import ImageFileSplit, ImageRecord
    from xaibench.registry import DATASETS

    key = "test_plots_photo"
    photo = np.full((PHOTO_H, PHOTO_W, 3), 128, np.uint8)
    photo[RED_BLOCK] = (230, 20, 20)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    records = [ImageRecord(str(tmp_path / "photo.png"), 0, f"{key}-test-00000")]
    classes = [f"class_{i}" for i in range(10)]
    DATASETS.register(key, overwrite=True)(lambda split, **_: ImageFileSplit(key, split, classes, records))
    d = make_run(
        tmp_path, "photo", {"a": {"srg": [1.0]}, "comet": {"srg": [0.5]}}, dataset=key, own=("comet",)
    )
    pixel = torch.zeros(1, INPUT, INPUT)
    pixel[:, :16, :16] = 1.0
    patch = torch.zeros(1, 4, 4)  # 8 × 8-pixel patches
    patch[:, :2, :2] = 1.0
    model = {"name": "m1", "input_size": [INPUT, INPUT], "data_config": DATA_CONFIG}
    ids = [records[0].id]
    add_previews(d, {"a": pixel}, level="pixel", targets={"a": [3]}, ids=ids)
    add_previews(d, {"comet": patch}, level="patch", targets={"comet": [7]}, ids=ids, model=model)
    yield d
    DATASETS._entries.pop(key, None)


def test_grid_maps_lie_on_the_crop_the_model_saw(photo_run):
    from xaibench.leaderboard import load_run

    g = grid_images(load_run(photo_run))
    img = g.images[0]
    assert img.shape == (INPUT, INPUT, 3)  # the model's input, not the 96 × 64 photo
    red = (img[..., 0] > 0.8) & (img[..., 1] < 0.25)
    assert red[1:14, 1:14].all()  # the block fills the top-left quadrant of the crop ...
    assert not red[:, 18:].any() and not red[18:, :].any()  # ... and nothing else
    for m in ("a", "comet"):  # a pixel map and a patch map, both on the same 32 × 32 grid
        heat = g.maps[m][0]
        assert heat.shape == (INPUT, INPUT)
        np.testing.assert_array_equal(heat, np.kron([[1, 0], [0, 0]], np.ones((16, 16))))
        assert red[heat == 1].mean() > 0.8 and not red[heat == 0][: INPUT * 16].any()


def _axes_pixels(fig, ax):
    """The RGB pixels inside ``ax`` of the rendered figure (the frame trimmed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())[..., :3].astype(float) / 255
    x0, y0, x1, y1 = ax.get_window_extent().extents
    height = rgba.shape[0]
    top, bottom = int(np.ceil(height - y1)) + 2, int(np.floor(height - y0)) - 2
    return rgba[top:bottom, int(np.ceil(x0)) + 2 : int(np.floor(x1)) - 2]


def _quadrants(pixels):
    h, w = pixels.shape[:2]
    return [pixels[: h // 2, : w // 2], pixels[: h // 2, w // 2 :], pixels[h // 2 :, : w // 2]] + [
        pixels[h // 2 :, w // 2 :]
    ]


def test_rendered_grid_puts_the_heat_on_the_marked_region(photo_run):
    from xaibench.leaderboard import load_run

    g = grid_images(load_run(photo_run))
    fig = draw_grid(g)
    axes = fig.axes
    image = _axes_pixels(fig, axes[0])
    assert abs(image.shape[0] / image.shape[1] - 1.0) < 0.05  # square crop, not the photo's 3:2
    redness = [(q[..., 0] - q[..., 1:].mean(-1)).mean() for q in _quadrants(image)]
    assert np.argmax(redness) == 0 and redness[0] > 0.4 and max(redness[1:]) < 0.05
    for ax in axes[1:3]:  # both map columns: the bright (hot) quadrant is the top-left one
        brightness = [q.mean() for q in _quadrants(_axes_pixels(fig, ax))]
        assert np.argmax(brightness) == 0 and brightness[0] - max(brightness[1:]) > 0.25


def test_grid_labels_name_each_columns_class_and_the_own_model_column(photo_run):
    from xaibench.leaderboard import load_run

    g = grid_images(load_run(photo_run))
    assert g.own == {"a": False, "comet": True}
    label = row_label(g, 0)
    assert label.splitlines() == ["test_plots_photo-test-00000", "→ class_3", "Comet* → class_7"]
    fig = draw_grid(g)
    assert fig.axes[0].get_ylabel() == label
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles[1:] == ["A", "Comet*"]
    assert "explains its own model" in fig._supxlabel.get_text()


def test_grid_colormap_is_colour_blind_safe(photo_run):
    from xaibench.leaderboard import load_run

    fig = draw_grid(grid_images(load_run(photo_run)))
    cmaps = {im.get_cmap().name for ax in fig.axes for im in ax.get_images() if im.get_array().ndim == 2}
    assert cmaps and "jet" not in cmaps and cmaps <= {"gray", "magma", "viridis", "cividis", "inferno"}


def test_bars_fallback_leaves_the_aggregate_rank_out(tmp_path):
    from xaibench.leaderboard import build_leaderboard

    rng = np.random.default_rng(4)
    values = {m: {"mif": rng.normal(size=6), "rma": rng.normal(size=6)} for m in ("a", "b", "c")}
    d = make_run(tmp_path, "ranked", values)
    table = build_leaderboard(d)
    assert "mean_rank" in set(table["metric"])  # two metric families: an aggregate rank exists
    assert bar_metrics(table, None) == ["mif", "rma"]
    assert bar_metrics(table, ["mean_rank"]) == ["mean_rank"]  # drawn only when asked for
    assert plot_run(d, kind="bars", out_dir=tmp_path / "b")[0].stat().st_size > 2000


def test_cli_plot(run_dir, tmp_path, capsys):
    assert (
        main(["plot", str(run_dir), "--kind", "bars", "--metrics", "srg", "--out", str(tmp_path / "o")]) == 0
    )
    assert (tmp_path / "o" / "bars.png").stat().st_size > 0
    assert main(["plot", str(run_dir), "--kind", "curves", "--methods", "nope"]) == 2
    assert "no method 'nope'" in capsys.readouterr().err
