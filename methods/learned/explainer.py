"""The explainer network of ViT-Shapley and Salvage (Covert et al. 2023; salvage-paper §5.1).

A copy of the surrogate's ViT backbone (patch embedding, blocks, final norm), one extra
transformer block, a LayerNorm and an MLP applied to every patch token: (B, P, out) per image,
with ``out`` = C (ViT-Shapley) or 2C (Salvage's φ⁺ and φ⁻). Prefix tokens (CLS, registers) take
part in attention but produce no output.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class PatchExplainer(nn.Module):
    def __init__(
        self,
        vit: nn.Module,
        num_prefix_tokens: int,
        out_dim: int,
        hidden: int = 0,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.backbone = copy.deepcopy(vit)
        self.backbone.requires_grad_(not freeze_backbone)
        self.freeze_backbone = freeze_backbone
        self.num_prefix_tokens = num_prefix_tokens
        dim = self.backbone.embed_dim
        heads = self.backbone.blocks[-1].attn.num_heads
        self.block = Block(dim, heads, mlp_ratio=4.0, qkv_bias=True)
        self.norm = nn.LayerNorm(dim)
        hidden = hidden or dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) normalised → (B, P, out)."""
        if self.freeze_backbone:
            self.backbone.eval()
            with torch.no_grad():
                tokens = self.backbone.forward_features(x)
        else:
            tokens = self.backbone.forward_features(x)
        tokens = self.norm(self.block(tokens))
        return self.mlp(tokens[:, self.num_prefix_tokens :])
