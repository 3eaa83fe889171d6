"""The removal engine: model outputs on inputs with parts removed, batched for throughput.

:class:`RemovalEngine` runs the one removal operation (:class:`~xaibench.removal.Removal` says
what removed pixels become) for a :class:`~xaibench.adapter.ModelAdapter`. Every metric and
every removal-based method reaches it through ``adapter.masked_probs`` (no gradients) or
``adapter.masked_logits`` (differentiable, for training on masked inputs).

Passes. Masked inputs go through the model in passes of ``adapter.budget.rows()`` inputs (a
size calibrated for throughput on the device, bounded by the memory budget; see
:mod:`xaibench.budget`). ``drop`` passes hold the same number of *tokens* as a pass of that many
full inputs, so a pass of short sequences holds more rows.

Token dropping that pays. The cost of a ViT forward grows with its number of tokens, so
removing patch tokens instead of filling them saves compute in proportion to what is removed
(the idea behind token dropping in masked autoencoders: He et al., "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022). Grouping rows by their number of kept patches, as a
per-cardinality loop does, leaves each forward with a few dozen rows and throws the saving away.
Here the rows of a call, from all its images, are sorted by how many patches they keep; each
row's patch tokens are padded to its count rounded up to a small quantum (2 for 64 patches,
at most 32 lengths) and the padding is excluded from every attention by a key mask (prefix
tokens are never removed); passes hold rows of one padded length, as many as the pass's token
budget allows. Tokens interact only through attention, so a padded token changes nothing for
the others; average or max pooling over patch tokens would see the padding, so before the
head the padded positions take the mean of the row's real tokens, which leaves an average, a
max and their sum unchanged. The result equals one-at-a-time dropping up to float rounding
(tested to 1e-5, with registers and without a CLS token). Models whose blocks take no
``attn_mask`` or that pool with attention keep exact per-cardinality passes.
``masked_logits`` (training) keeps per-cardinality passes without padding, so training is
unchanged.

Filling on ViTs. A boolean patch mask with a filling strategy (``mean``, ``blur``,
``distractor``) is applied to the embedded tokens: the clean images and their fills are embedded
once per call, and each masked input takes, patch by patch, the clean or the filled token
(:func:`composes_tokens` says when that equals embedding the composed pixels).

Pass-size invariance. Calibration may choose another pass size on another run, so a row's
result should not depend on the pass it lands in. A row's padded length depends only on its
own count, and every pass holds at least ``MIN_PASS_ROWS`` inputs (a short last pass joins
the one before it; a call with fewer inputs repeats its last one); measured on CPU, the
results are then bitwise identical for every pass size and batch composition (tested). On
other hardware kernels may still round differently by shape; the budget's stored calibration
keeps the pass size fixed on a machine.

Devices. No-gradient passes run under ``torch.inference_mode``; masks and targets move to the
device through pinned memory without blocking; the pass loop never reads a device value back
(the pass plan needs one host copy of the per-row counts, made before the loop).

Mixed precision. ``amp="bf16"`` or ``"fp16"`` runs the passes under ``torch.autocast`` (the
probabilities are still computed in float32 from the logits). Only the metrics' calls use it
(:func:`xaibench.metrics.engine.removal_probs` passes the setting of their ``EvalContext``);
methods never do, so attributions are never computed in reduced precision. Measured on CPU
(``perf/engine_numerics.py``: 32 synthetic test images, random patch maps, every cardinality,
MIF/LIF ×100): on the trained default ViT, bf16 moves a single image's MIF or LIF by up to
0.56 points (0.04–0.06 on average per image) and the mean over the images by less than 0.01;
fp16 moves them about ten times less (up to 0.04); on untrained tiny models both stay below
0.04. Either is far above float32 rounding (~1e-7; bf16 keeps 8 significant bits, fp16 11):
leave it off for reference numbers.
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
from typing import List, Optional, Sequence, Tuple

import torch

from .errors import UserError
from .removal import Removal

#: reduced-precision settings accepted by ``amp``
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: the fewest inputs in a no-gradient pass (shorter passes repeat their last input): matrix
#: products of fewer rows take other kernels and round differently (measured on CPU: a linear
#: layer's output rows change with 1–3 rows, never from 4 on), so with at least this many rows
#: a row's result does not depend on the pass size
MIN_PASS_ROWS = 4

#: pooling heads whose padded positions can be neutralised by the row's mean token
_MEAN_NEUTRAL_POOLS = ("avg", "max", "avgmax")


def check_amp(amp: Optional[str]) -> Optional[str]:
    if amp is not None and amp not in AMP_DTYPES:
        raise UserError(f"unknown amp setting '{amp}'. Valid: {', '.join(AMP_DTYPES)} (or none)")
    return amp


def autocast(device: torch.device, amp: Optional[str]):
    """``torch.autocast`` for ``amp`` on ``device``'s type, or a no-op context when ``amp`` is None."""
    if check_amp(amp) is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def to_device(t: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    """``t`` on ``device``; host → CUDA copies go through pinned memory and do not block."""
    if t is None or t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class RemovalEngine:
    """The removal operation of one :class:`~xaibench.adapter.ModelAdapter` (see the module doc)."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self._pool: Optional[str] = None  # how padded drop passes treat the head: see pool_mode

    def masked_probs(
        self,
        x: torch.Tensor,
        keep: torch.Tensor,
        removal: Removal | str = "mean",
        ids: Optional[Sequence[str]] = None,
        target: Optional[torch.Tensor] = None,
        amp: Optional[str] = None,
    ) -> torch.Tensor:
        """Class probabilities of ``x`` with parts removed (no gradients).

        Args:
            x: clean inputs (B, 3, H, W), normalised.
            keep: which parts stay: a boolean patch mask (B, M, P) or a pixel mask (B, M, H, W)
                (bool, or float in [0, 1] for soft masks; not for ``drop``).
            removal: a :class:`Removal` or a strategy name.
            ids: image ids (seed the distractor draws).
            target: optional (B,) class per image; then only that column is returned (and only
                that column is kept per pass, which matters for models with many classes).
            amp: None (float32), ``"bf16"`` or ``"fp16"`` autocast of the passes (metrics only).
        Returns:
            (B, M, C) probabilities, or (B, M) for ``target``; averaged over distractor draws.
        """
        removal = Removal(removal) if isinstance(removal, str) else removal
        if keep.ndim not in (3, 4):
            raise ValueError(f"keep must be (B, M, P) or (B, M, H, W), got {tuple(keep.shape)}")
        if keep.shape[0] != x.shape[0]:
            raise ValueError(f"keep has {keep.shape[0]} rows for {x.shape[0]} images")
        keep = to_device(keep, x.device)
        target = to_device(target, x.device)
        with torch.inference_mode(), autocast(x.device, amp):
            if removal.strategy == "drop":
                probs = self._dropped(x, keep, target)
            else:
                probs = filled_probs(self.adapter, x, keep, removal, ids, target)
        return probs.clone()  # a normal tensor: callers may use it in autograd

    def masked_logits(
        self,
        x: torch.Tensor,
        keep: torch.Tensor,
        removal: Removal | str = "mean",
        fill: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits (n, C) of n inputs with one mask each, differentiable (training on masked inputs).

        keep: (n, P) boolean patch mask, or (n, H, W) pixel mask (not for ``drop``);
        fill: (n, 3, H, W) what removed pixels become (default: the strategy's first fill).
        One pass (no chunking); ``drop`` makes one forward per cardinality, without padding.
        """
        a = self.adapter
        removal = Removal(removal) if isinstance(removal, str) else removal
        if removal.strategy == "drop":
            self._check_drop(keep[:, None])
            image = torch.arange(len(x), device=x.device)
            return drop_logits(a, "exact", a.vit_embed(x), keep, image, tokens_per_pass=None)
        if keep.ndim == 2:
            keep = a.patch_keep_to_pixels(keep)
        if fill is None:
            if removal.strategy == "distractor":
                raise ValueError("masked_logits with distractor removal needs an explicit fill")
            fill = removal.fill(x)[:, 0]
        return a.logits(Removal.compose(x, keep, fill))

    def pool_mode(self) -> str:
        if self._pool is None:
            self._pool = pool_mode(self.adapter)
        return self._pool

    def _check_drop(self, keep: torch.Tensor) -> None:
        a = self.adapter
        if not a.is_vit:
            raise UserError(f"removal 'drop' needs a ViT; {a.name} is a CNN: use mean, blur or distractor")
        if keep.ndim != 3 or keep.dtype != torch.bool or keep.shape[2] != a.num_patches:
            raise ValueError(f"removal 'drop' needs a boolean patch mask (B, M, {a.num_patches})")

    def _dropped(self, x: torch.Tensor, keep: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        self._check_drop(keep)
        a = self.adapter
        B, M, P = keep.shape
        image = torch.arange(B, device=x.device).repeat_interleave(M)
        rows = a.budget.rows()
        out = drop_logits(
            a,
            self.pool_mode(),
            a.vit_embed(x),
            keep.reshape(B * M, P),
            image,
            tokens_per_pass=rows * (a.num_prefix_tokens + P),
            min_rows=min(MIN_PASS_ROWS, rows),
            select=None if target is None else target[image],
        )
        if target is not None:
            return out.view(B, M)
        return out.float().softmax(-1).view(B, M, -1)


def drop_logits(
    adapter,
    pool: str,
    tokens: torch.Tensor,
    keep: torch.Tensor,
    image: torch.Tensor,
    tokens_per_pass: Optional[int],
    min_rows: int = 1,
    select: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Outputs for the rows of ``keep`` (n, P) with the removed patch tokens left out; row i
    uses the embedded tokens (B, prefix + P, D) of image ``image[i]``.

    Rows are sorted by their number of kept patches and cut into passes (:func:`plan_passes`)
    of at most ``tokens_per_pass`` tokens (None: one pass per count) and at least ``min_rows``
    rows (a shorter pass repeats its last row). Unless ``pool`` is ``exact`` (see
    :func:`pool_mode`), a row's patch tokens are padded to its count rounded up to the length
    quantum and the padding is masked out of attention; otherwise each pass holds one count,
    unpadded. Returns logits (n, C), or, with ``select`` (n,) classes, float32 probabilities of
    those classes (n,).
    """
    pre = adapter.num_prefix_tokens
    n, P = keep.shape
    counts = keep.sum(1)
    order = counts.argsort(stable=True)
    host_counts = counts[order].cpu()  # the one read-back: the plan of passes
    if pre == 0 and n and int(host_counts[0]) == 0:
        raise ValueError("removal 'drop' removed every token of a model without prefix tokens")
    padded = pool != "exact"
    quantum = length_quantum(P) if padded else 1
    parts: List[torch.Tensor] = []
    for s, e, length in plan_passes(host_counts.tolist(), P, pre, tokens_per_pass, quantum, min_rows):
        rows = pad_rows(order[s:e], min_rows)
        sub = keep[rows]
        # kept patches first, in patch order; a padded row's tail holds removed patches, masked out
        kept = (~sub).to(torch.uint8).argsort(dim=1, stable=True)[:, :length]
        img = image[rows]
        seq = torch.cat([tokens[img, :pre], tokens[img[:, None], kept + pre]], dim=1)
        logits = token_logits(adapter, pool, seq, sub.gather(1, kept) if padded else None)[: e - s]
        if select is not None:
            logits = logits.float().softmax(-1).gather(1, select[rows[: e - s], None])[:, 0]
        parts.append(logits)
    if not parts:
        return tokens.new_zeros(0, *(() if select is not None else (adapter.num_classes,)))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=order.device)
    return torch.cat(parts)[inverse]


def token_logits(adapter, pool: str, seq: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Logits of embedded sequences (r, prefix + k, D); ``valid`` (r, k) marks the real patch
    tokens of a padded pass (None: every token is real)."""
    m = adapter.model
    if valid is None:
        return adapter.vit_from_tokens(seq)
    pre = adapter.num_prefix_tokens
    allowed = torch.cat([valid.new_ones(valid.shape[0], pre), valid], dim=1)
    mask = allowed[:, None, None, :]  # keys only: (r, 1, 1, L) broadcasts over heads and queries
    t = m.norm_pre(m.patch_drop(seq))
    for blk in m.blocks:
        t = blk(t, attn_mask=mask)
    t = m.norm(t)
    if pool == "mean":
        start = 0 if getattr(m, "pool_include_prefix", False) else pre
        real = allowed[:, start:, None]
        body = t[:, start:]
        mean = (body * real).sum(1, keepdim=True) / real.sum(1, keepdim=True)
        t = torch.cat([t[:, :start], torch.where(real, body, mean.to(body.dtype))], dim=1)
    return adapter._select(m.forward_head(t))


def pool_mode(adapter) -> str:
    """How a padded drop pass treats the model's head: ``token`` (the head reads a prefix token:
    padding is invisible to it), ``mean`` (average or max pooling: padded positions take the
    row's mean token), or ``exact`` (no padding: blocks without ``attn_mask``, attention
    pooling, or an unknown head)."""
    m = adapter.model
    blocks_take_mask = all("attn_mask" in inspect.signature(type(b).forward).parameters for b in m.blocks)
    pool = getattr(m, "global_pool", None)
    if not blocks_take_mask or getattr(m, "attn_pool", None) is not None:
        return "exact"
    if pool == "token" and adapter.num_prefix_tokens > 0:
        return "token"
    return "mean" if pool in _MEAN_NEUTRAL_POOLS else "exact"


def filled_probs(
    adapter,
    x: torch.Tensor,
    keep: torch.Tensor,
    removal: Removal,
    ids: Optional[Sequence[str]],
    target: Optional[torch.Tensor],
) -> torch.Tensor:
    """``masked_probs`` for the filling strategies: (B, M, C), or (B, M) for ``target``."""
    a = adapter
    patch = keep.ndim == 3
    if patch and keep.shape[2] != a.num_patches:
        raise ValueError(f"patch mask has {keep.shape[2]} patches, the model has {a.num_patches}")
    B, M = keep.shape[:2]
    fill = removal.fill(x, ids)  # from the clean images, once
    D = fill.shape[1]
    total = B * M * D
    step = a.budget.rows()
    min_rows = min(MIN_PASS_ROWS, step)
    tokens = patch and keep.dtype == torch.bool and composes_tokens(a)
    if tokens:  # embed the clean and filled images once and compose their tokens
        pre = a.num_prefix_tokens
        clean, filled = a.vit_embed(x), a.vit_embed(fill.flatten(0, 1))[:, pre:]
    parts: List[torch.Tensor] = []
    for s, e in row_passes(total, step, min_rows):
        idx = pad_rows(torch.arange(s, e, device=x.device), min_rows)
        b, m, d = idx // (M * D), (idx // D) % M, idx % D
        k = keep[b, m]
        if tokens:
            body = torch.where(k[:, :, None], clean[b, pre:], filled[b * D + d])
            logits = a.vit_from_tokens(torch.cat([clean[b, :pre], body], dim=1))
        else:
            k = a.patch_keep_to_pixels(k) if patch else k
            logits = a.logits(Removal.compose(x[b], k, fill[b, d]))
        p = logits[: e - s].float().softmax(-1)
        if target is not None:
            p = p.gather(1, target[b[: e - s], None])[:, 0]
        parts.append(p)
    if not parts:
        return x.new_zeros(B, M) if target is not None else x.new_zeros(B, M, a.num_classes)
    out = torch.cat(parts)
    out = out.view(B, M, D) if target is not None else out.view(B, M, D, -1)
    return out.mean(2)


def composes_tokens(adapter) -> bool:
    """Whether a patch mask can be applied to a ViT's embedded tokens instead of its pixels: the
    patch embedding sees each patch alone (a convolution whose kernel is its stride, no padding),
    so the token of a patch of the composed image is the clean or the filled image's token of
    that patch. The result is the pixel path's (bitwise on CPU in the tests) without embedding
    every masked input (5–7 % of a tiny ViT's pass on CPU)."""
    embed = getattr(adapter.model, "patch_embed", None) if adapter.is_vit else None
    proj = getattr(embed, "proj", None)
    return (
        isinstance(proj, torch.nn.Conv2d)
        and tuple(proj.kernel_size) == tuple(proj.stride)
        and tuple(proj.padding) == (0, 0)
        and not getattr(embed, "dynamic_img_pad", False)
    )


def pad_rows(rows: torch.Tensor, min_rows: int) -> torch.Tensor:
    """``rows`` with its last entry repeated up to ``min_rows`` entries (see ``MIN_PASS_ROWS``)."""
    if len(rows) >= min_rows:
        return rows
    return torch.cat([rows, rows[-1:].expand(min_rows - len(rows))])


def length_quantum(num_patches: int) -> int:
    """Padded drop sequences hold a multiple of this many patch tokens (at most 32 lengths)."""
    return max(2, -(-num_patches // 32))


def _split(start: int, end: int, step: int, min_rows: int) -> List[Tuple[int, int]]:
    """Consecutive passes of ``step`` rows over [start, end); a last pass shorter than
    ``min_rows`` takes rows from the one before it when that one keeps ``min_rows``."""
    out = [(s, min(end, s + step)) for s in range(start, end, step)]
    if len(out) > 1 and out[-1][1] - out[-1][0] < min_rows:
        (a, b), (_, c) = out[-2:]
        if (b - a) - (min_rows - (c - b)) >= min_rows:
            out[-2:] = [(a, c - min_rows), (c - min_rows, c)]
    return out


def row_passes(n: int, step: int, min_rows: int = MIN_PASS_ROWS) -> List[Tuple[int, int]]:
    """Passes (start, end) of at most ``step`` rows over ``n`` rows (see :func:`_split`)."""
    return _split(0, n, max(1, int(step)), min_rows)


def plan_passes(
    counts: Sequence[int],
    num_patches: int,
    prefix: int,
    tokens_per_pass: Optional[int],
    quantum: int = 1,
    min_rows: int = 1,
) -> List[Tuple[int, int, int]]:
    """Passes (start, end, length) over rows sorted by ascending kept-patch count ``counts``.

    A row's patch tokens are padded to ``length`` = its count rounded up to a multiple of
    ``quantum`` (at most ``num_patches``): the same for a given count whatever else is in the
    call, so a row's result does not depend on its pass-mates or the pass size. Each pass holds
    rows of one length and at most ``tokens_per_pass`` tokens (prefix + length per row; None: no
    limit); a short last pass of a length is evened out with the one before (:func:`_split`).
    """
    out: List[Tuple[int, int, int]] = []
    n = len(counts)
    s = 0
    while s < n:
        length = min(num_patches, quantum * -(-counts[s] // quantum))
        e = bisect.bisect_right(counts, length, s)  # the rows padded to this length
        step = e - s if tokens_per_pass is None else max(min_rows, tokens_per_pass // (prefix + length))
        out.extend((a, b, length) for a, b in _split(s, e, step, min_rows))
        s = e
    return out
