"""RISE (Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for Explanation of
Black-box Models"): randomised input sampling.

saliency = Σ_i p_c(x with mask m_i) · m_i / (N · p), every masked input scored through the
one removal operation (``adapter.masked_probs``).

Two mask families (``mode``):

- ``pixel`` (the paper; CNNs by default): an s×s grid of cells kept with probability p,
  upsampled bilinearly to (s+1)·cell and cropped at a random shift in [0, cell) per axis;
  soft pixel masks; removed pixels take the dataset mean (0 in normalised space, the
  removal ``mean``; the paper multiplies by the mask, i.e. fills black).
- ``patch`` (ViTs by default): each patch token kept with probability p and removed exactly
  by token dropping (removal ``drop``); the map is at patch level.

Two samplers of the N masks (``sampling``):

- ``independent`` (the paper): N i.i.d. masks.
- ``paired``: N/2 i.i.d. masks, each followed by its complement 1 − m (antithetic sampling;
  p = 0.5 only, where 1 − m has exactly the distribution of m). The estimator and its
  expectation are unchanged — every mask is still Bernoulli(0.5) per cell — but every cell is
  kept in exactly half of the masks, so the part of p_c that does not depend on the mask (for a
  confident classifier, most of it) no longer adds noise. On the embedded default two mask seeds
  agree at Pearson 0.71 with 384 paired masks against 0.23 with 384 independent ones (and 0.65
  with the paper's 4000 independent masks), measured by ``perf/rise_agreement.py``.

Random draws: each image draws all its masks (patch masks, or the grids and shifts of pixel
masks) from its own generator ``seeding.generator(seed, id, "rise")`` before any forward, so an
image gets the same masks in any batch and under any memory budget. Memory: pixel masks go to
the removal engine ⌊R / B⌋ per image at a time (R = ``adapter.budget.rows()``, B images; at least
one), so at most max(R, B) masked inputs — rendered pixel masks included — exist at once, and
the engine splits them further to its budget. Patch masks are booleans and the engine builds
the token sequences of one pass at a time, so they go ⌊32·R / B⌋ per image at a time: a
token-dropped pass holds rows of one kept count, and a call of only R rows spread over ~10
counts would leave every pass a tenth full (measured on the 2-core CPU, embedded default, 200
images, re-explanations included: 130 s with R masks per call, 74 s with 32·R). The maps do not
depend on the budget (the accumulation order does, at float round-off).

One set of masks serves several classes: a call explains its targets and the clean prediction's
top two classes from the same forwards, and keeps those maps for the batch; a following call on
the same images (same ids and pixels, same weights, same settings) for one of those classes — the
second label completeness asks for — is answered from them, bit for bit what a fresh call returns.

Paper defaults N = 4000 independent masks, s = 8, p = 0.5. ``quick`` (the embedded default run,
2-core CPU): 768 paired masks — about the cost of the earlier 384 independent masks per label
(1.1–1.2× measured), now that the second label is free — at which two mask seeds agree at
Pearson 0.83 but Spearman only 0.29 over the 64 patches. Spearman over all patches stays low at
any affordable N (0.47 with 8000 paired masks, 0.29 with 8000 independent ones): only ~12 of the
64 patches change p_c detectably, the others have equal true RISE values and their order is seed
noise however many masks are drawn. The leaderboard prints this caveat (:meth:`RISE.notes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xaibench.attribution import Attribution
from xaibench.cost import Cost
from xaibench.errors import UserError
from xaibench.params import check
from xaibench.seeding import generator

from .base import AttributionMethod, register_method

MODES = ("auto", "pixel", "patch")
SAMPLINGS = ("independent", "paired")
QUICK_MASKS = 768
#: patch masks (booleans) handed to the removal engine per call, in passes' worth of rows: a
#: drop pass holds rows of one padded length, and patch masks with p = 0.5 spread over ~10 lengths
DROP_PASSES_PER_CALL = 32
#: seed agreement of patch-level RISE on the embedded default (synthetic, tiny ViT; 32 images;
#: perf/rise_agreement.py): (sampling, n_masks) → mean Spearman, mean Pearson between two mask seeds
MEASURED_AGREEMENT = {
    ("independent", 384): (0.09, 0.23),
    ("independent", 1000): (0.15, 0.42),
    ("independent", 4000): (0.23, 0.65),
    ("independent", 8000): (0.29, 0.76),
    ("paired", 384): (0.25, 0.71),
    ("paired", 768): (0.29, 0.83),
    ("paired", 1000): (0.31, 0.86),
    ("paired", 4000): (0.40, 0.96),
    ("paired", 8000): (0.47, 0.98),
}


def rise_grid_draws(n: int, s: int, p: float, size, g: torch.Generator, device):
    """The random part of n pixel masks: Bernoulli(p) grids (n, s, s) and shifts dy, dx (n,)."""
    H, W = size
    grid = (torch.rand(n, s, s, generator=g, device=device) < p).float()
    dy = torch.randint(0, math.ceil(H / s), (n,), generator=g, device=device)
    dx = torch.randint(0, math.ceil(W / s), (n,), generator=g, device=device)
    return grid, dy, dx


def render_pixel_masks(grid: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size) -> torch.Tensor:
    """(n, H, W) soft masks: grids upsampled bilinearly to (s+1)·cell, cropped at (dy, dx)."""
    H, W = size
    n, s = grid.shape[0], grid.shape[1]
    ch, cw = math.ceil(H / s), math.ceil(W / s)
    up = F.interpolate(
        grid[:, None], size=((s + 1) * ch, (s + 1) * cw), mode="bilinear", align_corners=False
    )[:, 0]
    rows = (dy[:, None] + torch.arange(H, device=grid.device))[:, :, None].expand(n, H, up.shape[2])
    up = up.gather(1, rows)
    cols = (dx[:, None] + torch.arange(W, device=grid.device))[:, None, :].expand(n, H, W)
    return up.gather(2, cols).clamp_(0, 1)  # bilinear weights of 0/1 values; clamp float round-off


def rise_pixel_masks(n: int, size, s: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    """(n, H, W) soft RISE masks: s×s Bernoulli(p) grid, bilinear upsampling to (s+1)·cell,
    random-shift crop of size (H, W)."""
    return render_pixel_masks(*rise_grid_draws(n, s, p, size, g, device), size)


@register_method("rise")
class RISE(AttributionMethod):
    """Petsiuk et al. 2018: Σ p_c(masked x) · mask / (N·p) over random masks (see the module docs)."""

    label = "RISE"

    @dataclass(frozen=True)
    class Params:
        n_masks: int = 4000
        s: int = 8
        p: float = 0.5
        mode: str = "auto"
        sampling: str = "independent"

        def __post_init__(self):
            check(
                self.n_masks >= 1 and self.s >= 1 and 0 < self.p <= 1,
                "needs n_masks ≥ 1, s ≥ 1 and 0 < p ≤ 1",
            )
            check(self.mode in MODES, f"unknown mode '{self.mode}'. Valid modes: {', '.join(MODES)}")
            check(
                self.sampling in SAMPLINGS,
                f"unknown sampling '{self.sampling}'. Valid: {', '.join(SAMPLINGS)}",
            )
            check(
                self.sampling != "paired" or self.p == 0.5,
                f"sampling 'paired' needs p = 0.5 (a complement 1 − m keeps each part with probability "
                f"1 − p); got p={self.p}: use sampling 'independent'",
            )

    presets = {"quick": {"n_masks": QUICK_MASKS, "sampling": "paired"}}

    def cost(self, shape):
        kept = (
            shape.kept(shape.num_patches * self.params.p)
            if shape.is_vit and self.params.mode != "pixel"
            else 1.0
        )
        return Cost(forwards=1 + self.params.n_masks * kept)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._memo = None  # the last batch's maps for its target and top-2 classes (see attribute)

    def _mode(self, adapter) -> str:
        mode = self.params.mode
        if mode == "auto":
            return "patch" if adapter.is_vit else "pixel"
        if mode == "patch" and not adapter.is_vit:
            raise UserError(f"rise: mode 'patch' drops ViT tokens; {adapter.name} is a CNN: use mode 'pixel'")
        return mode

    def _check(self):
        return self.params.n_masks, self.params.s, self.params.p, self.params.sampling

    def _memo_key(self, adapter, x, ids):
        versions = sum(t._version for t in adapter.model.parameters())  # in-place weight updates
        return (id(adapter), versions, tuple(ids), repr(sorted(self.settings().items())))

    def attribute(self, adapter, x, target, *, ids, masks=None):
        mode = self._mode(adapter)
        n, s, p, sampling = self._check()
        target = target.to(x.device)
        key = self._memo_key(adapter, x, ids)
        memo = self._memo
        if memo is not None and memo["key"] == key and torch.equal(memo["x"], x):
            hit = memo["classes"] == target[:, None]
            if bool(hit.any(1).all()):
                column = hit.int().argmax(1)  # the first column that holds each image's target
                return Attribution(memo["maps"][torch.arange(len(x)), column], memo["level"])  # a copy
        # explain the target and the clean prediction's top two classes from the same masks: a
        # metric that asks for the second label next (completeness) gets it without new forwards
        with torch.no_grad():
            top2 = adapter.probs(x).topk(min(2, adapter.num_classes), dim=1).indices
        classes = torch.cat([target[:, None], top2], 1)
        maps = self._maps(adapter, x, classes, ids, mode, n, s, p, sampling)
        level = "patch" if mode == "patch" else "pixel"
        self._memo = {"key": key, "x": x.detach().clone(), "classes": classes, "maps": maps, "level": level}
        return Attribution(maps[:, 0].clone(), level)  # not a view of the kept maps

    def _maps(self, adapter, x, classes, ids, mode, n, s, p, sampling):
        """RISE maps (B, K, *map) of the classes ``classes`` (B, K) of every image."""
        B, K = classes.shape
        gens = [generator(self.seed, i, "rise", device=x.device) for i in ids]
        shape = adapter.grid if mode == "patch" else adapter.input_size
        draws = -(-n // 2) if sampling == "paired" else n  # paired: m_1, 1 − m_1, m_2, 1 − m_2, …
        if mode == "patch":
            keep = torch.stack(
                [torch.rand(draws, adapter.num_patches, generator=g, device=x.device) < p for g in gens]
            )
            if sampling == "paired":
                keep = torch.stack([keep, ~keep], 2).flatten(1, 2)[:, :n]
        else:
            grids, dys, dxs = (
                torch.stack(d) for d in zip(*[rise_grid_draws(draws, s, p, shape, g, x.device) for g in gens])
            )
        rows = adapter.budget.rows()
        # token-dropped passes hold rows of one kept count: a call must hold many passes' worth
        # of rows (its boolean masks are small) for the engine to fill each pass
        step = max(1, (rows * DROP_PASSES_PER_CALL if mode == "patch" else rows) // B)
        sal = torch.zeros(B, K, *shape, device=x.device)
        for start in range(0, n, step):
            index = torch.arange(start, min(n, start + step), device=x.device)
            if mode == "patch":
                chunk = keep[:, index]
                probs = adapter.masked_probs(x, chunk, "drop", ids=ids)
                chunk = chunk.float()
            else:
                base = index // 2 if sampling == "paired" else index
                chunk = render_pixel_masks(
                    grids[:, base].flatten(0, 1), dys[:, base].flatten(), dxs[:, base].flatten(), shape
                ).view(B, len(index), *shape)
                if sampling == "paired":
                    chunk = torch.where((index % 2 == 1).view(1, -1, 1, 1), 1 - chunk, chunk)
                probs = adapter.masked_probs(x, chunk, "mean", ids=ids)
            for k in range(K):  # one product per class, the same op whichever class it is
                scores = probs.gather(2, classes[:, None, k : k + 1].expand(-1, len(index), 1))[..., 0]
                sal[:, k] += torch.einsum("bm,bm...->b...", scores, chunk).view(B, *shape)
        return sal / (n * p)

    def notes(self):
        sampling, n = self.params.sampling, self.params.n_masks
        caveat = (
            "only ~12 of the 64 patches change the tiny ViT's prediction detectably; the others have "
            "equal true RISE values, so their order is seed noise at any number of masks: read RISE "
            "maps by their largest values, not as full rankings"
        )
        if (sampling, n) in MEASURED_AGREEMENT:
            rho, r = MEASURED_AGREEMENT[(sampling, n)]
            return [
                f"RISE with {n} {sampling} masks: two mask seeds agree at Spearman {rho:.2f} "
                f"(Pearson {r:.2f}) over the patches on the embedded default (synthetic); {caveat}"
            ]
        return [f"RISE: on the embedded default (synthetic), {caveat}"]
