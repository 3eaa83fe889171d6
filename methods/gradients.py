"""Gradient methods through captum: Saliency, SmoothGrad, Integrated Gradients.

All three explain the target logit in the model's normalised input space and return
pixel-level maps. Batched: captum's ``internal_batch_size`` (IG) and our own chunking of the
noisy copies (SmoothGrad) bound the number of inputs per backward pass.
"""

from __future__ import annotations

import torch

from xaibench.attribution import Attribution
from xaibench.seeding import generator

from .base import AttributionMethod, Requires, register_method


@register_method("saliency")
class Saliency(AttributionMethod):
    """Simonyan et al. 2014: |∂ logit_c / ∂x|, maximum over colour channels (captum ``Saliency``)."""

    label = "Sal. Maps"
    requires = Requires(gradients=True)

    def attribute(self, adapter, x, target, *, ids, masks=None):
        from captum.attr import Saliency as CaptumSaliency

        grads = CaptumSaliency(adapter.forward_fn()).attribute(
            x.detach().requires_grad_(), target=target, abs=True
        )
        adapter.zero_grad()
        return Attribution(grads.amax(1), "pixel")


@register_method("smoothgrad")
class SmoothGrad(AttributionMethod):
    """Smilkov et al. 2017: the saliency map (|∂ logit_c/∂x|, max over channels) averaged over
    ``n_samples`` noisy copies x + ε, ε ~ N(0, σ²), σ = ``noise_level`` × (max x − min x) of each
    image (the paper's σ/(x_max − x_min) = 15 %).

    Why not captum's ``NoiseTunnel``: its ``stdevs`` is one absolute number for the whole batch and
    its noise comes from torch's global generator, so maps would depend on batch composition.
    Here the noise of each image is drawn from ``xaibench.seeding.generator(seed, id, "smoothgrad")``
    and the gradients of the noisy copies go through captum's ``Saliency`` in chunks of
    ``nt_samples_batch_size`` copies per image. Paper default 50 samples; ``quick`` (embedded default
    run, 2-core CPU budget): 8.
    """

    label = "SmoothGrad"
    requires = Requires(gradients=True)
    defaults = {"n_samples": 50, "noise_level": 0.15, "nt_samples_batch_size": 10}
    presets = {"quick": {"n_samples": 8, "nt_samples_batch_size": 8}}

    def attribute(self, adapter, x, target, *, ids, masks=None):
        from captum.attr import Saliency as CaptumSaliency

        n, step = int(self.params["n_samples"]), int(self.params["nt_samples_batch_size"])
        B = x.shape[0]
        sigma = self.params["noise_level"] * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
        gens = [generator(self.seed, i, "smoothgrad", device=x.device) for i in ids]
        saliency = CaptumSaliency(adapter.forward_fn())
        total = torch.zeros(B, *x.shape[2:], device=x.device)
        for s in range(0, n, step):
            m = min(step, n - s)
            noise = torch.stack([torch.randn(m, *x.shape[1:], generator=g, device=x.device) for g in gens])
            noisy = (x[:, None] + noise * sigma.view(B, 1, 1, 1, 1)).flatten(0, 1).detach().requires_grad_()
            grads = saliency.attribute(noisy, target=target.repeat_interleave(m), abs=True)
            total += grads.amax(1).view(B, m, *x.shape[2:]).sum(1)
        adapter.zero_grad()
        return Attribution(total / n, "pixel")


@register_method("integrated_gradients")
class IntegratedGradients(AttributionMethod):
    """Sundararajan et al. 2017: (x − x') ⊙ ∫₀¹ ∂ logit_c(x' + α(x − x'))/∂x dα with baseline x' = 0
    in normalised space (the dataset mean), ``n_steps`` = 50 Gauss–Legendre points (captum's
    default rule); the map is the sum over colour channels (signed), so that it sums to
    logit_c(x) − logit_c(0) (completeness). ``internal_batch_size`` bounds inputs per backward.
    ``quick`` (embedded default run, 2-core CPU budget): 16 steps.
    """

    label = "Integrated Gradients"
    requires = Requires(gradients=True)
    defaults = {"n_steps": 50, "internal_batch_size": 256}
    presets = {"quick": {"n_steps": 16}}

    def attribute(self, adapter, x, target, *, ids, masks=None):
        from captum.attr import IntegratedGradients as CaptumIG

        ig = CaptumIG(adapter.forward_fn())
        attr = ig.attribute(
            x,
            baselines=torch.zeros_like(x),
            target=target,
            n_steps=int(self.params["n_steps"]),
            internal_batch_size=int(self.params["internal_batch_size"]),
        )
        adapter.zero_grad()
        return Attribution(attr.sum(1), "pixel")
