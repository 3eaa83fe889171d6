"""The explainer network of ViT-Shapley and Salvage.

Architecture of the ViT-Shapley reference explainer (Covert, Kim and Lee 2023, "Learning to
estimate Shapley values with vision transformers"), which the salvage paper adopts for its
explainers (§5.1): a copy of the surrogate's ViT backbone (patch embedding, blocks, final norm),
one extra transformer block configured like the backbone's last block (its first LayerNorm left
out, since the backbone's output is already normalised), a LayerNorm, and an MLP of ``mlp_layers``
linear layers of width ``mlp_ratio`` × the embedding width (GELU between them) applied to every
patch token; optionally ``tanh`` on the outputs (ViT-Shapley: values of a probability game lie in
[−1, 1]). Output (B, P, out) per image with ``out`` = C (ViT-Shapley) or 2C (Salvage's φ⁺ and φ⁻).
Prefix tokens (CLS, registers) take part in attention but produce no output.
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
        mlp_layers: int = 3,
        mlp_ratio: float = 4.0,
        freeze_backbone: bool = False,
        activation: str = "none",
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        if mlp_layers < 1:
            raise ValueError(f"mlp_layers must be ≥ 1, got {mlp_layers}")
        if activation not in ("none", "tanh"):
            raise ValueError(f"activation must be 'none' or 'tanh', got {activation!r}")
        self.backbone = copy.deepcopy(vit)
        self.backbone.requires_grad_(not freeze_backbone)
        self.freeze_backbone = freeze_backbone
        self.num_prefix_tokens = num_prefix_tokens
        self.activation = activation
        dim = self.backbone.embed_dim
        last = self.backbone.blocks[-1]
        self.block = Block(
            dim,
            last.attn.num_heads,
            mlp_ratio=last.mlp.fc1.out_features / last.mlp.fc1.in_features,
            qkv_bias=last.attn.qkv.bias is not None,
        )
        self.block.norm1 = nn.Identity()
        self.norm = nn.LayerNorm(dim)
        hidden = int(round(mlp_ratio * dim))
        layers: list[nn.Module] = []
        width = dim
        for _ in range(mlp_layers - 1):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) normalised → (B, P, out)."""
        if self.freeze_backbone:
            self.backbone.eval()
            with torch.no_grad():
                tokens = self.backbone.forward_features(x)
        else:
            tokens = self.backbone.forward_features(x)
        tokens = self.norm(self.block(tokens))
        out = self.mlp(tokens[:, self.num_prefix_tokens :])
        return out.tanh() if self.activation == "tanh" else out
