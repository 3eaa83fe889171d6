"""Gradient methods through captum."""
from __future__ import annotations

from xaibench.attribution import Attribution

from .base import AttributionMethod, Requires, register_method


@register_method("saliency")
class Saliency(AttributionMethod):
    """Simonyan et al. 2014: |∂ logit_c / ∂x|, maximum over colour channels (captum ``Saliency``)."""

    label = "Sal. Maps"
    requires = Requires(gradients=True)

    def attribute(self, adapter, x, target, *, ids, masks=None):
        from captum.attr import Saliency as CaptumSaliency

        grads = CaptumSaliency(adapter.forward_fn()).attribute(x, target=target, abs=True)
        adapter.zero_grad()
        return Attribution(grads.amax(1), "pixel")
