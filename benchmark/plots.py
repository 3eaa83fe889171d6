"""Figures of a finished run, written as PNG and PDF (headless: matplotlib ``Figure`` objects,
never pyplot's global state).

- ``curves``: the MIF / LIF / SRG and R-MIF / R-LIF / R-SRG curves against the fraction of
  patches kept (Naouar et al. 2025, Salvage, Figure 2); the SRG curves are MIF − LIF at each fraction.
  (Other metrics' curves, e.g. IoU against the threshold, have other axes and stay in curves.csv.)
- ``bars``: SRG and R-SRG (or the chosen scores) per method with the 95 % bootstrap CI as
  whiskers.
- ``grid``: rows = a seeded sample of the run's preview images (the maps every part keeps,
  ``maps/<method>.preview.npz``), columns = the model's input (with the ground-truth mask
  outlined) and one heat map per method over it (Naouar et al. 2025, Salvage, Figure 1). The image is the one
  the model saw: the dataset image through the run's recorded preprocessing (a timm model's data
  config: resize, centre crop), so a map, computed on that crop, lies on the pixels it scores at
  the crop's aspect ratio. Heat maps (magma, a colour-blind-safe colormap) lie over the image in
  grey; each is min-max scaled on its own for display (raw maps have method-specific ranges);
  patch-level maps are shown as blocks, each patch over exactly its pixels, as the metrics see
  them. Row labels name the class each column explains (the targets stored with the maps), and
  which column explains another class, e.g. a method that explains its own model (COMET).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from xaibench.metrics import metric_label

from .datasets import load_dataset
from .datasets.folder import ImageFileSplit, Preprocessing
from .errors import UserError
from .leaderboard import (
    AGGREGATE,
    RunResults,
    build_leaderboard,
    load_run,
    metric_sort_key,
    ordered,
    select,
)
from .maps import read_maps
from .registry import load_plugin
from .seeding import generator
from .store import preview_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS = ("curves", "bars", "grid")
CURVE_TRIPLES = (("mif", "lif", "srg"), ("r_mif", "r_lif", "r_srg"))
DEFAULT_BAR_METRICS = ("srg", "r_srg")


def _label(metric: str) -> str:
    return metric_label(metric)


def _figure(nrows: int, ncols: int, width: float, height: float, **kw):
    import seaborn as sns
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig, out_dir: Path, name: str) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=150, format=ext)
        tmp.replace(path)
        paths.append(path)
    return paths


def method_palette(run: RunResults, methods: Sequence[str]) -> Dict[str, tuple]:
    """One colour per method, the same in every figure of the run (and of its HTML report):
    seaborn's colour-blind palette without its grey (kept for the reference rows), or evenly
    spaced hues beyond its nine colours."""
    import seaborn as sns

    reference = {"random": (0.55, 0.55, 0.55), "oracle": (0.0, 0.0, 0.0)}  # dashed grey / black
    every = [m for m in sorted(run.config.get("methods", {}) or methods) if m not in reference]
    blind = [c for i, c in enumerate(sns.color_palette("colorblind", 10)) if i != 7]  # 7: grey
    colors = blind if len(every) <= len(blind) else sns.color_palette("husl", len(every))
    return {
        m: reference.get(m) or (colors[every.index(m)] if m in every else (0.3, 0.3, 0.3)) for m in methods
    }


def _pick_methods(run: RunResults, available: Sequence[str], methods: Optional[Sequence[str]]) -> List[str]:
    frame = pd.DataFrame({"method": list(dict.fromkeys(available))})
    frame["reference"] = frame["method"].isin(("random", "oracle"))
    frame["method_label"] = [run.method_label(m) for m in frame["method"]]
    if methods:
        frame = select(frame, methods=methods)
    return ordered(list(frame["method"]), frame)


# --------------------------------------------------------------------------- curves
def plot_curves(run: RunResults, out_dir: Path, methods: Optional[Sequence[str]] = None) -> List[Path]:
    curves = run.curves
    if curves.empty:
        raise UserError(
            f"run '{run.dir}' has no curves (curves.csv is empty): run it with the mif/lif metrics"
        )
    chosen = _pick_methods(run, curves["method"], methods)
    curves = curves[curves["method"].isin(chosen)]
    have = set(curves["metric"])
    frames = {
        m: g.pivot_table(index="x", columns="method", values="value") for m, g in curves.groupby("metric")
    }
    panels: List[tuple] = []
    for a, b, diff in CURVE_TRIPLES:
        row = [(name, frames[name]) for name in (a, b) if name in have]
        if a in have and b in have:
            row.append((diff, frames[a] - frames[b]))
        if row:
            panels.append(row)
    if not panels:
        raise UserError(f"run '{run.dir}' has no MIF/LIF or R-MIF/R-LIF curves to plot")
    ncols = max(len(r) for r in panels)
    fig, axes = _figure(len(panels), ncols, 3.6, 3.0)
    colors = method_palette(run, chosen)
    directions = run.directions()
    for r, row in enumerate(panels):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(row):
                ax.set_visible(False)
                continue
            name, frame = row[c]
            for m in chosen:
                if m in frame.columns:
                    s = frame[m].dropna()
                    ax.plot(
                        s.index,
                        s.values,
                        label=run.method_label(m),
                        color=colors[m],
                        lw=1.6,
                        ls="--" if m in ("random", "oracle") else "-",
                        marker="o" if len(s) <= 12 else None,
                        ms=3,
                    )
            arrow = {"up": " ↑", "down": " ↓"}.get(directions.get(name, ""), "")
            ax.set_title(_label(name) + arrow)
            ax.set_xlabel("fraction of patches kept")
            ax.set_ylabel("target probability ×100" if name not in ("srg", "r_srg") else "difference ×100")
            ax.set_xlim(0, 1)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    fig.suptitle(f"{run.dataset} / {run.model}")
    return _save(fig, out_dir, "curves")


# --------------------------------------------------------------------------- bars
def bar_metrics(table: pd.DataFrame, metrics: Optional[Sequence[str]], where="the run") -> List[str]:
    """The scores to draw: those asked for, else SRG and R-SRG where present, else every score
    of the table but the aggregate rank (a mean rank is not a mean over images: it is drawn only
    when asked for by name)."""
    if metrics:
        return list(metrics)
    present = [m for m in dict.fromkeys(table["metric"]) if m != AGGREGATE]
    chosen = [m for m in DEFAULT_BAR_METRICS if m in present] or present
    if not chosen:
        raise UserError(f"'{where}' has no per-image scores to plot")
    return chosen


def plot_bars(
    run: RunResults,
    out_dir: Path,
    methods: Optional[Sequence[str]] = None,
    metrics: Optional[Sequence[str]] = None,
) -> List[Path]:
    table = build_leaderboard(run)
    if table.empty:
        raise UserError(f"run '{run.dir}' has no scores to plot")
    table = select(table, metrics=bar_metrics(table, metrics, run.dir), methods=methods)
    chosen = ordered(list(table["method"]), table)
    names = sorted(dict.fromkeys(table["metric"]), key=metric_sort_key)
    fig, axes = _figure(1, len(names), 3.8, 0.45 * len(chosen) + 1.2)
    colors = method_palette(run, chosen)
    for ax, name in zip(axes[0], names):
        t = table[table["metric"] == name].set_index("method").reindex(chosen)
        y = np.arange(len(chosen))[::-1]
        mean = t["mean"].to_numpy(float)
        err = np.vstack([mean - t["ci_low"].to_numpy(float), t["ci_high"].to_numpy(float) - mean])
        err = np.where(np.isfinite(err), err, 0.0)
        ax.barh(
            y,
            np.nan_to_num(mean),
            color=[colors[m] for m in chosen],
            xerr=err,
            capsize=3,
            error_kw={"elinewidth": 1.2, "ecolor": "black"},
        )
        ax.set_yticks(y, [run.method_label(m) for m in chosen])
        ax.axvline(0, color="black", lw=0.8)
        arrow = {"up": " ↑", "down": " ↓"}.get(
            t["direction"].dropna().iloc[0] if t["direction"].notna().any() else "", ""
        )
        ax.set_title(_label(name) + arrow)
        ax.set_xlabel(
            "mean rank across metrics, 95 % CI" if name == AGGREGATE else "mean over images, 95 % CI"
        )
        for yi, value in zip(y, mean):
            if not np.isfinite(value):
                ax.text(0, yi, " n/a", va="center", ha="left", fontsize=7)
        ax.grid(axis="y", visible=False)
    fig.suptitle(f"{run.dataset} / {run.model}")
    return _save(fig, out_dir, "bars")


# --------------------------------------------------------------------------- grid
#: heat-map colormap: perceptually uniform and readable with colour-vision deficiencies (never jet)
HEAT_CMAP = "magma"
HEAT_ALPHA = 0.6
#: marks a method that explains its own model (COMET: its target is its own predictor's class)
OWN_MODEL_MARK = "*"


@dataclass
class GridImages:
    """The preview images of a run, as the model saw them, with every method's map registered on them.

    ``images[i]`` is the model's input (the preprocessed crop, (H, W, 3) in [0, 1]); ``maps[m][i]``
    is method ``m``'s map of that image on the same (H, W) pixel grid, min-max scaled to [0, 1]
    (None where the method has no map of the image); ``targets[m][i]`` is the class it explains.
    """

    ids: List[str]
    images: List[np.ndarray]
    masks: List[Optional[np.ndarray]]
    labels: List[int]
    methods: List[str]
    maps: Dict[str, List[Optional[np.ndarray]]]
    targets: Dict[str, List[Optional[int]]]
    levels: Dict[str, str]
    own: Dict[str, bool]
    method_labels: Dict[str, str]
    classes: List[str]
    #: method → each image's map at its own resolution (patch grid or pixels), min-max scaled
    native: Dict[str, List[Optional[np.ndarray]]] = field(default_factory=dict)

    @property
    def size(self) -> Tuple[int, int]:
        return tuple(self.images[0].shape[:2]) if self.images else (0, 0)


def preview_files(run: RunResults) -> Dict[str, Path]:
    """Method → its preview maps file (a method trained with several seeds: its first seed's part)."""
    out: Dict[str, Path] = {}
    methods = run.config.get("methods", {}) or {}
    for m, info in methods.items():
        for part in [m] + sorted((info or {}).get("parts") or {}):
            if preview_path(run.dir, part).is_file():
                out[m] = preview_path(run.dir, part)
                break
    return out


def run_preprocessing(run: RunResults):
    """The run's model preprocessing: the timm data config it recorded, else resize-and-centre-crop
    to the model's input size; None when the run records neither."""
    model = run.config.get("model") or {}
    if model.get("data_config"):
        return Preprocessing.from_timm(model["data_config"])
    size = model.get("input_size") or (run.config.get("identity", {}).get("model") or {}).get("input_size")
    return Preprocessing(tuple(int(s) for s in size[-2:])) if size else None


def load_run_images(run: RunResults, ids: Sequence[str], cache_dir=None, data_root=None):
    """The run's images ``ids`` as the model saw them (its preprocessing applied, ground-truth masks
    alike) and the dataset's class names. Image files get the recorded preprocessing, exactly as the
    harness applied it; in-memory splits were fed as they are, and are only resized (no crop) when
    they come back at another size than the model's input (e.g. synthetic images regenerated at
    their default size)."""
    cfg, res = run.config.get("config", {}), run.config.get("resolved", {})
    for module in cfg.get("plugins", []):
        try:
            load_plugin(module)
        except UserError:
            pass
    dataset, split = run.dataset, res.get("split", cfg.get("split", "test"))
    opts = dict(
        (run.config.get("dataset") or {}).get("options") or {},  # what the dataset recorded (pets: boundary)
        seed=int(cfg.get("seed", 0)),
        cache_dir=cache_dir or cfg.get("cache_dir"),
        data_root=data_root or cfg.get("data_root"),
    )
    if dataset == "synthetic":
        opts["n_test" if split == "test" else f"n_{split}"] = int(cfg.get("n_images") or res.get("n_images"))
    data = load_dataset(dataset, split, **opts)
    pre = run_preprocessing(run)
    if isinstance(data, ImageFileSplit):
        if pre is None:
            raise UserError(
                f"run '{run.dir}' records no model input size (config.json model.input_size): "
                "its maps cannot be registered on the photographs"
            )
        data.transform = pre
    wanted, where = set(ids), {}
    for i in range(len(data)):
        image_id = data.image_id(i)
        if image_id in wanted:
            where[image_id] = i
            if len(where) == len(wanted):
                break
    missing = [i for i in ids if i not in where]
    if missing:
        raise UserError(
            f"the dataset does not give the run's images back (no image {missing[0]!r} in "
            f"{dataset}/{split}); pass --data-root / --cache-dir as in the run"
        )
    samples = []
    for image_id in ids:
        smp = data[where[image_id]]
        if not isinstance(data, ImageFileSplit) and pre is not None:
            if tuple(smp.image.shape[-2:]) != tuple(pre.input_size):
                image, mask = Preprocessing(tuple(pre.input_size))(smp.image, smp.mask)
                smp = type(smp)(image, smp.label, mask, smp.id)
        samples.append(smp)
    return samples, list(getattr(data, "classes", []) or run.config.get("dataset", {}).get("classes", []))


def registered(amap: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    """A raw map (h, w) on the (H, W) pixel grid of the model's input, min-max scaled to [0, 1].

    A patch map (or any map whose cells tile the input evenly) is repeated block by block, so each
    patch covers exactly the pixels it scores; other sizes are resampled over the same frame."""
    import torch.nn.functional as F

    amap = amap.detach().float().cpu()
    H, W = size
    h, w = amap.shape[-2:]
    if (h, w) != (H, W):
        if H % h == 0 and W % w == 0:
            amap = amap.repeat_interleave(H // h, 0).repeat_interleave(W // w, 1)
        else:
            amap = F.interpolate(amap[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return _scaled(amap)


def _scaled(amap: torch.Tensor) -> np.ndarray:
    """Min-max scaled to [0, 1] (a constant map: zeros), float32."""
    amap = amap.detach().float().cpu()
    lo, hi = float(amap.min()), float(amap.max())
    out = ((amap - lo) / (hi - lo)) if hi > lo else torch.zeros_like(amap)
    return out.numpy().astype(np.float32)


def grid_images(
    run: RunResults,
    methods: Optional[Sequence[str]] = None,
    n_images: Optional[int] = None,
    seed: Optional[int] = None,
    cache_dir=None,
    data_root=None,
) -> GridImages:
    """The preview sample (``n_images`` of it drawn with ``seed``, default: all of it) with every
    chosen method's map registered on the model's input."""
    files = preview_files(run)
    if not files:
        raise UserError(f"run '{run.dir}' has no saved maps (maps/<method>.preview.npz)")
    chosen = _pick_methods(run, list(files), methods)
    previews = {m: read_maps(files[m]) for m in chosen}
    ids = list(previews[chosen[0]].ids)
    if n_images is not None and n_images < len(ids):
        g = generator(run.seed if seed is None else seed, "plot-grid")
        ids = [ids[p] for p in sorted(torch.randperm(len(ids), generator=g)[:n_images].tolist())]
    samples, classes = load_run_images(run, ids, cache_dir, data_root)
    images = [smp.image.permute(1, 2, 0).clamp(0, 1).numpy() for smp in samples]
    size = tuple(images[0].shape[:2])
    maps: Dict[str, List[Optional[np.ndarray]]] = {}
    native: Dict[str, List[Optional[np.ndarray]]] = {}
    targets: Dict[str, List[Optional[int]]] = {}
    for m, mf in previews.items():
        row = {i: k for k, i in enumerate(mf.ids)}
        maps[m] = [registered(mf.maps[row[i]], size) if i in row else None for i in ids]
        native[m] = [_scaled(mf.maps[row[i]]) if i in row else None for i in ids]
        targets[m] = [int(mf.targets[row[i]]) if (i in row and mf.targets is not None) else None for i in ids]
    return GridImages(
        ids=ids,
        images=images,
        masks=[None if smp.mask is None else smp.mask.numpy().astype(bool) for smp in samples],
        labels=[int(smp.label) for smp in samples],
        methods=chosen,
        maps=maps,
        targets=targets,
        levels={m: previews[m].level for m in chosen},
        own={m: bool(run.method_info(m).get("explains_own_model")) for m in chosen},
        method_labels={m: run.method_label(m) for m in chosen},
        classes=classes,
        native=native,
    )


def class_name(classes: Sequence[str], target: Optional[int], width: int = 24) -> str:
    """A short readable class name ("tabby, tabby cat" → "tabby"); the index when unnamed."""
    if target is None:
        return "?"
    if 0 <= target < len(classes):
        name = str(classes[target]).split(",")[0].strip()
        return name if len(name) <= width else name[: width - 1] + "…"
    return f"class {target}"


def explained_classes(g: GridImages, row: int) -> Tuple[Optional[int], List[Tuple[str, int]]]:
    """(the class the classifier's columns explain, [(method, class)] of the columns that explain
    another one: methods that explain their own model, and any other disagreeing column)."""
    shared = [g.targets[m][row] for m in g.methods if not g.own[m] and g.targets[m][row] is not None]
    common = max(dict.fromkeys(shared), key=shared.count) if shared else None
    others = [
        (m, g.targets[m][row])
        for m in g.methods
        if g.targets[m][row] is not None and (g.own[m] or g.targets[m][row] != common)
    ]
    return common, others


def row_label(g: GridImages, row: int) -> str:
    """The id of image ``row`` and the class each column explains."""
    common, others = explained_classes(g, row)
    lines = [g.ids[row]]
    if common is not None:
        lines.append(f"→ {class_name(g.classes, common)}")
    for m, t in others:
        mark = OWN_MODEL_MARK if g.own[m] else ""
        lines.append(f"{g.method_labels[m]}{mark} → {class_name(g.classes, t)}")
    return "\n".join(lines)


def column_title(g: GridImages, method: str) -> str:
    return g.method_labels[method] + (OWN_MODEL_MARK if g.own[method] else "")


def draw_grid(g: GridImages, title: str = "") -> "Figure":
    """The qualitative grid: the model's input, then each method's map over it (in grey)."""
    H, W = g.size
    ncols = len(g.methods) + 1
    fig, axes = _figure(len(g.ids), ncols, 1.7, 1.7 * H / W)
    extent = (0, W, H, 0)
    for r, img in enumerate(g.images):
        grey = img @ np.array([0.299, 0.587, 0.114])  # heat maps go over the grey image
        ax = axes[r, 0]
        ax.imshow(img, extent=extent, interpolation="nearest")
        if g.masks[r] is not None and g.masks[r].any():
            centres = (np.arange(W) + 0.5, np.arange(H) + 0.5)  # pixel (i, j) covers [j, j+1] × [i, i+1]
            ax.contour(*centres, g.masks[r].astype(float), levels=[0.5], colors="white", linewidths=0.8)
        ax.set_ylabel(row_label(g, r), fontsize=6.5)
        if r == 0:
            ax.set_title(f"model input {W}×{H}", fontsize=8)
        for c, m in enumerate(g.methods, start=1):
            ax = axes[r, c]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
            heat = g.maps[m][r]
            if heat is None:
                ax.text(W / 2, H / 2, "no map", ha="center", va="center", fontsize=7)
            else:
                ax.imshow(
                    heat,
                    cmap=HEAT_CMAP,
                    alpha=HEAT_ALPHA,
                    vmin=0,
                    vmax=1,
                    extent=extent,
                    interpolation="nearest",
                )
            if r == 0:
                ax.set_title(column_title(g, m), fontsize=8)
    for ax in axes.flat:
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(
        ScalarMappable(Normalize(0, 1), HEAT_CMAP), ax=axes[:, -1], shrink=0.5, aspect=25, pad=0.02
    )
    bar.set_label("attribution, min–max per map", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    notes = ["→ the class each map explains"]
    if any(g.own.values()):
        notes.append(f"{OWN_MODEL_MARK} explains its own model (its own predictor's class)")
    fig.supxlabel("; ".join(notes), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_grid(
    run: RunResults,
    out_dir: Path,
    methods: Optional[Sequence[str]] = None,
    n_images: int = 6,
    seed: Optional[int] = None,
    cache_dir=None,
    data_root=None,
) -> List[Path]:
    if n_images < 1:
        raise UserError(f"--n-images must be a positive integer, got {n_images}")
    g = grid_images(run, methods, n_images, seed, cache_dir, data_root)
    return _save(draw_grid(g, f"{run.dataset} / {run.model}"), out_dir, "grid")


# --------------------------------------------------------------------------- entry point
def plot_run(
    run_dir: str | Path,
    kind: str = "all",
    out_dir: Optional[str | Path] = None,
    methods: Optional[Sequence[str]] = None,
    metrics: Optional[Sequence[str]] = None,
    n_images: int = 6,
    seed: Optional[int] = None,
    cache_dir=None,
    data_root=None,
) -> List[Path]:
    """Write the figures of ``kind`` (curves, bars, grid or all) to ``out_dir`` (default
    RUN/figures); returns the files written."""
    if kind != "all" and kind not in KINDS:
        raise UserError(f"unknown figure kind '{kind}'. Valid kinds: all, {', '.join(KINDS)}")
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir else run.dir / "figures"
    paths: List[Path] = []
    for k in KINDS if kind == "all" else (kind,):
        if k == "curves":
            paths += plot_curves(run, out, methods)
        elif k == "bars":
            paths += plot_bars(run, out, methods, metrics)
        else:
            paths += plot_grid(run, out, methods, n_images, seed, cache_dir, data_root)
    return paths
