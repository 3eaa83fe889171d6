"""Feature-suppression gradient integration ("Sampling Matters in Explanations: Towards Robust
Attribution Analysis with Feature Suppression", anonymous, under double-blind review; Appendix B,
Algorithm 1).

For k = 1..K: draw a coalition size num ~ Poisson(λ = N·prob) truncated to [0, N] (N = number
of pixel locations), set ``num`` random pixel locations (all channels) of the input to the
constant C = 1e-8, and accumulate |∇_x̂ CE(model(x̂), target)|. Then multiply by x/N, pool the
colour channels (sum of absolute values) and min-max normalise each map to [0, 1].

Choices where the algorithm is silent: "input" is the model's input, i.e. the normalised image
(so C ≈ 0 is the dataset mean); the truncated Poisson is sampled exactly by redrawing values
above N. Random draws: each image has its own generator ``seeding.generator(seed, id,
"suppression")``, from which it draws its K sizes first and then, sample by sample, one uniform
vector of N values whose ``num`` smallest mark the suppressed locations
(:func:`suppression_masks` is that stream). Memory: the K suppressed copies of every image go
through the model in passes of at most ``adapter.budget.rows(backward=True)`` inputs (the loss is
summed, so each copy gets its own gradient); the draws, hence the maps, do not depend on the batch
or the budget (the accumulation order does, at float round-off). Paper defaults K = 200,
prob = 0.6; ``quick`` (embedded default run, 2-core CPU budget): K = 16 forward+backward passes
per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xaibench.attribution import Attribution
from xaibench.cost import FORWARD_BACKWARD
from xaibench.params import check
from xaibench.seeding import generator

from .base import AttributionMethod, Requires, register_method
from .gradients import sample_passes


def truncated_poisson(lam: float, upper: int, n: int, g: torch.Generator, device) -> torch.Tensor:
    """n draws of Poisson(lam) conditioned on ≤ upper (redraws the rare values above)."""
    rate = torch.full((n,), float(lam), device=device)
    k = torch.poisson(rate, generator=g)
    while bool((k > upper).any()):
        bad = k > upper
        k[bad] = torch.poisson(rate[bad], generator=g)
    return k.long()


def suppressed_locations(num: int, num_pixels: int, g: torch.Generator, device) -> torch.Tensor:
    """(num_pixels,) bool: ``num`` locations chosen uniformly without replacement (the ``num``
    smallest of one uniform draw per location)."""
    off = torch.zeros(num_pixels, dtype=torch.bool, device=device)
    off[torch.rand(num_pixels, generator=g, device=device).argsort()[:num]] = True
    return off


def suppression_masks(n: int, num_pixels: int, prob: float, g: torch.Generator, device) -> torch.Tensor:
    """(n, num_pixels) bool, True where a location is suppressed: the n sizes (truncated Poisson)
    first, then the locations of each sample in turn — the stream the method draws per image."""
    num = truncated_poisson(num_pixels * prob, num_pixels, n, g, device).tolist()
    return torch.stack([suppressed_locations(k, num_pixels, g, device) for k in num])


@register_method("feature_suppression")
class FeatureSuppression(AttributionMethod):
    """Feature-suppression gradient integration, Algorithm 1 of its paper (see the module docs)."""

    label = "Feature Suppression"
    requires = Requires(gradients=True)

    @dataclass(frozen=True)
    class Params:
        n_samples: int = 200
        prob: float = 0.6
        constant: float = 1e-8

        def __post_init__(self):
            check(self.n_samples >= 1 and 0 <= self.prob <= 1, "needs n_samples ≥ 1 and 0 ≤ prob ≤ 1")

    presets = {"quick": {"n_samples": 16}}

    def cost(self, shape):
        return self.params.n_samples * FORWARD_BACKWARD

    def attribute(self, adapter, x, target, *, ids, masks=None):
        K, prob, C = self.params.n_samples, self.params.prob, self.params.constant
        B, _, H, W = x.shape
        N = H * W
        gens = [generator(self.seed, i, "suppression", device=x.device) for i in ids]
        sizes = [truncated_poisson(N * prob, N, K, g, x.device).tolist() for g in gens]
        total = torch.zeros_like(x)
        for image, sample in sample_passes(adapter, B, K):
            off = torch.stack(
                [
                    suppressed_locations(sizes[b][k], N, gens[b], x.device)
                    for b, k in zip(image.tolist(), sample.tolist())
                ]
            ).view(-1, 1, H, W)
            image = image.to(x.device)
            x_hat = torch.where(off, torch.full_like(off, C, dtype=x.dtype), x[image]).requires_grad_(True)
            loss = F.cross_entropy(adapter.logits(x_hat), target[image], reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_hat)
            total.index_add_(0, image, grad.abs())
        adapter.zero_grad()
        expl = (x / N * total).abs().sum(1)
        lo = expl.flatten(1).amin(1).view(B, 1, 1)
        hi = expl.flatten(1).amax(1).view(B, 1, 1)
        return Attribution((expl - lo) / (hi - lo).clamp_min(1e-12), "pixel")
