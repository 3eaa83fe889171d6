"""Feature-suppression gradient integration (feature-suppression-paper, Appendix B, Algorithm 1).

For k = 1..K: draw a coalition size num ~ Poisson(λ = N·prob) truncated to [0, N] (N = number
of pixel locations), set ``num`` random pixel locations (all channels) of the input to the
constant C = 1e-8, and accumulate |∇_x̂ CE(model(x̂), target)|. Then multiply by x/N, pool the
colour channels (sum of absolute values) and min-max normalise each map to [0, 1].

Choices where the algorithm is silent: "input" is the model's input, i.e. the normalised image
(so C ≈ 0 is the dataset mean); the truncated Poisson is sampled exactly by redrawing values
above N. Batched over images and samples: ``sample_batch`` suppressed copies of every image per
backward pass (the loss is summed, so each copy gets its own gradient). Each image draws from
``seeding.generator(seed, id, "suppression")``. Paper defaults K = 200, prob = 0.6; ``quick``
(embedded default run, 2-core CPU budget): K = 16 forward+backward passes per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xaibench.attribution import Attribution
from xaibench.errors import UserError
from xaibench.seeding import generator

from .base import AttributionMethod, Requires, register_method


def truncated_poisson(lam: float, upper: int, n: int, g: torch.Generator, device) -> torch.Tensor:
    """n draws of Poisson(lam) conditioned on ≤ upper (redraws the rare values above)."""
    rate = torch.full((n,), float(lam), device=device)
    k = torch.poisson(rate, generator=g)
    while bool((k > upper).any()):
        bad = k > upper
        k[bad] = torch.poisson(rate[bad], generator=g)
    return k.long()


def suppression_masks(n: int, num_pixels: int, prob: float, g: torch.Generator, device) -> torch.Tensor:
    """(n, num_pixels) bool: True where a pixel location is suppressed (num ~ truncated Poisson)."""
    num = truncated_poisson(num_pixels * prob, num_pixels, n, g, device)
    ranks = torch.rand(n, num_pixels, generator=g, device=device).argsort(1).argsort(1)
    return ranks < num[:, None]


@register_method("feature_suppression")
class FeatureSuppression(AttributionMethod):
    """Feature-suppression gradient integration, Algorithm 1 of its paper (see the module docs)."""

    label = "Feature Suppression"
    requires = Requires(gradients=True)
    defaults = {"n_samples": 200, "prob": 0.6, "constant": 1e-8, "sample_batch": 50}
    presets = {"quick": {"n_samples": 16, "sample_batch": 16}}

    def attribute(self, adapter, x, target, *, ids, masks=None):
        K, step, prob, C = (
            int(self.params["n_samples"]),
            int(self.params["sample_batch"]),
            float(self.params["prob"]),
            float(self.params["constant"]),
        )
        if K < 1 or step < 1 or not 0 <= prob <= 1:
            raise UserError(
                f"feature_suppression: need n_samples ≥ 1, sample_batch ≥ 1, 0 ≤ prob ≤ 1; got "
                f"n_samples={K}, sample_batch={step}, prob={prob}"
            )
        B, _, H, W = x.shape
        N = H * W
        gens = [generator(self.seed, i, "suppression", device=x.device) for i in ids]
        total = torch.zeros_like(x)
        for start in range(0, K, step):
            m = min(step, K - start)
            off = torch.stack([suppression_masks(m, N, prob, g, x.device) for g in gens]).view(B * m, 1, H, W)
            x_hat = torch.where(off, torch.full_like(off, C, dtype=x.dtype), x.repeat_interleave(m, 0))
            x_hat.requires_grad_(True)
            loss = F.cross_entropy(adapter.logits(x_hat), target.repeat_interleave(m), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_hat)
            total += grad.abs().view(B, m, *x.shape[1:]).sum(1)
        adapter.zero_grad()
        expl = (x / N * total).abs().sum(1)
        lo = expl.flatten(1).amin(1).view(B, 1, 1)
        hi = expl.flatten(1).amax(1).view(B, 1, 1)
        return Attribution((expl - lo) / (hi - lo).clamp_min(1e-12), "pixel")
