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
from .context import RunContext, batches, n_batches
from .log import bar


class MapError(ValueError):
    """A method returned maps that cannot be scored at all (wrong number or shape)."""


@dataclass
class MethodResult:
    """One method's results on the batches it scored (all of them, or one rank's share)."""

    scores: pd.DataFrame  # batch, image_id, target, metric, value
    curves: pd.DataFrame  # batch, metric, x, sum, n: per-batch sums of the finite curve values
    states: Dict[str, torch.Tensor]  # dataset-level metrics: per-image states, rows = state_ids
    state_ids: List[str]
    state_batches: List[int]
    maps: torch.Tensor  # (N, h, w) the method's maps, rows = ids
    ids: List[str]
    batches: List[int]  # the batch of each map
    targets: List[int]
    level: str
    info: dict = field(default_factory=dict)
    #: maps of other classes explained for the metrics (completeness): (image id, class, map, batch)
    extra: List[tuple] = field(default_factory=list)


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
        self.extra: List[tuple] = []  # (image id, class, map) of every map explained again

    def __call__(self, targets: torch.Tensor, model=None, rows: Optional[torch.Tensor] = None):
        """Maps of the batch for ``targets``; with ``model``, the maps of images ``rows`` on that
        model instead (None for a method that does not query the model it explains)."""
        if model is not None:
            return self._on(model, targets, rows)
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
            for i, c, m, ok in zip(
                sub.ids, targets[changed].tolist(), attribution.maps.cpu(), finite.tolist()
            ):
                if ok:
                    self.extra.append((i, c, m))
            maps = self.base.maps.clone()
            maps[changed] = torch.where(
                finite.to(maps.device)[:, None, None], attribution.maps.to(maps.device), 0.0
            )
            self.cache[key] = Attribution(maps, self.base.level, dict(self.base.meta))
            self.seconds += time.perf_counter() - t
        return self.cache[key]

    def _on(self, model, targets: torch.Tensor, rows: Optional[torch.Tensor]) -> Optional[Attribution]:
        if not self.method.queries_model:
            return None
        t = time.perf_counter()
        rows = torch.arange(len(self.batch)) if rows is None else rows
        sub = self.batch.subset(rows.to(self.batch.targets.device))
        attribution = self.method.attribute(model, sub.x, targets[rows], ids=sub.ids, masks=sub.masks)
        finite = check_maps(self.method, model, attribution, len(sub))
        maps = torch.where(finite.to(attribution.maps.device)[:, None, None], attribution.maps, float("nan"))
        self.seconds += time.perf_counter() - t
        return Attribution(maps, attribution.level)


class _Curves:
    """Per-batch sums of per-image curves (finite values only); means are formed when the run's
    results are merged, adding the batches in order (the same sums whoever scored them)."""

    def __init__(self) -> None:
        self.rows: List[dict] = []

    def add(self, batch: int, name: str, xs: torch.Tensor, ys: torch.Tensor, keep: torch.Tensor) -> None:
        ys = ys.detach().cpu().double()[keep]
        finite = torch.isfinite(ys)
        sums = torch.where(finite, ys, torch.zeros_like(ys)).sum(0).tolist()
        counts = finite.sum(0).tolist()
        for x, s, n in zip(xs.tolist(), sums, counts):
            self.rows.append({"batch": batch, "metric": name, "x": x, "sum": s, "n": n})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["batch", "metric", "x", "sum", "n"])


def score_method(
    method,
    metrics,
    ctx: RunContext,
    eval_ctx,
    *,
    batch_size: int,
    target: str,
    numbers: Optional[List[int]] = None,
    desc: Optional[str] = None,
) -> MethodResult:
    """Attribute the scored images with ``method`` and score the maps with ``metrics``.

    ``eval_ctx`` is the metrics' :class:`~xaibench.metrics.EvalContext`; its adapter is the model
    the metrics query (the classifier, or the method's own model). ``numbers``: the batches to
    score (default: all)."""
    scored = eval_ctx.adapter
    rows: List[dict] = []
    curves = _Curves()
    states: Dict[str, List[torch.Tensor]] = {}
    state_ids: List[str] = []
    state_batches: List[int] = []
    maps: List[torch.Tensor] = []
    ids: List[str] = []
    batches_of: List[int] = []
    targets: List[int] = []
    extra: List[tuple] = []
    nonfinite: List[str] = []
    t_attr = t_reexplain = t_metric = 0.0
    level = None
    total = n_batches(ctx, batch_size) if numbers is None else len(numbers)
    stream = batches(ctx, batch_size, target, scored, numbers)
    for b, batch in bar(stream, total=total, desc=desc or method.name):
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
                    rows.append({"batch": b, "image_id": image_id, "target": tgt, "metric": name, "value": v})
            for name, (xs, ys) in result.curves.items():
                curves.add(b, name, xs, ys, keep)
            for name, st in result.states.items():
                states.setdefault(name, []).append(st.detach().cpu()[keep])
        kept = [i for i, k in zip(batch.ids, keep.tolist()) if k]
        state_ids.extend(kept)
        state_batches.extend([b] * len(kept))
        nonfinite.extend(i for i, k in zip(batch.ids, keep.tolist()) if not k)
        extra.extend((i, c, m, b) for i, c, m in explain.extra)
        maps.append(attribution.maps.cpu())
        ids.extend(batch.ids)
        batches_of.extend([b] * len(batch))
        targets.extend(batch.targets.tolist())
    if ids and len(nonfinite) == len(ids):
        raise MapError(f"method '{method.name}' returned NaN or infinite maps for all {len(ids)} images")
    info = {
        "n_images": len(ids),
        "attribute_seconds": round(t_attr + t_reexplain, 3),
        "reexplain_seconds": round(t_reexplain, 3),
        "metric_seconds": round(t_metric, 3),
        "nonfinite_maps": len(nonfinite),
        "nonfinite_ids": nonfinite[:20],
    }
    return MethodResult(
        scores=pd.DataFrame(rows, columns=["batch", "image_id", "target", "metric", "value"]),
        curves=curves.frame(),
        states={k: torch.cat(v) for k, v in states.items()},
        state_ids=state_ids,
        state_batches=state_batches,
        maps=torch.cat(maps) if maps else torch.empty(0),
        ids=ids,
        batches=batches_of,
        targets=targets,
        level=level or "patch",
        info=info,
        extra=extra,
    )
