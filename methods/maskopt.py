"""Mask optimisation with distractors (Gupta, Saunshi, Yu, Lyu & Arora 2022, "New Definitions
and Evaluations for Saliency Methods: Staying Intrinsic, Complete and Sound", appendix §A).

M = sigmoid(W) with W at low resolution (⌈H/s⌉ × ⌈W/s⌉, upsampling factor s = 4), M^{×s} its
bilinear upsampling to the input size. Each step pastes the image onto ``n_distractors`` = 10
training images x̄ (normalised, from the run's distractor pool), x̃ = M^{×s} ⊙ x + (1 − M^{×s}) ⊙ x̄,
and minimises

    −log( mean_x̄ p_a(x̃) ) + λ_TV · TV(M^{×s}) + λ₁ · ‖M^{×s}‖₁

with Adam (lr 0.05) for 2000 steps; a = the explained class. The map is M^{×s} (pixel level).

Choices where the appendix is silent: W starts at 0 (M = 0.5 everywhere); TV is the
anisotropic sum Σ|M_{i+1,j} − M_{i,j}| + |M_{i,j+1} − M_{i,j}| and ‖·‖₁ the sum over pixels (the
scale at which λ₁ = 2e-5 is quoted for 224×224 masks); the log is taken of the mean probability
over the step's distractors (the appendix's Eq. 6 writes the expectation outside the log).

Each image is optimised on its own: its own W and Adam state, its distractors drawn step by step
from its generator ``seeding.generator(seed, id, "maskopt")``, and its forward+backward passes
hold only its own D distractor blends. Every tensor an image's optimisation touches therefore has
the same shape whatever the batch, and a batch gives bit-for-bit the maps of its images explained
one at a time. (Optimising a batch jointly, with B·D rows per forward, lets the kernels round
differently for different batch sizes, and Adam's normalised steps amplify such 1e-7 differences:
0.6 % of the map range after the quick preset's 20 steps on the default tiny ViT.) The price is B
forwards of D rows instead of one of B·D rows per step: 1.25–1.34× the time on a 2-core CPU at the
quick preset (``perf/maskopt_batching.py``); on a GPU, where small passes underuse the device, it
is larger.

Memory: when one image's D blends do not fit ``adapter.budget.rows(backward=True)`` (a ViT-S at
224 px under the 1 GiB CPU default holds 4), they go through in passes of at most that many,
with the exact gradient of the objective: ∇(−log Σ_d p_d/D) = −Σ_passes ∇(Σ_{d∈pass} p_d) / Σ_d p_d.
Splitting changes the gradient only at float round-off, but Adam's normalised steps can amplify
round-off in near-zero gradient entries, so maps computed with split blends are not bit-for-bit
those computed with one pass per step (measured 0.4 % of the map range after 3 steps on an
untrained tiny ViT). The attribution's ``meta`` records the blends per pass.

Paper: 2000 steps × 10 distractors = 20 000 forward+backward passes per image, far beyond the
embedded default's 2-core CPU budget; ``quick`` uses 20 steps × 3 distractors (60 passes), so
its masks are early, coarse iterates of the optimisation (the result records the steps used).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xaibench.attribution import Attribution
from xaibench.cost import FORWARD_BACKWARD
from xaibench.errors import UserError
from xaibench.params import check
from xaibench.removal import Removal
from xaibench.seeding import generator

from .base import AttributionMethod, Requires, register_method


def total_variation(m: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per image of (B, H, W) masks: sum of absolute neighbour differences."""
    return (m[:, 1:] - m[:, :-1]).abs().flatten(1).sum(1) + (m[:, :, 1:] - m[:, :, :-1]).abs().flatten(1).sum(
        1
    )


def upsample(mask_low: torch.Tensor, size) -> torch.Tensor:
    """(B, h, w) low-resolution masks → (B, H, W), bilinear."""
    return F.interpolate(mask_low[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


@register_method("mask_optimisation")
class MaskOptimisation(AttributionMethod):
    """Low-res sigmoid mask optimised against distractor backgrounds, TV + L1 (see the module docs)."""

    label = "Mask Opt."
    requires = Requires(gradients=True, distractors=True)

    @dataclass(frozen=True)
    class Params:
        steps: int = 2000
        lr: float = 0.05
        n_distractors: int = 10
        upsample: int = 4
        lambda_tv: float = 0.01
        lambda_l1: float = 2e-5

        def __post_init__(self):
            check(
                min(self.steps, self.n_distractors, self.upsample) >= 1,
                "needs steps, n_distractors, upsample ≥ 1",
            )

    presets = {"quick": {"steps": 20, "n_distractors": 3}}

    def cost(self, shape):
        return self.params.steps * self.params.n_distractors * FORWARD_BACKWARD

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.distractors = None
        self.history = None  # per-step objective summed over the last batch's images (tests / reports)
        self.low_res = None  # the last batch's optimised low-resolution masks sigmoid(W)

    def fit(self, adapter, train_data, ctx) -> None:
        if ctx.distractors is None or len(ctx.distractors) == 0:
            raise UserError("mask_optimisation needs distractor training images (FitContext.distractors)")
        self.distractors = ctx.distractors

    def regulariser(self, M: torch.Tensor) -> torch.Tensor:
        """λ_TV·TV(M) + λ₁·‖M‖₁ per image of (B, H, W) masks."""
        return self.params.lambda_tv * total_variation(M) + self.params.lambda_l1 * M.flatten(1).sum(1)

    def _blend_probs(self, adapter, x1, target1, M1, bg) -> torch.Tensor:
        """p_a of one image ``x1`` (1, 3, H, W) pasted with mask ``M1`` (1, H, W) on ``bg`` (n, 3, H, W)."""
        n = len(bg)
        mixed = Removal.compose(x1.expand(n, -1, -1, -1), M1.expand(n, -1, -1), bg)
        return adapter.logits(mixed).float().softmax(-1)[:, int(target1)]

    def objective(self, adapter, x, target, mask_low, picks):
        """Per-image loss (B,) of low-res masks ``mask_low`` (B, h, w) in [0, 1] with distractors
        ``picks`` (B, D) indices into the pool, and the upsampled masks (B, H, W). No gradients."""
        pool = self.distractors.to(x.device)
        M = upsample(mask_low, x.shape[2:])
        with torch.no_grad():
            p = torch.stack(
                [
                    torch.cat(
                        [
                            self._blend_probs(
                                adapter, x[b : b + 1], target[b], M[b : b + 1], pool[picks[b, part]]
                            )
                            for part in adapter.budget.slices(picks.shape[1])
                        ]
                    ).mean()
                    for b in range(len(x))
                ]
            )
            return -torch.log(p.clamp_min(1e-12)) + self.regulariser(M), M

    def _loss_and_grad(self, adapter, x1, target1, w, bg):
        """The objective of one image and its gradient in W (1, h, w), its D blends ``bg`` split
        into passes of at most the budget's backward rows."""
        total = torch.zeros((), device=x1.device)
        grad_p = torch.zeros_like(w)
        for part in adapter.budget.slices(len(bg), backward=True):
            p = self._blend_probs(adapter, x1, target1, upsample(w.sigmoid(), x1.shape[2:]), bg[part]).sum()
            (g,) = torch.autograd.grad(p, w)  # no gradients of the model's weights
            grad_p += g
            total += p.detach()
        reg = self.regulariser(upsample(w.sigmoid(), x1.shape[2:])).sum()
        (grad,) = torch.autograd.grad(reg, w)
        mean_p = total / len(bg)
        if mean_p > 1e-12:  # below, −log is clamped and has no gradient
            grad = grad - grad_p / total
        return -torch.log(mean_p.clamp_min(1e-12)) + reg.detach(), grad

    def attribute(self, adapter, x, target, *, ids, masks=None):
        if self.distractors is None:
            raise UserError(
                "mask_optimisation has no distractor images: call fit() first (the harness does, "
                "with the run's distractor pool)"
            )
        steps, D, s = self.params.steps, self.params.n_distractors, self.params.upsample
        B, _, H, W = x.shape
        pool = self.distractors.to(x.device)
        x = x.detach()
        history = [0.0] * steps
        low = []
        per_pass = min(D, adapter.budget.rows(backward=True))
        with torch.enable_grad():
            for b, image_id in enumerate(ids):
                g = generator(self.seed, image_id, "maskopt", device=x.device)
                w = torch.zeros(1, math.ceil(H / s), math.ceil(W / s), device=x.device, requires_grad=True)
                opt = torch.optim.Adam([w], lr=self.params.lr)
                for step in range(steps):
                    picks = torch.randint(0, len(pool), (D,), generator=g, device=x.device)
                    loss, w.grad = self._loss_and_grad(adapter, x[b : b + 1], target[b], w, pool[picks])
                    opt.step()
                    history[step] += float(loss)
                low.append(w.detach().sigmoid())
        self.history = history
        self.low_res = torch.cat(low)
        return Attribution(
            upsample(self.low_res, (H, W)), "pixel", {"steps": steps, "blends_per_pass": per_pass}
        )
