"""Layer-wise relevance propagation.

- **ViT** (timm ``VisionTransformer``): the "transformer attribution" of Chefer, Gur & Wolf,
  "Transformer Interpretability Beyond Attention Visualization" (CVPR 2021), with the
  propagation rules of the authors' implementation, which defines the method:

  * relevance starts as the one-hot vector of the target logit;
  * linear layers (classifier head, qkv, attention output projection, both MLP layers) use
    LRP-αβ with α = 1, β = 0: the positive contributions x⁺W⁺ + x⁻W⁻ share the relevance of
    each output, biases take none;
  * LayerNorm (all of them: block norms, the final norm, ``fc_norm``, q/k norms and the
    optional attention/MLP norms), softmax, GELU, dropout, LayerScale and the attention
    scale pass relevance through unchanged;
  * pooling uses the gradient × input rule (token pooling puts the relevance on the CLS
    token), a copy of a tensor feeding two branches sums the relevance of both;
  * a residual addition u + v splits relevance by gradient × input (R_u = u ⊙ R / (u + v))
    and rescales the two parts so that their totals are |Σ R_u| : |Σ R_v| of the incoming
    total (the paper's Eq. 8);
  * the two attention products (q kᵀ before the softmax, A v after it) use gradient × input
    on each operand and halve both parts: a product is linear in each operand, so each part
    alone already totals the incoming relevance, and halving is what Eq. 8 gives there. The
    relevance of A goes through the softmax and the attention scale unchanged to q kᵀ
    (computed without the scale), and that of q, k, v is laid out as the qkv layer's output.

  Every block keeps the relevance R_A of its attention probabilities (as halved) and their
  gradient ∇A of the target logit. The map is the rollout Π_l (I + mean_h[(∇A_l ⊙ R_A_l)⁺]),
  first block rightmost and without row normalisation, read at the CLS row over the patch
  tokens (all prefix tokens, registers included, are skipped; a model without a CLS token
  uses the mean of the patch rows). The authors' code explains one image at a time; here
  every step is batched and every renormalisation sums over one image only.
- **CNN** (ResNets): zennit's ``EpsilonPlusFlat`` composite (flat rule on the first layer,
  z⁺ on convolutions, ε on dense layers), BatchNorm merged into the preceding convolution, and
  each residual addition made an explicit ``Sum`` (so relevance is split between the branches,
  not duplicated) for timm's and torchvision's ResNet blocks. Initial relevance = the target
  logit. The map is the relevance summed over colour channels (pixel level).

The GAE method (Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting
Bi-Modal and Encoder-Decoder Transformers", ICCV 2021) lives in ``attention.py`` under its own
name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from xaibench.attribution import Attribution
from xaibench.cost import Cost
from xaibench.errors import UserError

from .attention import _explained_row
from .base import AttributionMethod, Requires, register_method

EPS = 1e-9


# ----------------------------------------------------------------------------- relevance rules
def safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b with b pushed away from 0 by EPS (keeping its sign) and 0 where b == 0."""
    den = torch.where(b >= 0, b + EPS, b - EPS)
    return torch.where(b == 0, torch.zeros_like(a), a / den)


def lrp0(
    fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], R: torch.Tensor
) -> List[torch.Tensor]:
    """Gradient × input rule through ``fn``: R_i = x_i ⊙ ∂(Z · S)/∂x_i with S = R / Z, Z = fn(*inputs)."""
    with torch.enable_grad():
        xs = [t.detach().requires_grad_(True) for t in inputs]
        Z = fn(*xs)
        grads = torch.autograd.grad(Z, xs, safe_div(R, Z.detach()))
    return [x.detach() * g for x, g in zip(xs, grads)]


def _per_image_total(t: torch.Tensor) -> torch.Tensor:
    """Σ over all but the batch dimension, shaped to broadcast against ``t``."""
    return t.flatten(1).sum(1).view(-1, *([1] * (t.ndim - 1)))


def renormalise_pair(a: torch.Tensor, b: torch.Tensor, R: torch.Tensor):
    """Chefer et al. 2021 Eq. 8, per image: scale the two operands' relevance so that their
    totals are in the ratio |Σa| : |Σb| and together equal ΣR."""
    sa, sb, sr = _per_image_total(a), _per_image_total(b), _per_image_total(R)
    denom = sa.abs() + sb.abs()
    fa = safe_div(sa.abs(), denom) * sr
    fb = safe_div(sb.abs(), denom) * sr
    return a * safe_div(fa, sa), b * safe_div(fb, sb)


def two_operand(fn: Callable, x: torch.Tensor, y: torch.Tensor, R: torch.Tensor):
    """Gradient × input on both operands of ``fn`` (e.g. a residual addition), renormalised."""
    a, b = lrp0(fn, [x, y], R)
    return renormalise_pair(a, b, R)


def matmul_halves(x: torch.Tensor, y: torch.Tensor, R: torch.Tensor):
    """Relevance of both operands of Z = x @ y: gradient × input on each, halved.

    With S = R / Z: R_x = x ⊙ (S yᵀ) / 2 and R_y = y ⊙ (xᵀ S) / 2. Z is linear in each operand,
    so either part alone sums to Σ R (up to the stabiliser); halving makes the pair conserve.
    """
    S = safe_div(R, x @ y)
    return x * (S @ y.transpose(-2, -1)) / 2, y * (x.transpose(-2, -1) @ S) / 2


def linear_alpha1_beta0(x: torch.Tensor, weight: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """LRP-αβ with α = 1, β = 0 for y = x Wᵀ (bias ignored): positive contributions x⁺W⁺ and x⁻W⁻."""
    wp, wn = weight.clamp_min(0), weight.clamp_max(0)
    xp, xn = x.clamp_min(0), x.clamp_max(0)
    S = safe_div(R, F.linear(xp, wp) + F.linear(xn, wn))
    return xp * (S @ wp) + xn * (S @ wn)


# ----------------------------------------------------------------------------- ViT
def _check_vit(adapter) -> None:
    m = adapter.model
    if getattr(m, "attn_pool", None) is not None:
        raise UserError(
            f"lrp: {adapter.name} pools with attention (attn_pool); supported: token and avg pooling"
        )
    for blk in m.blocks:
        a, mlp = blk.attn, blk.mlp
        if getattr(a, "gate", None) is not None or not all(
            hasattr(a, n) for n in ("qkv", "proj", "num_heads")
        ):
            raise UserError(f"lrp: {adapter.name} has attention blocks other than timm's standard Attention")
        if not (
            hasattr(mlp, "fc1")
            and hasattr(mlp, "fc2")
            and isinstance(mlp.fc1, nn.Linear)
            and mlp.fc1.out_features == mlp.fc2.in_features
        ):
            raise UserError(f"lrp: {adapter.name} has gated MLPs; supported: timm's standard Mlp")


def _vit_forward(adapter, x: torch.Tensor):
    """A forward pass of the timm ViT (eval mode) that keeps every intermediate tensor LRP needs."""
    m = adapter.model
    t = m.norm_pre(m.patch_drop(adapter.vit_embed(x)))
    blocks = []
    for blk in m.blocks:
        at, mlp = blk.attn, blk.mlp
        n1 = blk.norm1(t)
        B, N, _ = n1.shape
        q, k, v = at.qkv(n1).reshape(B, N, 3, at.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        qn, kn = at.q_norm(q), at.k_norm(k)
        A = ((qn * at.scale) @ kn.transpose(-2, -1)).softmax(-1)
        o3 = at.norm((A @ v).transpose(1, 2).reshape(B, N, -1))
        r1 = blk.ls1(at.proj(o3))
        h_mid = t + r1
        n2 = blk.norm2(h_mid)
        gn = mlp.norm(mlp.act(mlp.fc1(n2)))
        r2 = blk.ls2(mlp.fc2(gn))
        blocks.append(
            dict(h_in=t, n1=n1, qn=qn, kn=kn, A=A, v=v, o3=o3, r1=r1, h_mid=h_mid, n2=n2, gn=gn, r2=r2)
        )
        t = h_mid + r2
    feats = t
    hn = m.norm(feats)
    pf = m.fc_norm(m.pool(hn))
    logits = m.head(m.head_drop(pf))
    return logits, {"feats": feats, "hn": hn, "pf": pf}, blocks


@dataclass
class ViTRelevance:
    """What one batched relevance pass leaves behind (all detached).

    ``attn[l]`` and ``attn_grads[l]`` are R_A and ∂ logit/∂A of block l (B, heads, T, T);
    ``pooled`` is the relevance on the classifier's input features (B, D); ``tokens`` the
    relevance on the last block's output tokens (B, T, D), equal to that after the final
    LayerNorm, which passes it unchanged; ``block_inputs[l]`` the relevance on block l's input
    tokens; ``attn_outputs[l]`` the relevance the first residual addition of block l gives
    its attention branch.
    """

    attn: List[torch.Tensor] = field(default_factory=list)
    attn_grads: List[torch.Tensor] = field(default_factory=list)
    pooled: Optional[torch.Tensor] = None
    tokens: Optional[torch.Tensor] = None
    block_inputs: List[torch.Tensor] = field(default_factory=list)
    attn_outputs: List[torch.Tensor] = field(default_factory=list)

    def block_outputs(self) -> List[torch.Tensor]:
        return self.block_inputs[1:] + [self.tokens]


def _attention_relevance(blk, b: Dict[str, torch.Tensor], R: torch.Tensor):
    """Relevance on the attention branch's output (B, T, D) → (R_A, relevance on the norm1 output)."""
    at = blk.attn
    # ls1 (LayerScale) and proj_drop pass relevance unchanged
    R = linear_alpha1_beta0(b["o3"], at.proj.weight, R)
    # at.norm (identity or LayerNorm) passes relevance unchanged
    Bn, N, _ = R.shape
    R = R.reshape(Bn, N, at.num_heads, -1).transpose(1, 2)
    R_A, R_v = matmul_halves(b["A"], b["v"], R)
    # attn_drop, softmax and the scale pass relevance unchanged; so do q_norm and k_norm
    R_q, R_kT = matmul_halves(b["qn"], b["kn"].transpose(-2, -1), R_A)
    R_qkv = torch.stack([R_q, R_kT.transpose(-2, -1), R_v]).permute(1, 3, 0, 2, 4).reshape(Bn, N, -1)
    return R_A, linear_alpha1_beta0(b["n1"], at.qkv.weight, R_qkv)


def _mlp_relevance(blk, b: Dict[str, torch.Tensor], R: torch.Tensor) -> torch.Tensor:
    """Relevance on the MLP branch's output (B, T, D) → relevance on the norm2 output."""
    mlp = blk.mlp
    # ls2, drop2, mlp.norm, drop1 and the activation (GELU) pass relevance unchanged
    R = linear_alpha1_beta0(b["gn"], mlp.fc2.weight, R)
    return linear_alpha1_beta0(b["n2"], mlp.fc1.weight, R)


def vit_relevance(adapter, x: torch.Tensor, target: torch.Tensor) -> ViTRelevance:
    """One batched relevance pass of the target logits (``target`` indexes the adapter's classes)."""
    _check_vit(adapter)
    m = adapter.model
    with torch.enable_grad():
        logits, top, blocks = _vit_forward(adapter, x)
        full_target = target if adapter.class_indices is None else adapter.class_indices[target]
        grads = torch.autograd.grad(logits.gather(1, full_target.view(-1, 1)).sum(), [b["A"] for b in blocks])
    with torch.no_grad():
        return _propagate(m, full_target, logits.shape[1], top, blocks, grads)


def _propagate(m, full_target, num_logits, top, blocks, grads) -> ViTRelevance:
    top = {k: v.detach() for k, v in top.items()}
    blocks = [{k: v.detach() for k, v in b.items()} for b in blocks]
    out = ViTRelevance(attn_grads=[g.detach() for g in grads])
    R = F.one_hot(full_target, num_logits).to(top["pf"].dtype)
    out.pooled = R = linear_alpha1_beta0(top["pf"], m.head.weight, R)
    # head_drop and fc_norm pass relevance unchanged; pooling: gradient × input
    (R,) = lrp0(m.pool, [top["hn"]], R)
    out.tokens = R  # the final LayerNorm passes relevance unchanged
    rel_A, block_inputs, attn_outputs = [], [], []
    for blk, b in zip(reversed(m.blocks), reversed(blocks)):
        R_mid, R_mlp = two_operand(torch.add, b["h_mid"], b["r2"], R)
        R = R_mid + _mlp_relevance(blk, b, R_mlp)  # norm2 passes; the copy of h_mid sums both
        R_in, R_attn = two_operand(torch.add, b["h_in"], b["r1"], R)
        attn_outputs.append(R_attn)
        R_A, R_n1 = _attention_relevance(blk, b, R_attn)
        rel_A.append(R_A)
        R = R_in + R_n1  # norm1 passes; the copy of the block input sums both
        block_inputs.append(R)
    out.attn, out.block_inputs, out.attn_outputs = rel_A[::-1], block_inputs[::-1], attn_outputs[::-1]
    return out


def vit_lrp(adapter, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Chefer et al. 2021 "transformer attribution" maps (B, gh, gw) of a batch."""
    rel = vit_relevance(adapter, x, target)
    T = rel.attn[0].shape[-1]
    eye = torch.eye(T, device=x.device, dtype=rel.attn[0].dtype)
    joint = None
    for R_A, gA in zip(rel.attn, rel.attn_grads):
        cam = (gA * R_A).clamp_min(0).mean(1) + eye
        joint = cam if joint is None else cam @ joint
    return _explained_row(adapter, joint)


# ----------------------------------------------------------------------------- CNN (zennit)
def _basic_branch(block, x):
    x = block.act1(block.drop_block(block.bn1(block.conv1(x))))
    return block.bn2(block.conv2(block.aa(x)))


def _bottleneck_branch(block, x):
    x = block.act1(block.bn1(block.conv1(x)))
    x = block.aa(block.act2(block.drop_block(block.bn2(block.conv2(x)))))
    return block.bn3(block.conv3(x))


def _residual_forward(branch, last_act):
    def forward(self, x):
        out = branch(self, x)
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        shortcut = self.downsample(x) if self.downsample is not None else x
        return getattr(self, last_act)(self.canonizer_sum(torch.stack([shortcut, out], dim=-1)))

    return forward


def _timm_block_canonizer():
    """Make the residual addition of timm's ResNet blocks an explicit zennit ``Sum`` module."""
    from timm.models.resnet import BasicBlock, Bottleneck
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def attributes(_name, module):
        if isinstance(module, BasicBlock):
            return {
                "forward": _residual_forward(_basic_branch, "act2").__get__(module),
                "canonizer_sum": Sum(),
            }
        if isinstance(module, Bottleneck):
            return {
                "forward": _residual_forward(_bottleneck_branch, "act3").__get__(module),
                "canonizer_sum": Sum(),
            }
        return None

    return AttributeCanonizer(attributes)


class _Logits(nn.Module):
    def __init__(self, adapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._adapter = adapter

    def forward(self, x):
        return self._adapter.logits(x)


def cnn_lrp(adapter, x: torch.Tensor, target: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """zennit EpsilonPlusFlat relevance (B, 3, H, W) of the target logit."""
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    canonizers = [SequentialMergeBatchNorm(), _timm_block_canonizer()]
    try:
        from torchvision.models.resnet import BasicBlock as TVBasic
        from torchvision.models.resnet import Bottleneck as TVBottle

        if any(isinstance(mod, (TVBasic, TVBottle)) for mod in adapter.model.modules()):
            canonizers = [ResNetCanonizer()]
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    composite = EpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers)
    with torch.enable_grad(), Gradient(model=_Logits(adapter), composite=composite) as attributor:
        one_hot = F.one_hot(target, adapter.num_classes).to(x.dtype)
        _, relevance = attributor(x.detach(), lambda out: out * one_hot)
    adapter.zero_grad()
    return relevance.detach()


@register_method("lrp")
class LRP(AttributionMethod):
    """LRP: Chefer et al. 2021 relevance propagation on ViTs (patch-level map), zennit
    EpsilonPlusFlat on CNNs (pixel-level map, relevance summed over colour channels)."""

    label = "LRP"
    requires = Requires(gradients=True)

    def cost(self, shape):
        return Cost(forwards=1, backwards=2)  # the gradient of the attention maps, then the relevance pass

    def attribute(self, adapter, x, target, *, ids, masks=None):
        if adapter.is_vit:
            return Attribution(vit_lrp(adapter, x, target), "patch")
        return Attribution(cnn_lrp(adapter, x, target).sum(1), "pixel")
