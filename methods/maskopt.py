"""Mask optimisation with distractors (completeness-soundness-appendix §A).

M = sigmoid(W) with W at low resolution (⌈H/s⌉ × ⌈W/s⌉, upsampling factor s = 4), M^{×s} its
bilinear upsampling to the input size. Each step pastes the image onto ``n_distractors`` = 10
training images x̄ (normalised, from the run's distractor pool), x̃ = M^{×s} ⊙ x + (1 − M^{×s}) ⊙ x̄,
and minimises

    −log( mean_x̄ p_a(x̃) ) + λ_TV · TV(M^{×s}) + λ₁ · ‖M^{×s}‖₁

with Adam (lr 0.05) for 2000 steps; a = the explained class. The map is M^{×s} (pixel level).

Choices where the appendix is silent (documented, SPEC §5): W starts at 0 (M = 0.5 everywhere);
TV is the anisotropic sum Σ|M_{i+1,j} − M_{i,j}| + |M_{i,j+1} − M_{i,j}| and ‖·‖₁ the sum over pixels
(the scale at which λ₁ = 2e-5 is quoted for 224×224 masks); the log is taken of the mean
probability over the distractors, as SPEC §5 states (the appendix's Eq. 5 writes the
expectation outside the log). All images of a batch are optimised together: their losses are
summed, so each image's mask receives exactly its own gradient and Adam's per-element updates
make batched and one-at-a-time results equal. The distractors of each step are drawn per image
from ``seeding.generator(seed, id, "maskopt")``.

Paper: 2000 steps × 10 distractors = 20 000 forward+backward passes per image, far beyond the
embedded default's 2-core CPU budget; ``quick`` uses 20 steps × 3 distractors (60 passes), so
its masks are early, coarse iterates of the optimisation (the result records the steps used).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xaibench.attribution import Attribution
from xaibench.errors import UserError
from xaibench.removal import Removal
from xaibench.seeding import generator

from .base import AttributionMethod, Requires, register_method


def total_variation(m: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per image of (B, H, W) masks: sum of absolute neighbour differences."""
    return (m[:, 1:] - m[:, :-1]).abs().flatten(1).sum(1) + (m[:, :, 1:] - m[:, :, :-1]).abs().flatten(1).sum(
        1
    )


@register_method("mask_optimisation")
class MaskOptimisation(AttributionMethod):
    """Low-res sigmoid mask optimised against distractor backgrounds, TV + L1 (see the module docs)."""

    label = "Mask Opt."
    requires = Requires(gradients=True, distractors=True)
    defaults = {
        "steps": 2000,
        "lr": 0.05,
        "n_distractors": 10,
        "upsample": 4,
        "lambda_tv": 0.01,
        "lambda_l1": 2e-5,
    }
    presets = {"quick": {"steps": 20, "n_distractors": 3}}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.distractors = None
        self.history = None  # per-step summed objective of the last batch (for tests / reports)
        self.low_res = None  # the last batch's optimised low-resolution masks sigmoid(W)

    def fit(self, adapter, train_data, ctx) -> None:
        if ctx.distractors is None or len(ctx.distractors) == 0:
            raise UserError("mask_optimisation needs distractor training images (FitContext.distractors)")
        self.distractors = ctx.distractors

    def objective(self, adapter, x, target, mask_low, picks):
        """Per-image loss (B,) of low-res masks ``mask_low`` (B, h, w) in [0, 1] with distractors
        ``picks`` (B, D) indices into the pool."""
        B, D = picks.shape
        M = F.interpolate(mask_low[:, None], size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)[
            :, 0
        ]
        bg = self.distractors.to(x.device)[picks.flatten()]
        mixed = Removal.compose(x.repeat_interleave(D, 0), M.repeat_interleave(D, 0), bg)
        probs = adapter.logits(mixed).float().softmax(-1)
        p = probs.gather(1, target.repeat_interleave(D)[:, None]).view(B, D).mean(1)
        loss = (
            -torch.log(p.clamp_min(1e-12))
            + self.params["lambda_tv"] * total_variation(M)
            + self.params["lambda_l1"] * M.flatten(1).sum(1)
        )
        return loss, M

    def attribute(self, adapter, x, target, *, ids, masks=None):
        if self.distractors is None:
            raise UserError(
                "mask_optimisation has no distractor images: call fit() first (the harness does, "
                "with the run's distractor pool)"
            )
        steps, D, s = (
            int(self.params["steps"]),
            int(self.params["n_distractors"]),
            int(self.params["upsample"]),
        )
        if steps < 1 or D < 1 or s < 1:
            raise UserError(
                f"mask_optimisation: need steps, n_distractors, upsample ≥ 1; got {steps}, {D}, {s}"
            )
        B, _, H, W = x.shape
        pool = len(self.distractors)
        gens = [generator(self.seed, i, "maskopt", device=x.device) for i in ids]
        w = torch.zeros(B, math.ceil(H / s), math.ceil(W / s), device=x.device, requires_grad=True)
        opt = torch.optim.Adam([w], lr=float(self.params["lr"]))
        x = x.detach()
        self.history = []
        with torch.enable_grad():
            for _ in range(steps):
                picks = torch.stack(
                    [torch.randint(0, pool, (D,), generator=g, device=x.device) for g in gens]
                )
                loss, _ = self.objective(adapter, x, target, w.sigmoid(), picks)
                (w.grad,) = torch.autograd.grad(loss.sum(), w)  # no gradients of the model's weights
                opt.step()
                self.history.append(float(loss.detach().sum()))
        self.low_res = w.detach().sigmoid()
        M = F.interpolate(self.low_res[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        return Attribution(M, "pixel", {"steps": steps})
