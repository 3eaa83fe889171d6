"""Attribution methods (``xaibench.methods``): one module per method family, one registry."""

from . import (  # noqa: F401  (register the built-in methods)  # noqa: F401  (post-hoc methods)
    attention,
    cam,
    gradients,
    learned,  # noqa: F401  (learned explainers: vit_shapley, salvage, comet)
    lrp,
    maskopt,
    reference,
    rise,
    suppression,
)
from .base import AttributionMethod, FitContext, Requires, create_method, list_methods, register_method

__all__ = ["AttributionMethod", "FitContext", "Requires", "create_method", "list_methods", "register_method"]
