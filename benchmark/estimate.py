"""The cost of a run before it starts: passes through the model per method and metric, and time.

Every method and metric states its cost per image in passes through the model
(:mod:`xaibench.cost`); learned methods add their training (``fit_cost``). Their sum over the
scored images is the run's cost in forward-equivalents. The time follows from a short
calibration on the actual device, model and thread count (inputs per second of a forward pass
at the forward chunk size), and, for comparison across machines, at a reference rate of 3,000
forward-equivalents per second — about what one H100 does for a ViT-S/16 at 224 px.
``xaibench run --dry-run`` prints the table and stops; a run logs it before it scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List

import torch

from .cost import Shape

REFERENCE_RATE = 3000.0


@dataclass
class Line:
    method: str
    attribution: float  # forward-equivalents per image (re-explanations for metrics excluded)
    metrics: float  # forward-equivalents per image, re-explanations included
    training: float  # forward-equivalents, once per run

    def total(self, n_images: int) -> float:
        return n_images * (self.attribution + self.metrics) + self.training


def lines(methods, metrics, shape: Shape, eval_ctx, n_train: int, train_seeds: int) -> List[Line]:
    out = []
    for m in methods:
        seeds = train_seeds if m.requires.training else 1
        out.append(
            Line(
                m.name,
                seeds * m.cost(shape).equivalent,
                seeds * sum(metric.cost(shape, eval_ctx, m).equivalent for metric in metrics),
                seeds * m.fit_cost(shape, n_train).equivalent,
            )
        )
    return out


def inputs_per_second(adapter, repeats: int = 3) -> float:
    """Forward throughput of the model at its forward chunk (median of ``repeats`` timed passes)."""
    rows = max(1, min(adapter.chunk_size, 256))
    x = torch.zeros(rows, 3, *adapter.input_size, device=adapter.device)
    times = []
    with torch.inference_mode():
        adapter.logits(x)  # warm-up
        for _ in range(repeats):
            if adapter.device.type == "cuda":
                torch.cuda.synchronize(adapter.device)
            t = time.perf_counter()
            adapter.logits(x)
            if adapter.device.type == "cuda":
                torch.cuda.synchronize(adapter.device)
            times.append(time.perf_counter() - t)
    return rows / sorted(times)[len(times) // 2]


def _hours(forward_equivalents: float, rate: float) -> str:
    hours = forward_equivalents / rate / 3600
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.1f} h"


def describe(table: List[Line], n_images: int, rate: float, where: str) -> str:
    """The cost table as text (one row per method, then the totals)."""
    rows = [f"{'method':24s} {'attribution/img':>15s} {'metrics/img':>12s} {'training':>10s} {'total':>10s}"]
    for line in table:
        rows.append(
            f"{line.method:24s} {line.attribution:15.3g} {line.metrics:12.3g} {line.training:10.3g} "
            f"{line.total(n_images):10.3g}"
        )
    total = sum(line.total(n_images) for line in table)
    rows.append(
        f"total for {n_images} images: {total:.3g} forward-equivalents (a backward pass counts as two "
        f"forwards, a token-dropped forward by the tokens it keeps) — about {_hours(total, rate)} here "
        f"({where}: {rate:.0f} inputs/s measured), {_hours(total, REFERENCE_RATE)} at "
        f"{REFERENCE_RATE:.0f} inputs/s (one H100, ViT-S/16 at 224 px)"
    )
    return "\n".join(rows)


def total(table: List[Line], n_images: int) -> float:
    return sum(line.total(n_images) for line in table)
