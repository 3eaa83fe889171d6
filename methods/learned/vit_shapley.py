"""ViT-Shapley (Covert, Kim and Lee 2023, "Learning to estimate Shapley values with vision
transformers"; as summarised in the salvage paper's §3.1 and §5.1).

Explainer φ(x) ∈ R^{P×C} on the surrogate backbone (the reference architecture: one extra block,
LayerNorm, a 3-layer MLP of width 4 × the embedding width, ``tanh`` on the outputs); additive
efficient normalisation φ_i ← φ_i + ((v(N) − v(∅)) − Σ_j φ_j) / P, so that Σ_i φ_i = v(N) − v(∅)
exactly; loss P · MSE(v(∅) + Σ_{i∈S} φ_i, v(S)) over paired masks (S, N∖S) whose sizes follow the
Shapley kernel (k with weight ∝ 1/(k(P−k)), k = 1..P−1). v is the surrogate's probability vector,
so φ explains the probability game of every class. Training as in the reference: AdamW, linear
warm-up and cosine decay, gradient norm clipped to 1; validation loss = the same loss on held-out
images with fixed kernel-distributed masks (the reference also fixes each validation image's
masks). Our sampler draws subsets of an exact size (the reference draws Bernoulli masks whose
expected size follows the kernel): the distribution of sizes is the kernel's either way.

Presets: ``paper`` = salvage-paper §5.1 (batch 64, AdamW lr 1e-4, wd 1e-5, 32 masks per image);
``quick`` = the embedded default's CPU budget (backbone frozen, 8 masks per image, batch 16).
Both stop by the shared rule of :mod:`.common`.
"""

from __future__ import annotations

import torch

from ..base import register_method
from .amortized import AmortizedExplainer
from .sampling import shapley_kernel_masks


def efficient_normalize(phi: torch.Tensor, v_full: torch.Tensor, v_empty: torch.Tensor) -> torch.Tensor:
    """φ (B, P, C) shifted per class so that Σ_i φ_i = v(N) − v(∅)."""
    gap = (v_full - v_empty) - phi.sum(1)
    return phi + gap[:, None, :] / phi.shape[1]


@register_method("vit_shapley")
class ViTShapley(AmortizedExplainer):
    """ViT-Shapley: a learned explainer of the probability game, trained by weighted least squares."""

    label = "ViT-Shapley"
    recipe_version = 2  # 2: reference head (3-layer MLP ×4, tanh), schedule, clipping, shared stopping
    activation = "tanh"
    presets = {"quick": {"batch_size": 16, "masks_per_image": 8, "lr": 1e-3, "freeze_backbone": True}}

    def out_dim(self, num_classes: int) -> int:
        return num_classes

    def sample_masks(self, out, v_full, labels, num_masks, g):
        return shapley_kernel_masks(out.shape[0], num_masks, out.shape[1], g)

    def validation_masks(self, n, num_masks, num_patches, g):
        return shapley_kernel_masks(n, num_masks, num_patches, g)

    def values(self, out, v_full, v_empty):
        return efficient_normalize(out, v_full, v_empty)

    def loss(self, out, keep, v_masked, v_full, v_empty):
        phi = efficient_normalize(out, v_full, v_empty)
        pred = v_empty[:, None, :] + torch.einsum("bmp,bpc->bmc", keep.float(), phi)
        return phi.shape[1] * ((pred - v_masked) ** 2).mean()
