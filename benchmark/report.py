"""``xaibench report``: one self-contained HTML page of finished runs.

The page needs no server and no network: CSS and JavaScript are inline, images are data URIs.
It holds, for the runs given (several runs: one column group per dataset / model):

- the leaderboard: mean ± half-width of the 95 % bootstrap CI, best of each column in bold,
  second best in italics, † where a method is not significantly different from the best (the
  same table as ``xaibench leaderboard``), with sortable columns (a button in each header,
  ``aria-sort`` on the header cell; keyboard-operable);
- the aggregate ranking (``mean_rank`` rows): methods by mean rank, with its interval and the
  scores that entered it;
- the MIF / LIF / SRG and R-MIF / R-LIF / R-SRG curves of every method (inline SVG; each method
  can be shown or hidden);
- the qualitative grid (:func:`xaibench.plots.draw_grid`: every map over the pixels the model saw);
- a per-image explorer: pick an image of the preview sample and see every method's map over it
  (the preprocessed image under it, the class the map explains) and its scores from scores.csv;
- the provenance of each run: command, versions, settings, seeds, the hashes of its data, weights
  and source, every method's status and timings, and config.json in full.

Colours: seaborn's colour-blind palette for methods, magma for heat maps (no jet); bold / italic
/ † carry the table's marks, not colour alone.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd

from . import __version__
from .errors import UserError
from .exports import ARROWS, NOT_SIGNIFICANT, OWN_MODEL, aggregate_notes, grid, legend
from .io import write_text
from .leaderboard import AGGREGATE, AGGREGATE_LABEL, RunResults, leaderboard, metric_sort_key, ordered
from .plots import (
    HEAT_CMAP,
    _label,
    class_name,
    draw_grid,
    explained_classes,
    grid_images,
    method_palette,
    preview_files,
)
from .seeding import generator

log = logging.getLogger(__name__)

#: panels of the curve figures: (first, second, their difference)
CURVE_TRIPLES = (("mif", "lif", "srg"), ("r_mif", "r_lif", "r_srg"))
DASHES = ("", "6 3", "2 2", "8 3 2 3")
GRID_IMAGES = 6
TIED_TITLE = "not significantly different from the best"
METHOD_COLUMNS = ("Method", "Status", "Images", "Fit s", "Attribution s", "Maps/s", "Reason, notes")


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def _json_script(element_id: str, data) -> str:
    text = json.dumps(data, separators=(",", ":"), default=str).replace("</", "<\\/")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def _data_uri(image: np.ndarray, fmt: str) -> str:
    """An (H, W, 3) float image in [0, 1] (or uint8) as a PNG / JPEG data URI."""
    from PIL import Image

    arr = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(arr).save(buf, format="JPEG", quality=88, optimize=True)
    else:
        Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_uri(fig) -> str:
    """A figure as a PNG or JPEG data URI, whichever is smaller (photographs: JPEG, by several times;
    flat synthetic images: PNG)."""
    encoded = {}
    for fmt, kw in (("png", {}), ("jpeg", {"pil_kwargs": {"quality": 90}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=110, **kw)
        encoded[fmt] = buf.getvalue()
    fmt = min(encoded, key=lambda f: len(encoded[f]))
    return f"data:image/{fmt};base64," + base64.b64encode(encoded[fmt]).decode("ascii")


def _hex(colour) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in colour[:3])


def _number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "n/a"


# --------------------------------------------------------------------------- leaderboard
def leaderboard_html(table: pd.DataFrame) -> str:
    """The leaderboard as a sortable table (one row per method, one column per run × score)."""
    if table.empty:
        return '<p class="note">No scores in these runs.</p>'
    methods, cols, cells, info, directions, labels = grid(table)
    groups = list(dict.fromkeys(g for g, _ in cols))
    head = []
    if len(groups) > 1:
        spans = "".join(
            f'<th scope="colgroup" colspan="{sum(1 for g, _ in cols if g == group)}">{esc(group)}</th>'
            for group in groups
        )
        head.append(f'<tr><td aria-hidden="true"></td>{spans}</tr>')
    ths = [
        '<th scope="col" aria-sort="none">'
        '<button type="button" data-col="0" data-kind="text">Method</button></th>'
    ]
    for k, c in enumerate(cols, start=1):
        arrow = ARROWS.get(directions[c], "")
        best = {"up": "higher is better", "down": "lower is better"}.get(directions[c], "")
        ths.append(
            f'<th scope="col" aria-sort="none" title="{esc(best)}"><button type="button" data-col="{k}" '
            f'data-dir="{esc(directions[c] or "")}">{esc(labels[c])} {arrow}</button></th>'
        )
    head.append("<tr>" + "".join(ths) + "</tr>")
    rows = []
    for m in methods:
        name = info[m]["label"] + (f" {OWN_MODEL}" if info[m]["own"] else "")
        reference = bool(table.loc[table["method"] == m, "reference"].any())
        tds = [f'<th scope="row" data-sort="{esc(info[m]["label"].lower())}">{esc(name)}</th>']
        for c in cols:
            cell = cells.get((m, c))
            if cell is None:
                tds.append('<td data-sort=""></td>')
                continue
            text = esc(cell.value())
            if cell.best:
                text = f"<strong>{text}</strong>"
            elif cell.second:
                text = f"<em>{text}</em>"
            extra = ""
            if cell.half_width() is not None:
                extra = f'<span class="ci"> ± {esc(cell.half_width())}</span>'
            elif cell.interval():
                extra = f'<span class="ci"> {esc(cell.interval())}</span>'
            if cell.tied:
                extra += f' <span class="dag" title="{TIED_TITLE}">{NOT_SIGNIFICANT}</span>'
            title = f"95 % CI [{_number(cell.lo, cell.digits)}, {_number(cell.hi, cell.digits)}]"
            key = f"{cell.mean:.10g}" if cell.finite else ""
            tds.append(f'<td data-sort="{key}" title="{esc(title)}">{text}{extra}</td>')
        rows.append(
            f'<tr data-method="{esc(m)}"{" class=reference" if reference else ""}>{"".join(tds)}</tr>'
        )
    lines = legend(table, ci=True)
    lines[0] = lines[0].replace("second best marked", "second best in italics")
    notes = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return (
        '<div class="scroll"><table class="board sortable">'
        "<caption>Per-method scores. Sort by any column with its header button "
        "(click again to reverse).</caption>"
        f"<thead>{''.join(head)}</thead><tbody>{''.join(rows)}</tbody></table></div>"
        f'<ul class="notes">{notes}</ul>'
    )


def ranking_html(table: pd.DataFrame) -> str:
    """The aggregate rank across metrics: per run, methods by mean rank with the interval drawn."""
    agg = table[table["metric"] == AGGREGATE] if not table.empty else table
    if agg.empty:
        return (
            f'<p class="note">No {AGGREGATE_LABEL.lower()}: it needs scores of at least two metric '
            "families with a better side (↑/↓) and two ranked methods.</p>"
        )
    parts = []
    for group, g in agg.groupby("group", sort=False):
        g = g[np.isfinite(g["mean"].astype(float))].sort_values("mean")
        n_methods = max(len(g), 2)  # ranks run from 1 to the number of ranked methods
        rows = []
        for r in g.itertuples():
            lo, hi, mean = (float(v) for v in (r.ci_low, r.ci_high, r.mean))
            scale = 100.0 / (n_methods - 1)
            left, width = (lo - 1) * scale, max((hi - lo) * scale, 0.5)
            dag = f' <span class="dag">{NOT_SIGNIFICANT}</span>' if r.tied_with_best else ""
            label = r.method_label + (f" {OWN_MODEL}" if r.explains_own_model else "")
            rows.append(
                f'<tr data-method="{esc(r.method)}"><td>{int(r.rank) if r.rank == r.rank else ""}</td>'
                f"<th scope=row>{esc(label)}</th><td>{mean:.2f}{dag}</td><td>[{lo:.2f}, {hi:.2f}]</td>"
                f'<td class="barcell"><div class="rankbar" role="img" '
                f'aria-label="interval {lo:.2f} to {hi:.2f}">'
                f'<span class="ci-bar" style="left:{left:.1f}%;width:{width:.1f}%"></span>'
                f'<span class="mark" style="left:{(mean - 1) * scale:.1f}%"></span></div></td></tr>'
            )
        parts.append(
            f"<h3>{esc(group)}</h3><table class=ranking><thead><tr><th scope=col>Place</th>"
            f"<th scope=col>Method</th><th scope=col>{AGGREGATE_LABEL} ↓</th><th scope=col>95 % interval</th>"
            f"<th scope=col>1 … {n_methods}</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    notes = "".join(f"<li>{esc(line)}</li>" for line in aggregate_notes(table))
    return "".join(parts) + f'<ul class="notes">{notes}</ul>'


# --------------------------------------------------------------------------- curves
def _ticks(lo: float, hi: float) -> np.ndarray:
    from matplotlib.ticker import MaxNLocator

    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        lo, hi = (lo - 1, lo + 1) if math.isfinite(lo) else (0.0, 1.0)
    ticks = MaxNLocator(5).tick_values(lo, hi)
    return ticks[(ticks >= lo - 1e-9) & (ticks <= hi + 1e-9)] if len(ticks) > 2 else ticks


def _panel_svg(title: str, frame: pd.DataFrame, styles: Dict[str, dict]) -> str:
    """One curve panel: x = fraction of patches kept, one polyline per method (column of frame)."""
    W, H, left, right, top, bottom = 300, 220, 46, 10, 24, 34
    values = frame.to_numpy(float)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    lo, hi = lo - pad, hi + pad
    ticks = _ticks(lo, hi)
    lo, hi = min(lo, float(ticks.min())), max(hi, float(ticks.max()))

    def px(x):
        return left + x * (W - left - right)

    def py(y):
        return top + (hi - y) / (hi - lo) * (H - top - bottom)

    out = [
        f'<svg class="curve" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{esc(title)} against the fraction of patches kept">',
        f'<text x="{W / 2}" y="15" text-anchor="middle" class="ttl">{esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{W - left - right}" height="{H - top - bottom}" class="plot"/>',
    ]
    for t in ticks:
        y = py(t)
        out.append(f'<line x1="{left}" x2="{W - right}" y1="{y:.1f}" y2="{y:.1f}" class="gl"/>')
        out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="tk">{t:g}</text>')
    for t in (0, 0.25, 0.5, 0.75, 1):
        out.append(
            f'<text x="{px(t):.1f}" y="{H - bottom + 13}" text-anchor="middle" class="tk">{t:g}</text>'
        )
    out.append(
        f'<text x="{(left + W - right) / 2}" y="{H - 4}" text-anchor="middle" class="tk">'
        "fraction of patches kept</text>"
    )
    for m in frame.columns:
        s = frame[m].dropna()
        if s.empty:
            continue
        st = styles[m]
        points = " ".join(f"{px(float(x)):.1f},{py(float(y)):.1f}" for x, y in zip(s.index, s.values))
        dash = f' stroke-dasharray="{st["dash"]}"' if st["dash"] else ""
        out.append(
            f'<polyline data-method="{esc(m)}" points="{points}" stroke="{st["colour"]}" stroke-width="1.8" '
            f'fill="none"{dash}><title>{esc(st["label"])}</title></polyline>'
        )
    out.append("</svg>")
    return "".join(out)


def curves_html(run: RunResults, methods: Sequence[str], key: str) -> str:
    """MIF / LIF / SRG and R-MIF / R-LIF / R-SRG panels of one run, with a legend that shows or
    hides each method."""
    curves = run.curves[run.curves["method"].isin(methods)] if not run.curves.empty else run.curves
    if curves.empty:
        return '<p class="note">No curves in this run (run it with the mif/lif or r_mif/r_lif metrics).</p>'
    frames = {
        m: g.pivot_table(index="x", columns="method", values="value") for m, g in curves.groupby("metric")
    }
    shown = [m for m in methods if m in set(curves["method"])]
    colours = method_palette(run, shown)
    styles = {}
    for i, m in enumerate(shown):
        reference = m in ("random", "oracle")
        styles[m] = {
            "colour": _hex(colours[m]),
            "dash": "5 3" if reference else DASHES[(i // 9) % len(DASHES)],
            "label": run.method_label(m),
        }
    directions = run.directions()
    rows = []
    for a, b, diff in CURVE_TRIPLES:
        panels = [(name, frames[name]) for name in (a, b) if name in frames]
        if a in frames and b in frames:
            panels.append((diff, frames[a] - frames[b]))
        if panels:
            rows.append(
                '<div class="panels">'
                + "".join(
                    _panel_svg(
                        f"{_label(n)} {ARROWS.get(directions.get(n, 'up' if n == diff else ''), '')}".strip(),
                        f.reindex(columns=[m for m in shown if m in f.columns]),
                        styles,
                    )
                    for n, f in panels
                )
                + "</div>"
            )
    if not rows:
        return '<p class="note">No MIF/LIF or R-MIF/R-LIF curves in this run.</p>'
    items = []
    for m in shown:
        st = styles[m]
        dash = f' stroke-dasharray="{st["dash"]}"' if st["dash"] else ""
        swatch = (
            f'<svg width="26" height="10" aria-hidden="true"><line x1="1" x2="25" y1="5" y2="5" '
            f'stroke="{st["colour"]}" stroke-width="2.5"{dash}/></svg>'
        )
        items.append(
            f'<label><input type="checkbox" checked data-method="{esc(m)}"> {swatch} '
            f"{esc(st['label'])}</label>"
        )
    return (
        f'<div class="curves" id="curves-{key}"><fieldset class="legend"><legend>Methods shown</legend>'
        f"{''.join(items)}</fieldset>{''.join(rows)}"
        "<p class=note>Mean over images of the target probability (×100) with a fraction of the patches "
        "kept: the most important ones (MIF) or the least important ones (LIF) by the map; SRG = MIF − LIF. "
        "R-MIF / R-LIF keep subsets drawn with probabilities from the min–max scaled map (or its "
        "complement); R-SRG = R-MIF − R-LIF.</p></div>"
    )


# --------------------------------------------------------------------------- images
def _heat_uri(heat: np.ndarray) -> str:
    """A min-max scaled map in magma at its own resolution (the browser scales it onto the image)."""
    from matplotlib import colormaps

    rgb = colormaps[HEAT_CMAP](heat)[..., :3]
    return _data_uri(rgb, "png" if heat.size <= 64 * 64 else "jpeg")


def _image_scores(run: RunResults, ids: Sequence[str], methods: Sequence[str]):
    """{method: {image id: [[metric label, value, arrow], ...]}} from scores.csv (the mean over
    training seeds where a method has several)."""
    s = run.scores
    s = s[s["image_id"].isin(list(ids)) & s["method"].isin(list(methods))]
    if s.empty:
        return {}
    means = s.groupby(["method", "image_id", "metric"], sort=False)["value"].mean()
    directions = run.directions()
    order = sorted(dict.fromkeys(s["metric"]), key=metric_sort_key)
    out: Dict[str, Dict[str, list]] = {}
    for (m, i, metric), v in means.items():
        out.setdefault(m, {}).setdefault(i, {})[metric] = v
    return {
        m: {
            i: [
                [
                    _label(k),
                    None if not math.isfinite(float(per[k])) else round(float(per[k]), 3),
                    ARROWS.get(directions.get(k, ""), ""),
                ]
                for k in order
                if k in per
            ]
            for i, per in by_image.items()
        }
        for m, by_image in out.items()
    }


def images_html(
    run: RunResults, methods: Sequence[str], key: str, n_grid: int, cache_dir, data_root
) -> tuple:
    """(grid section, explorer section) of one run; a note in both when its images cannot be loaded."""
    available = [m for m in methods if m in preview_files(run)]
    if not available:
        note = '<p class="note">This run kept no maps (maps/&lt;method&gt;.preview.npz).</p>'
        return note, note
    try:
        g = grid_images(run, available, None, None, cache_dir, data_root)
    except UserError as exc:
        log.warning(f"report: the images of run {run.run_id} are not shown: {exc}")
        note = f'<p class="note">The images of this run cannot be shown: {esc(exc)}</p>'
        return note, note
    import torch

    # the grid: a seeded subset of the preview sample (as `xaibench plot --kind grid`)
    pick = list(range(len(g.ids)))
    if n_grid < len(pick):
        pick = sorted(torch.randperm(len(pick), generator=generator(run.seed, "plot-grid"))[:n_grid].tolist())
    sub = _subset(g, pick)
    fig = draw_grid(sub, f"{run.dataset} / {run.model}")
    H, W = g.size
    grid_part = (
        f'<figure class="grid"><img src="{_figure_uri(fig)}" alt="Qualitative grid: {len(pick)} images of '
        f'{esc(run.dataset)}, each method&#39;s map over the {W}×{H} input the model saw">'
        "<figcaption>Each map lies over the pixels the model saw (the dataset image after the model's "
        "preprocessing), min–max scaled per map; → names the class each map explains.</figcaption></figure>"
    )
    data = {
        "size": [W, H],
        "images": [],
        "methods": [
            {
                "name": m,
                "label": g.method_labels[m] + (OWN_MODEL if g.own[m] else ""),
                "own": g.own[m],
                "patch": g.levels[m] == "patch",
            }
            for m in g.methods
        ],
        "scores": _image_scores(run, g.ids, g.methods),
    }
    for r, image_id in enumerate(g.ids):
        common, _ = explained_classes(g, r)
        data["images"].append(
            {
                "id": image_id,
                "truth": class_name(g.classes, g.labels[r]),
                "explained": class_name(g.classes, common) if common is not None else "",
                "src": _data_uri(g.images[r], "jpeg"),
                "maps": [None if g.native[m][r] is None else _heat_uri(g.native[m][r]) for m in g.methods],
                "targets": [
                    None if g.targets[m][r] is None else class_name(g.classes, g.targets[m][r])
                    for m in g.methods
                ],
            }
        )
    options = "".join(
        f'<option value="{r}">{esc(i)} ({esc(data["images"][r]["truth"])})</option>'
        for r, i in enumerate(g.ids)
    )
    explorer = (
        f'<div class="explorer{" small" if max(W, H) < 128 else ""}" data-source="explorer-{key}" '
        f'style="--ar:{W}/{H}">'
        f'<div class="controls"><button type="button" class="prev" aria-label="previous image">◀</button>'
        f'<label>Image <select class="pick">{options}</select></label>'
        f'<button type="button" class="next" aria-label="next image">▶</button>'
        f'<span class="count" aria-live="polite"></span></div>'
        f'<div class="stage"><figure class="input"><div class="frame"><img class="base" alt=""></div>'
        f'<figcaption></figcaption></figure><div class="cards"></div></div>'
        f"{_json_script(f'explorer-{key}', data)}"
        "<noscript><p class=note>The image explorer needs JavaScript.</p></noscript>"
        f"<p class=note>The {len(g.ids)} images of the run's preview sample (the same for every method), "
        f"at the {W}×{H} input the model saw; maps in magma over the image in grey, min–max scaled per "
        "map; scores of that image from scores.csv."
        f"{' * explains its own model.' if any(g.own.values()) else ''}</p></div>"
    )
    return grid_part, explorer


def _subset(g, rows: Sequence[int]):
    from dataclasses import replace

    pick = lambda seq: [seq[r] for r in rows]  # noqa: E731
    return replace(
        g,
        ids=pick(g.ids),
        images=pick(g.images),
        masks=pick(g.masks),
        labels=pick(g.labels),
        maps={m: pick(v) for m, v in g.maps.items()},
        targets={m: pick(v) for m, v in g.targets.items()},
        native={m: pick(v) for m, v in g.native.items()},
    )


# --------------------------------------------------------------------------- provenance
def _dl(items: Sequence[tuple]) -> str:
    rows = "".join(
        f"<dt>{esc(k)}</dt><dd>{v if isinstance(v, Markup) else esc(v)}</dd>"
        for k, v in items
        if v not in (None, "")
    )
    return f"<dl>{rows}</dl>"


class Markup(str):
    """Text already in HTML."""


def _code(value) -> Markup:
    return Markup(f"<code>{esc(value)}</code>")


def provenance_html(run: RunResults) -> str:
    c = run.config
    identity = c.get("identity") or {}
    ds, model = identity.get("dataset") or {}, c.get("model") or {}
    res, cfg = c.get("resolved") or {}, c.get("config") or {}
    manifest = {}
    if (run.dir / "manifest.json").exists():
        manifest = json.loads((run.dir / "manifest.json").read_text()).get("meta", {})
    general = _dl(
        [
            ("run", _code(run.run_id)),
            ("status", c.get("status")),
            ("wall time", f"{c['seconds']} s" if c.get("seconds") is not None else None),
            ("command", _code(c.get("command") or "(not run from the command line: see the settings)")),
            (
                "dataset",
                f"{run.dataset} / {res.get('split', cfg.get('split', ''))}, "
                f"{res.get('n_images', '?')} images",
            ),
            ("model", f"{run.model} ({model.get('arch', '')}, input {model.get('input_size', '')})"),
            ("target", res.get("target")),
            ("removal", json.dumps(res.get("removal"))),
            ("preset", res.get("preset")),
            ("seed", res.get("seed", cfg.get("seed"))),
            ("training seeds", res.get("train_seeds")),
        ]
    )
    hashes = _dl(
        [
            ("data fingerprint", _code(ds.get("fingerprint", ""))),
            ("image ids sha256", _code(ds.get("image_ids_sha256", ""))),
            (
                "weights sha256",
                _code(
                    (identity.get("model") or {}).get("weights_sha256") or model.get("weights_sha256") or ""
                ),
            ),
            ("weights", model.get("weights")),
            ("weights file sha256", _code(model.get("file_sha256")) if model.get("file_sha256") else None),
            ("source sha256", _code(identity.get("source_sha256", ""))),
            ("run key", _code(manifest.get("run_key", "")) if manifest.get("run_key") else None),
            ("preprocessing", json.dumps(model.get("data_config")) if model.get("data_config") else None),
            ("skipped images", len((c.get("dataset") or {}).get("skipped_files") or []) or None),
        ]
    )
    versions = "".join(
        f"<tr><th scope=row>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in (c.get("versions") or {}).items()
    )
    settings = "".join(
        f"<tr><th scope=row>{esc(k)}</th><td><code>{esc(json.dumps(v, default=str))}</code></td></tr>"
        for k, v in cfg.items()
    )
    methods = []
    for m, i in (c.get("methods") or {}).items():
        why = "; ".join([i.get("reason") or ""] + list(i.get("notes") or [])).strip("; ")
        methods.append(
            f"<tr><th scope=row>{esc(i.get('label') or m)}</th><td>{esc(i.get('status', ''))}</td>"
            f"<td>{esc(i.get('n_images', ''))}</td><td>{esc(i.get('fit_seconds', ''))}</td>"
            f"<td>{esc(i.get('attribute_seconds', ''))}</td><td>{esc(i.get('maps_per_second', ''))}</td>"
            f"<td>{esc(why)}</td></tr>"
        )
    full = json.dumps(c, indent=1, default=str, ensure_ascii=False)
    return (
        f'<div class="prov"><div>{general}</div><div>{hashes}</div></div>'
        "<h4>Methods</h4><div class=scroll><table class=plain><thead><tr>"
        + "".join(f"<th scope=col>{h}</th>" for h in METHOD_COLUMNS)
        + f"</tr></thead><tbody>{''.join(methods)}</tbody></table></div>"
        f'<div class="prov"><div><h4>Versions</h4><table class=plain>{versions}</table></div>'
        f"<div><h4>Settings</h4><table class=plain>{settings}</table></div></div>"
        f"<details><summary>config.json in full</summary><pre>{esc(full)}</pre></details>"
    )


# --------------------------------------------------------------------------- page
def build_report(
    run_dirs: Sequence[str | Path],
    *,
    methods: Optional[Sequence[str]] = None,
    n_grid: int = GRID_IMAGES,
    cache_dir=None,
    data_root=None,
) -> str:
    """The HTML text of the report of the finished runs ``run_dirs``."""
    if n_grid < 1:
        raise UserError(f"--n-images must be a positive integer, got {n_grid}")
    if not run_dirs:
        raise UserError("give at least one run directory")
    table, runs = leaderboard(run_dirs, methods=methods)
    several = len(runs) > 1
    body, nav = [], []

    def section(anchor: str, title: str, content: str) -> None:
        nav.append(f'<a href="#{anchor}">{esc(title)}</a>')
        heading = f'<h2 id="{anchor}-h">{esc(title)}</h2>'
        body.append(f'<section id="{anchor}" aria-labelledby="{anchor}-h">{heading}{content}</section>')

    section("leaderboard", "Leaderboard", leaderboard_html(table))
    section("ranking", "Aggregate ranking", ranking_html(table))
    curves, grids, explorers, prov = [], [], [], []
    for k, run in enumerate(runs):
        sub = table[table["run_id"] == run.run_id]
        chosen = ordered(list(sub["method"]), sub) if not sub.empty else []
        title = (
            f"<h3>{esc(run.dataset)} / {esc(run.model)} <small>({esc(run.run_id)})</small></h3>"
            if several
            else ""
        )
        curves.append(title + curves_html(run, chosen, str(k)))
        g, e = images_html(run, chosen, str(k), n_grid, cache_dir, data_root)
        grids.append(title + g)
        explorers.append(title + e)
        prov.append(title + provenance_html(run))
    section("curves", "Curves", "".join(curves))
    section("grid", "Qualitative grid", "".join(grids))
    section("explorer", "Image explorer", "".join(explorers))
    section("provenance", "Provenance", "".join(prov))
    runs_text = "; ".join(f"{r.dataset} / {r.model} ({r.run_id})" for r in runs)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>xaibench report: {esc(runs_text)}</title><style>{asset('report.css')}</style></head><body>"
        f"<header><h1>xaibench report</h1><p>{esc(runs_text)} · xaibench {esc(__version__)}</p>"
        f'<nav aria-label="sections">{" ".join(nav)}</nav></header><main>{"".join(body)}</main>'
        f"<script>{asset('report.js')}</script></body></html>\n"
    )


def asset(name: str) -> str:
    """The text of a file of ``report_assets/`` (package data)."""
    from importlib.resources import files

    return files("xaibench").joinpath("report_assets", name).read_text(encoding="utf-8")


def write_report(run_dirs: Sequence[str | Path], out: str | Path, **kw) -> Path:
    """Write the report of ``run_dirs`` to the file ``out`` (atomically); returns its path."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: pass a file name (e.g. {out / 'report.html'})")
    text = build_report(run_dirs, **kw)
    return write_text(out, text)


# --------------------------------------------------------------------------- headless browser
#: how Chromium is started: headless, and without the background connections a closed network refuses
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--disable-dev-shm-usage",  # containers: a small /dev/shm crashes large pages
)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> Optional[tuple]:
    """(browser, driver) executables of an installed Chromium and its ChromeDriver, else None."""
    import shutil

    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def headless_chromium(width: int = 1366, height: int = 900):
    """A Selenium WebDriver of a headless Chromium with a fresh profile (never downloads a browser
    or a driver: Debian's ``chromium`` and ``chromium-driver``)."""
    found = find_chromium()
    if found is None:
        raise UserError(
            "no Chromium with ChromeDriver found (Debian: apt-get install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise UserError("the screenshot needs selenium (pip install -e '.[test]')") from exc
    with tempfile.TemporaryDirectory(prefix="xaibench-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = found[0]
        for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1366) -> Path:
    """A PNG of the whole page ``html_path`` (headless Chromium, ``width`` CSS pixels wide)."""
    html_path, png_path = Path(html_path).resolve(), Path(png_path)
    with headless_chromium(width) as driver:
        driver.get(html_path.as_uri())
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(width, height + 140)  # window chrome: the viewport is smaller
        viewport = int(driver.execute_script("return window.innerHeight"))
        if viewport < height:
            driver.set_window_size(width, height + 140 + (height - viewport))
        png_path.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(png_path)):
            raise UserError(f"Chromium could not write the screenshot {png_path}")
    return png_path
