"""Gradient methods through captum: Saliency, SmoothGrad, Integrated Gradients.

All three explain the target logit in the model's normalised input space and return
pixel-level maps. Every forward+backward pass holds at most ``adapter.budget.rows(backward=True)``
inputs (images for Saliency, noisy copies for SmoothGrad, images × integration steps for IG), so
the memory of a method does not grow with the batch size or the number of samples; the maps do
not depend on the budget (up to float summation order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Tuple

import torch

from xaibench.attribution import Attribution
from xaibench.cost import FORWARD_BACKWARD
from xaibench.params import check
from xaibench.seeding import generator

from .base import AttributionMethod, Requires, register_method


def sample_passes(adapter, n_images: int, n_samples: int, backward: bool = True) -> Iterator[Tuple]:
    """The ``n_images × n_samples`` (image, sample) inputs of a sampling method, image-major, in
    consecutive passes of at most the adapter's budget rows: yields (image index, sample index)
    LongTensors. A pass may span images; within an image the samples come in order, so a method
    that draws each sample from its image's generator when the sample's pass comes draws the same
    numbers whatever the budget or the batch."""
    for part in adapter.budget.slices(n_images * n_samples, backward=backward):
        flat = torch.arange(part.start, part.stop)
        yield flat // n_samples, flat % n_samples


@register_method("saliency")
class Saliency(AttributionMethod):
    """Simonyan et al. 2014: |∂ logit_c / ∂x|, maximum over colour channels (captum ``Saliency``)."""

    label = "Sal. Maps"
    requires = Requires(gradients=True)

    def attribute(self, adapter, x, target, *, ids, masks=None):
        from captum.attr import Saliency as CaptumSaliency

        saliency = CaptumSaliency(adapter.forward_fn())
        parts = [
            saliency.attribute(x[s].detach().requires_grad_(), target=target[s], abs=True).amax(1)
            for s in adapter.budget.slices(len(x), backward=True)
        ]
        adapter.zero_grad()
        return Attribution(torch.cat(parts), "pixel")


@register_method("smoothgrad")
class SmoothGrad(AttributionMethod):
    """Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise": the saliency map
    (|∂ logit_c/∂x|, max over channels) averaged over ``n_samples`` noisy copies x + ε,
    ε ~ N(0, σ²), σ = ``noise_level`` × (max x − min x) of each image (the paper's
    σ/(x_max − x_min) = 15 %).

    Why not captum's ``NoiseTunnel``: its ``stdevs`` is one absolute number for the whole batch and
    its noise comes from torch's global generator, so maps would depend on batch composition.
    Here the noise of copy j of an image is the j-th draw (one (3, H, W) tensor per copy) from the
    image's generator ``xaibench.seeding.generator(seed, id, "smoothgrad")``, and the copies go
    through captum's ``Saliency`` in passes of at most ``adapter.budget.rows(backward=True)``
    inputs: the noise, hence the map, does not depend on the batch or the budget. Paper default
    50 samples; ``quick`` (embedded default run, 2-core CPU budget): 8.
    """

    label = "SmoothGrad"
    requires = Requires(gradients=True)

    @dataclass(frozen=True)
    class Params:
        n_samples: int = 50
        noise_level: float = 0.15  # σ / (max x − min x)

        def __post_init__(self):
            check(self.n_samples >= 1 and self.noise_level >= 0, "needs n_samples ≥ 1 and noise_level ≥ 0")

    presets = {"quick": {"n_samples": 8}}

    def cost(self, shape):
        return self.params.n_samples * FORWARD_BACKWARD

    def attribute(self, adapter, x, target, *, ids, masks=None):
        from captum.attr import Saliency as CaptumSaliency

        n = self.params.n_samples
        B, shape = x.shape[0], x.shape[1:]
        sigma = self.params.noise_level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
        gens = [generator(self.seed, i, "smoothgrad", device=x.device) for i in ids]
        saliency = CaptumSaliency(adapter.forward_fn())
        total = torch.zeros(B, *x.shape[2:], device=x.device)
        for image, _ in sample_passes(adapter, B, n):
            noise = torch.stack(
                [torch.randn(shape, generator=gens[b], device=x.device) for b in image.tolist()]
            )
            image = image.to(x.device)
            noisy = (x[image] + noise * sigma[image].view(-1, 1, 1, 1)).detach().requires_grad_()
            grads = saliency.attribute(noisy, target=target[image], abs=True)
            total.index_add_(0, image, grads.amax(1))
        adapter.zero_grad()
        return Attribution(total / n, "pixel")


@register_method("integrated_gradients")
class IntegratedGradients(AttributionMethod):
    """Sundararajan et al. 2017, "Axiomatic attribution for deep networks":
    (x − x') ⊙ ∫₀¹ ∂ logit_c(x' + α(x − x'))/∂x dα with baseline x' = 0 in normalised space (the
    dataset mean), ``n_steps`` = 50 Gauss–Legendre points (captum's default rule); the map is the
    sum over colour channels (signed), so that it sums to logit_c(x) − logit_c(0) (completeness).

    Memory: captum's ``internal_batch_size`` counts the inputs of one pass, images × steps (it runs
    ⌊internal_batch_size / images⌋ steps of all the images it is given per pass, and never fewer
    than one step of each). With R = ``adapter.budget.rows(backward=True)``, the images go to
    captum in groups of at most R with ``internal_batch_size = R``, so every pass holds at most R
    inputs. ``quick`` (embedded default run, 2-core CPU budget): 16 steps.
    """

    label = "Integrated Gradients"
    requires = Requires(gradients=True)

    @dataclass(frozen=True)
    class Params:
        n_steps: int = 50

        def __post_init__(self):
            check(self.n_steps >= 1, "needs n_steps ≥ 1")

    presets = {"quick": {"n_steps": 16}}

    def cost(self, shape):
        return self.params.n_steps * FORWARD_BACKWARD

    def attribute(self, adapter, x, target, *, ids, masks=None):
        from captum.attr import IntegratedGradients as CaptumIG

        ig = CaptumIG(adapter.forward_fn())
        rows = adapter.budget.rows(backward=True)
        parts = [
            ig.attribute(
                x[s],
                baselines=torch.zeros_like(x[s]),
                target=target[s],
                n_steps=self.params.n_steps,
                internal_batch_size=rows,
            ).sum(1)
            for s in adapter.budget.slices(len(x), backward=True)
        ]
        adapter.zero_grad()
        return Attribution(torch.cat(parts), "pixel")
