"""Scoring one method: its maps for every scored image, and every metric on them.

:func:`score_method` returns a :class:`MethodResult` (per-image scores, mean curves, per-image
states of dataset-level metrics, the maps, timings); it writes nothing. Maps that are not finite
(NaN or ±inf anywhere) or have the wrong shape are never scored: a wrong shape fails the method,
a non-finite map makes that image's scores NaN (a recorded failure, counted in the leaderboard's
``n_nan``) and keeps it out of curves and dataset-level metrics.

A metric that needs the map of another class (completeness/soundness explains the second label)
calls ``explain(targets)``: only the images whose target differs are explained again, and not at
all for a method whose map cannot depend on the class (``class_dependent = False``). That time
counts as attribution time, reported apart (``reexplain_seconds``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pandas as pd
import torch

from .attribution import Attribution
from .batch import Batch
from .context import RunContext, batches
from .log import bar


class MapError(ValueError):
    """A method returned maps that cannot be scored at all (wrong number or shape)."""


@dataclass
class MethodResult:
    scores: pd.DataFrame  # image_id, target, metric, value
    curves: pd.DataFrame  # metric, x, value (mean over finite images), n
    states: Dict[str, torch.Tensor]  # dataset-level metrics: per-image states, rows = state_ids
    state_ids: List[str]
    maps: torch.Tensor  # (N, h, w) the method's maps, rows = ids
    ids: List[str]
    targets: List[int]
    level: str
    info: dict = field(default_factory=dict)


def check_maps(method, adapter, attribution: Attribution, n: int) -> torch.Tensor:
    """Raise :class:`MapError` on a wrong count or shape; return the (n,) mask of finite maps."""
    expected = {"patch": adapter.grid, "pixel": adapter.input_size}[attribution.level]
    if len(attribution) != n or tuple(attribution.maps.shape[1:]) != tuple(expected):
        raise MapError(
            f"method '{method.name}' returned maps of shape {tuple(attribution.maps.shape)} at level "
            f"{attribution.level}; expected ({n}, {expected[0]}, {expected[1]})"
        )
    return torch.isfinite(attribution.maps).flatten(1).all(1).cpu()


class _Explainer:
    """Maps of one batch for any targets, computing only what differs from the batch's own."""

    def __init__(self, method, adapter, batch: Batch, base: Attribution, bad: torch.Tensor) -> None:
        self.method, self.adapter, self.batch, self.base, self.bad = method, adapter, batch, base, bad
        self.cache: Dict[tuple, Attribution] = {}
        self.seconds = 0.0

    def __call__(self, targets: torch.Tensor) -> Attribution:
        if not self.method.class_dependent:
            return self.base
        targets = targets.to(self.batch.targets.device)
        changed = (targets != self.batch.targets).nonzero()[:, 0]
        if len(changed) == 0:
            return self.base
        key = tuple(targets.tolist())
        if key not in self.cache:
            t = time.perf_counter()
            sub = self.batch.subset(changed)
            attribution = self.method.attribute(
                self.adapter, sub.x, targets[changed], ids=sub.ids, masks=sub.masks
            )
            finite = check_maps(self.method, self.adapter, attribution, len(sub))
            self.bad[changed.cpu()[~finite]] = True
            maps = self.base.maps.clone()
            maps[changed] = torch.where(
                finite.to(maps.device)[:, None, None], attribution.maps.to(maps.device), 0.0
            )
            self.cache[key] = Attribution(maps, self.base.level, dict(self.base.meta))
            self.seconds += time.perf_counter() - t
        return self.cache[key]


class _Curves:
    """Running sums of per-image curves (finite values only) → mean curves."""

    def __init__(self) -> None:
        self.total: Dict[tuple, float] = {}
        self.count: Dict[tuple, int] = {}

    def add(self, name: str, xs: torch.Tensor, ys: torch.Tensor, keep: torch.Tensor) -> None:
        ys = ys.detach().cpu().double()[keep]
        for j, x in enumerate(xs.tolist()):
            col = ys[:, j]
            finite = torch.isfinite(col)
            key = (name, x)
            self.total[key] = self.total.get(key, 0.0) + float(col[finite].sum())
            self.count[key] = self.count.get(key, 0) + int(finite.sum())

    def frame(self) -> pd.DataFrame:
        rows = [
            {"metric": k[0], "x": k[1], "value": self.total[k] / max(1, self.count[k]), "n": self.count[k]}
            for k in self.total
        ]
        return pd.DataFrame(rows, columns=["metric", "x", "value", "n"])


def score_method(
    method, metrics, ctx: RunContext, eval_ctx, *, batch_size: int, target: str, desc: Optional[str] = None
) -> MethodResult:
    """Attribute every scored image with ``method`` and score the maps with ``metrics``.

    ``eval_ctx`` is the metrics' :class:`~xaibench.metrics.EvalContext`; its adapter is the model
    the metrics query (the classifier, or the method's own model)."""
    scored = eval_ctx.adapter
    rows: List[dict] = []
    curves = _Curves()
    states: Dict[str, List[torch.Tensor]] = {}
    state_ids: List[str] = []
    maps: List[torch.Tensor] = []
    ids: List[str] = []
    targets: List[int] = []
    nonfinite: List[str] = []
    t_attr = t_reexplain = t_metric = 0.0
    level = None
    n_batches = -(-len(ctx.indices) // batch_size)
    for batch in bar(batches(ctx, batch_size, target, scored), total=n_batches, desc=desc or method.name):
        t = time.perf_counter()
        attribution = method.attribute(ctx.adapter, batch.x, batch.targets, ids=batch.ids, masks=batch.masks)
        finite = check_maps(method, ctx.adapter, attribution, len(batch))
        t_attr += time.perf_counter() - t
        method.observe(ctx.adapter, batch)
        level = attribution.level
        bad = ~finite
        clean = torch.where(finite.to(attribution.maps.device)[:, None, None], attribution.maps, 0.0)
        attribution = Attribution(clean, attribution.level, attribution.meta)
        explain = _Explainer(method, ctx.adapter, batch, attribution, bad)
        t = time.perf_counter()
        results = [metric.compute(eval_ctx, batch, attribution, explain) for metric in metrics]
        t_metric += time.perf_counter() - t - explain.seconds
        t_reexplain += explain.seconds
        keep = ~bad
        for result in results:
            for name, values in result.scores.items():
                values = values.detach().cpu().double().masked_fill(bad, float("nan"))
                for image_id, tgt, v in zip(batch.ids, batch.targets.tolist(), values.tolist()):
                    rows.append({"image_id": image_id, "target": tgt, "metric": name, "value": v})
            for name, (xs, ys) in result.curves.items():
                curves.add(name, xs, ys, keep)
            for name, st in result.states.items():
                states.setdefault(name, []).append(st.detach().cpu()[keep])
        state_ids.extend(i for i, b in zip(batch.ids, bad.tolist()) if not b)
        nonfinite.extend(i for i, b in zip(batch.ids, bad.tolist()) if b)
        maps.append(attribution.maps.cpu())
        ids.extend(batch.ids)
        targets.extend(batch.targets.tolist())
    if ids and len(nonfinite) == len(ids):
        raise MapError(f"method '{method.name}' returned NaN or infinite maps for all {len(ids)} images")
    info = {
        "n_images": len(ids),
        "attribute_seconds": round(t_attr + t_reexplain, 3),
        "reexplain_seconds": round(t_reexplain, 3),
        "metric_seconds": round(t_metric, 3),
        "maps_per_second": round(len(ids) / max(t_attr, 1e-9), 2),
        "nonfinite_maps": len(nonfinite),
        "nonfinite_ids": nonfinite[:20],
    }
    return MethodResult(
        scores=pd.DataFrame(rows, columns=["image_id", "target", "metric", "value"]),
        curves=curves.frame(),
        states={k: torch.cat(v) for k, v in states.items()},
        state_ids=state_ids,
        maps=torch.cat(maps) if maps else torch.empty(0),
        ids=ids,
        targets=targets,
        level=level or "patch",
        info=info,
    )
