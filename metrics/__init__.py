"""Metrics (``xaibench.metrics``): one module per metric family, one registry."""

from . import completeness, fidelity, information, insertion, iou, localisation, pxap, relative, sanity  # noqa: F401,E501  (register the built-in metrics)
from .base import (
    DOWN,
    UP,
    Batch,
    EvalContext,
    Metric,
    MetricResult,
    create_metric,
    list_metrics,
    metric_directions,
    metric_label,
    register_metric,
)

__all__ = [
    "Batch",
    "EvalContext",
    "Metric",
    "MetricResult",
    "create_metric",
    "list_metrics",
    "metric_directions",
    "metric_label",
    "register_metric",
    "UP",
    "DOWN",
]
