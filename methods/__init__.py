"""Attribution methods (``xaibench.methods``): one module per method family, one registry."""
from .base import AttributionMethod, FitContext, Requires, create_method, list_methods, register_method
from . import gradients, reference  # noqa: F401  (register the built-in methods)
from . import attention, cam, lrp, maskopt, rise, suppression  # noqa: F401  (post-hoc methods)
from . import learned  # noqa: F401  (learned explainers: vit_shapley, salvage, comet)

__all__ = ["AttributionMethod", "FitContext", "Requires", "create_method", "list_methods", "register_method"]
