"""Layer-wise relevance propagation.

- **ViT** (timm ``VisionTransformer``): "Transformer interpretability beyond attention
  visualization" (Chefer, Gur & Wolf, CVPR 2021), the LRP baseline of the salvage paper.
  Relevance starts as the one-hot of the target logit and is propagated back through every
  layer: linear layers with the LRP-αβ rule (α = 1, β = 0; inputs and weights split by sign),
  LayerNorm, softmax, scaling and pooling with the gradient × input ("LRP-0") rule, GELU passes
  relevance unchanged, and the two-operand layers (residual additions and the two attention
  matrix products) split relevance by gradient × input and renormalise both parts so that
  their sum equals the incoming relevance (the paper's Eq. 7–8). Every block keeps the
  relevance R_A of its attention probabilities and their gradient ∇A of the target logit; the
  map is the rollout Π_l (I + mean_h[(∇A_l ⊙ R_A_l)⁺]), first block rightmost, CLS row over the
  patch tokens (all prefix tokens, registers included, are skipped). The authors' code works
  on one image at a time; here every step is batched (the renormalisation sums run per image).
- **CNN** (ResNets): zennit's ``EpsilonPlusFlat`` composite (flat rule on the first layer,
  z⁺ on convolutions, ε on dense layers), BatchNorm merged into the preceding convolution, and
  each residual addition made an explicit ``Sum`` (so relevance is split between the branches,
  not duplicated) for timm's and torchvision's ResNet blocks. Initial relevance = the target
  logit. The map is the relevance summed over colour channels (pixel level).

The GAE method (Chefer et al. 2021b) lives in ``attention.py`` under its own name.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from xaibench.attribution import Attribution
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


def renormalise_pair(a: torch.Tensor, b: torch.Tensor, R: torch.Tensor):
    """Chefer et al. 2021 Eq. 8, per image: scale the two operands' relevance so that their
    shares are |Σa| : |Σb| and together they sum to ΣR."""

    def total(t):
        return t.flatten(1).sum(1).view(-1, *([1] * (t.ndim - 1)))

    sa, sb, sr = total(a), total(b), R.flatten(1).sum(1)
    denom = sa.abs() + sb.abs()
    fa = safe_div(sa.abs().flatten(), denom.flatten()) * sr
    fb = safe_div(sb.abs().flatten(), denom.flatten()) * sr
    return (a * safe_div(fa.view_as(sa), sa), b * safe_div(fb.view_as(sb), sb))


def two_operand(fn: Callable, x: torch.Tensor, y: torch.Tensor, R: torch.Tensor):
    a, b = lrp0(fn, [x, y], R)
    return renormalise_pair(a, b, R)


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
    """A forward pass of the timm ViT that keeps every intermediate tensor LRP needs."""
    m = adapter.model
    t = m.norm_pre(m.patch_drop(adapter.vit_embed(x)))
    blocks = []
    for blk in m.blocks:
        at, mlp = blk.attn, blk.mlp
        rec = {"h_in": t}
        n1 = blk.norm1(t)
        B, N, _ = n1.shape
        H = at.num_heads
        qkv = at.qkv(n1)
        q, k, v = qkv.reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4).unbind(0)
        qn, kn = at.q_norm(q), at.k_norm(k)
        qs = qn * at.scale
        scores = qs @ kn.transpose(-2, -1)
        A = scores.softmax(-1)
        o = A @ v
        o2 = o.transpose(1, 2).reshape(B, N, -1)
        o3 = at.norm(o2)
        r1 = blk.ls1(at.proj(o3))
        h_mid = t + r1
        n2 = blk.norm2(h_mid)
        g = mlp.act(mlp.fc1(n2))
        gn = mlp.norm(g)
        r2 = blk.ls2(mlp.fc2(gn))
        t = h_mid + r2
        rec.update(
            n1=n1,
            q=q,
            k=k,
            qn=qn,
            kn=kn,
            qs=qs,
            scores=scores,
            A=A,
            v=v,
            o2=o2,
            o3=o3,
            a_out=at.proj(o3),
            r1=r1,
            h_mid=h_mid,
            n2=n2,
            g=g,
            gn=gn,
            f2=mlp.fc2(gn),
            r2=r2,
        )
        blocks.append(rec)
    feats = t
    hn = m.norm(feats)
    pooled = m.pool(hn)
    pf = m.fc_norm(pooled)
    logits = m.head(m.head_drop(pf))
    return logits, {"feats": feats, "hn": hn, "pooled": pooled, "pf": pf}, blocks


def vit_lrp(adapter, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Chefer et al. 2021 relevance maps (B, gh, gw) of a batch."""
    _check_vit(adapter)
    m = adapter.model
    with torch.enable_grad():
        logits, top, blocks = _vit_forward(adapter, x)
        full_target = target if adapter.class_indices is None else adapter.class_indices[target]
        As = [b["A"] for b in blocks]
        grads_A = torch.autograd.grad(logits.gather(1, full_target.view(-1, 1)).sum(), As)
    top = {k: v.detach() for k, v in top.items()}
    blocks = [{k: v.detach() for k, v in b.items()} for b in blocks]
    R = F.one_hot(full_target, logits.shape[1]).float()
    R = linear_alpha1_beta0(top["pf"], m.head.weight, R)
    (R,) = lrp0(m.fc_norm, [top["pooled"]], R)
    (R,) = lrp0(m.pool, [top["hn"]], R)
    (R,) = lrp0(m.norm, [top["feats"]], R)
    rel_A = [None] * len(blocks)
    for i in reversed(range(len(blocks))):
        blk, b = m.blocks[i], blocks[i]
        at, mlp = blk.attn, blk.mlp
        # second residual: h_out = h_mid + r2
        R_mid, R_r2 = two_operand(torch.add, b["h_mid"], b["r2"], R)
        (R_r2,) = lrp0(blk.ls2, [b["f2"]], R_r2)
        R_r2 = linear_alpha1_beta0(b["gn"], mlp.fc2.weight, R_r2)
        (R_r2,) = lrp0(mlp.norm, [b["g"]], R_r2)
        # the activation (GELU) passes relevance unchanged
        R_r2 = linear_alpha1_beta0(b["n2"], mlp.fc1.weight, R_r2)
        (R_r2,) = lrp0(blk.norm2, [b["h_mid"]], R_r2)
        R = R_mid + R_r2  # the copy of h_mid feeding both branches
        # first residual: h_mid = h_in + r1
        R_in, R_r1 = two_operand(torch.add, b["h_in"], b["r1"], R)
        (R_r1,) = lrp0(blk.ls1, [b["a_out"]], R_r1)
        R_r1 = linear_alpha1_beta0(b["o3"], at.proj.weight, R_r1)
        (R_r1,) = lrp0(at.norm, [b["o2"]], R_r1)
        Bn, N, _ = R_r1.shape
        R_o = R_r1.reshape(Bn, N, at.num_heads, -1).transpose(1, 2)
        R_A, R_v = two_operand(torch.matmul, b["A"], b["v"], R_o)
        rel_A[i] = R_A
        (R_s,) = lrp0(lambda s: s.softmax(-1), [b["scores"]], R_A)
        R_qs, R_kn = two_operand(lambda qs, kn: qs @ kn.transpose(-2, -1), b["qs"], b["kn"], R_s)
        (R_q,) = lrp0(lambda qn: qn * at.scale, [b["qn"]], R_qs)
        (R_q,) = lrp0(at.q_norm, [b["q"]], R_q)
        (R_k,) = lrp0(at.k_norm, [b["k"]], R_kn)
        R_qkv = torch.stack([R_q, R_k, R_v]).permute(1, 3, 0, 2, 4).reshape(Bn, N, -1)
        R_qkv = linear_alpha1_beta0(b["n1"], at.qkv.weight, R_qkv)
        (R_qkv,) = lrp0(blk.norm1, [b["h_in"]], R_qkv)
        R = R_in + R_qkv
    T = rel_A[0].shape[-1]
    joint = None
    for R_A, gA in zip(rel_A, grads_A):
        cam = (gA.detach() * R_A).clamp_min(0).mean(1) + torch.eye(T, device=x.device)
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

    def attribute(self, adapter, x, target, *, ids, masks=None):
        if adapter.is_vit:
            return Attribution(vit_lrp(adapter, x, target), "patch")
        return Attribution(cnn_lrp(adapter, x, target).sum(1), "pixel")
