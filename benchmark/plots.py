"""Figures of a finished run, written as PNG and PDF (headless: matplotlib ``Figure`` objects,
never pyplot's global state).

- ``curves``: the MIF / LIF / SRG and R-MIF / R-LIF / R-SRG curves against the fraction of
  patches kept (salvage-paper Figure 2); the SRG curves are MIF − LIF at each fraction.
  (Other metrics' curves, e.g. IoU against the threshold, have other axes and stay in curves.csv.)
- ``bars``: SRG and R-SRG (or the chosen scores) per method with the 95 % bootstrap CI as
  whiskers.
- ``grid``: rows = a seeded sample of the run's images, columns = the image (with the
  ground-truth mask outlined) and one heat map per method over it (salvage-paper Figure 1).
  Heat maps (jet) lie over the image in grey; each is min-max scaled on its own for display (raw maps
  have method-specific ranges);
  patch-level maps are shown as blocks (nearest upsampling), as the metrics see them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .errors import UserError
from .leaderboard import RunResults, build_leaderboard, load_run, metric_sort_key, ordered, select
from .seeding import generator

KINDS = ("curves", "bars", "grid")
CURVE_TRIPLES = (("mif", "lif", "srg"), ("r_mif", "r_lif", "r_srg"))
DEFAULT_BAR_METRICS = ("srg", "r_srg")


def _label(metric: str) -> str:
    from xaibench.metrics import metric_label

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


def _palette(run: RunResults, methods: Sequence[str]) -> Dict[str, tuple]:
    """One colour per method, the same in every figure of the run."""
    import seaborn as sns

    reference = {"random": (0.55, 0.55, 0.55), "oracle": (0.0, 0.0, 0.0)}  # dashed grey / black
    every = [m for m in sorted(run.config.get("methods", {}) or methods) if m not in reference]
    colors = sns.color_palette("tab10" if len(every) <= 10 else "husl", len(every))
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
    colors = _palette(run, chosen)
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
def plot_bars(
    run: RunResults,
    out_dir: Path,
    methods: Optional[Sequence[str]] = None,
    metrics: Optional[Sequence[str]] = None,
) -> List[Path]:
    table = build_leaderboard(run)
    if table.empty:
        raise UserError(f"run '{run.dir}' has no scores to plot")
    if not metrics:
        metrics = [m for m in DEFAULT_BAR_METRICS if m in set(table["metric"])] or list(
            dict.fromkeys(table["metric"])
        )
    table = select(table, metrics=metrics, methods=methods)
    chosen = ordered(list(table["method"]), table)
    names = sorted(dict.fromkeys(table["metric"]), key=metric_sort_key)
    fig, axes = _figure(1, len(names), 3.8, 0.45 * len(chosen) + 1.2)
    colors = _palette(run, chosen)
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
        ax.set_xlabel("mean over images, 95 % CI")
        ax.grid(axis="y", visible=False)
    fig.suptitle(f"{run.dataset} / {run.model}")
    return _save(fig, out_dir, "bars")


# --------------------------------------------------------------------------- grid
def _load_images(
    run: RunResults, ids: Sequence[str], positions: Sequence[int], cache_dir=None, data_root=None
):
    """The run's images at ``positions`` (the harness scores the split's first n images in
    order); checks that the ids are those of the saved maps."""
    from .datasets import load_dataset
    from .registry import load_plugin

    cfg, res = run.config.get("config", {}), run.config.get("resolved", {})
    for module in cfg.get("plugins", []):
        try:
            load_plugin(module)
        except UserError:
            pass
    dataset, split = run.dataset, res.get("split", cfg.get("split", "test"))
    opts = dict(
        seed=int(cfg.get("seed", 0)),
        cache_dir=cache_dir or cfg.get("cache_dir"),
        data_root=data_root or cfg.get("data_root"),
    )
    if dataset == "synthetic":
        opts["n_test" if split == "test" else f"n_{split}"] = int(cfg.get("n_images") or res.get("n_images"))
    data = load_dataset(dataset, split, **opts)
    samples = [data[p] for p in positions]
    for s, i in zip(samples, ids):
        if s.id != i:
            raise UserError(
                f"the dataset does not give the run's images back (image {s.id!r} where the run "
                f"has {i!r}); pass --data-root / --cache-dir as in the run"
            )
    return samples, list(getattr(data, "classes", []))


def plot_grid(
    run: RunResults,
    out_dir: Path,
    methods: Optional[Sequence[str]] = None,
    n_images: int = 6,
    seed: Optional[int] = None,
    cache_dir=None,
    data_root=None,
) -> List[Path]:
    import torch.nn.functional as F

    if n_images < 1:
        raise UserError(f"--n-images must be a positive integer, got {n_images}")
    parts = run.dir / "parts"
    available = (
        [p.name for p in sorted(parts.iterdir()) if (p / "attributions.pt").exists()]
        if parts.exists()
        else []
    )
    if not available:
        raise UserError(f"run '{run.dir}' has no saved maps (parts/<method>/attributions.pt)")
    chosen = _pick_methods(run, available, methods)
    from .io import load_torch

    saved = {m: load_torch(parts / m / "attributions.pt") for m in chosen}
    ids = list(saved[chosen[0]]["ids"])
    g = generator(run.seed if seed is None else seed, "plot-grid")
    positions = sorted(torch.randperm(len(ids), generator=g)[:n_images].tolist())
    samples, classes = _load_images(run, [ids[p] for p in positions], positions, cache_dir, data_root)
    targets = run.scores.drop_duplicates("image_id").set_index("image_id")["target"].to_dict()
    fig, axes = _figure(len(samples), len(chosen) + 1, 1.7, 1.7)
    for r, (p, smp) in enumerate(zip(positions, samples)):
        img = smp.image.permute(1, 2, 0).clamp(0, 1).numpy()
        H, W = img.shape[:2]
        grey = img @ np.array(
            [0.299, 0.587, 0.114]
        )  # heat maps go over the grey image: colours stay readable
        ax = axes[r, 0]
        ax.imshow(img)
        if smp.mask is not None and smp.mask.any():
            ax.contour(smp.mask.numpy().astype(float), levels=[0.5], colors="white", linewidths=0.8)
        t = targets.get(smp.id)
        name = (
            classes[int(t)]
            if t is not None and 0 <= int(t) < len(classes)
            else (str(t) if t is not None else "")
        )
        ax.set_ylabel(f"{smp.id}\n{name}", fontsize=7)
        if r == 0:
            ax.set_title("image", fontsize=8)
        for c, m in enumerate(chosen, start=1):
            ax = axes[r, c]
            info = saved[m]
            j = list(info["ids"]).index(smp.id) if info["ids"][p] != smp.id else p
            amap = info["maps"][j].float()
            amap = F.interpolate(amap[None, None], size=(H, W), mode="nearest")[0, 0]
            lo, hi = amap.min(), amap.max()
            amap = (amap - lo) / (hi - lo) if hi > lo else torch.zeros_like(amap)
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            ax.imshow(amap.numpy(), cmap="jet", alpha=0.55, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(run.method_label(m), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    return _save(fig, out_dir, "grid")


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
