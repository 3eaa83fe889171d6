"""Attention-based maps for timm ViTs: attention rollout, last-layer attention, GAE.

All read the attention probabilities (B, heads, T, T) recorded by ``adapter.record_attention``
(fused attention off) and are registers-aware: the explained row is the CLS token's, and all
prefix tokens (CLS and registers) are dropped from the columns, leaving the P patch tokens.
For a model without a CLS token (average pooling, no prefix) the explained row is the mean of
the patch-token rows. Maps are at patch level (B, gh, gw).
"""

from __future__ import annotations

from typing import List

import torch

from xaibench.attribution import Attribution
from xaibench.cost import Cost

from .base import AttributionMethod, Requires, register_method


def _explained_row(adapter, relevance: torch.Tensor) -> torch.Tensor:
    """(B, T, T) token relevance → (B, gh, gw): the CLS row (or mean patch row), patch columns."""
    pre = adapter.num_prefix_tokens
    has_cls = getattr(adapter.model, "cls_token", None) is not None
    row = relevance[:, 0] if has_cls else relevance[:, pre:].mean(1)
    return row[:, pre:].reshape(-1, *adapter.grid)


def attention_rollout(attentions: List[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema 2020: Π_l normalise_rows(mean_heads(A_l) + I), first block rightmost."""
    out = None
    for a in attentions:
        a = a.float().mean(1)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        out = a if out is None else a @ out
    return out


def gradient_attention_rollout(attentions: List[torch.Tensor], grads: List[torch.Tensor]) -> torch.Tensor:
    """Chefer et al. 2021b (GAE), self-attention rule: R ← R + mean_h[(∇A ⊙ A)⁺] · R from R = I."""
    T = attentions[0].shape[-1]
    R = torch.eye(T, device=attentions[0].device).expand(attentions[0].shape[0], T, T)
    for a, g in zip(attentions, grads):
        cam = (g.float() * a.float()).clamp_min(0).mean(1)
        R = R + cam @ R
    return R


class _ForwardAttention(AttributionMethod):
    """A map read from the attention probabilities of one forward pass (no target, no gradient):
    subclasses say how the per-block maps (B, heads, T, T) become token relevance (B, T, T)."""

    requires = Requires(attention=True, vit=True)
    class_dependent = False  # attention probabilities of the forward pass only

    def combine(self, attentions: List[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def cost(self, shape):
        return Cost(forwards=1)

    def attribute(self, adapter, x, target, *, ids, masks=None):
        with torch.no_grad(), adapter.record_attention() as rec:
            adapter.logits(x)
        return Attribution(_explained_row(adapter, self.combine(rec.ordered())), "patch")


@register_method("attention_rollout")
class AttentionRollout(_ForwardAttention):
    """Attention rollout with registers (Abnar & Zuidema 2020; Darcet et al. 2024). Class-agnostic."""

    label = "Attn. Rollout"

    def combine(self, attentions):
        return attention_rollout(attentions)


@register_method("attention_last")
class LastLayerAttention(_ForwardAttention):
    """The last block's CLS → patch attention, mean over heads (Clark et al. 2019), registers skipped."""

    label = "Attn. last"

    def combine(self, attentions):
        return attentions[-1].float().mean(1)


@register_method("gae")
class GAE(AttributionMethod):
    """Generic Attention-model Explainability (Chefer et al. 2021b): gradient-weighted attention
    rollout R ← R + mean_h[(∂ logit_c/∂A ⊙ A)⁺] R over blocks, CLS row over patch tokens."""

    label = "GAE"
    requires = Requires(gradients=True, attention=True, vit=True)

    def attribute(self, adapter, x, target, *, ids, masks=None):
        with torch.enable_grad(), adapter.record_attention(grad=True) as rec:
            x = x.detach().requires_grad_(True)  # so every attention map is part of the graph
            logits = adapter.logits(x)
            torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), x)
        R = gradient_attention_rollout(rec.ordered(), rec.ordered("grads"))
        return Attribution(_explained_row(adapter, R), "patch")
