"""RISE (Petsiuk et al. 2018): randomised input sampling.

saliency = Σ_i p_c(x with mask m_i) · m_i / (N · p), every masked input scored through the
one removal operation (``adapter.masked_probs``, target column only, chunked to the memory
budget).

Two mask families (``mode``):

- ``pixel`` (the paper; CNNs by default): an s×s grid of cells kept with probability p,
  upsampled bilinearly to (s+1)·cell and cropped at a random shift in [0, cell) per axis;
  soft pixel masks; removed pixels take the dataset mean (0 in normalised space, the
  removal ``mean``; the paper multiplies by the mask, i.e. fills black).
- ``patch`` (ViTs by default, SPEC §5): each patch token kept with probability p and removed
  exactly by token dropping (removal ``drop``); the map is at patch level.

Masks are generated on the adapter's device, ``mask_batch`` at a time per image, each image's
masks from its own generator ``seeding.generator(seed, id, "rise")``: an image gets the same
masks in any batch. Paper defaults N = 4000, s = 8, p = 0.5; ``quick`` (embedded default run):
N = 384 (token-dropped forwards of the 64-patch tiny ViT, ~1/6 of a forward+backward each), to
stay within the 2-core CPU time budget; its maps are correspondingly noisier.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xaibench.attribution import Attribution
from xaibench.errors import UserError
from xaibench.seeding import generator

from .base import AttributionMethod, register_method

MODES = ("auto", "pixel", "patch")


def rise_pixel_masks(n: int, size, s: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    """(n, H, W) soft RISE masks: s×s Bernoulli(p) grid, bilinear upsampling to (s+1)·cell,
    random-shift crop of size (H, W)."""
    H, W = size
    ch, cw = math.ceil(H / s), math.ceil(W / s)
    grid = (torch.rand(n, 1, s, s, generator=g, device=device) < p).float()
    up = F.interpolate(grid, size=((s + 1) * ch, (s + 1) * cw), mode="bilinear", align_corners=False)[:, 0]
    dy = torch.randint(0, ch, (n,), generator=g, device=device)
    dx = torch.randint(0, cw, (n,), generator=g, device=device)
    rows = (dy[:, None] + torch.arange(H, device=device))[:, :, None].expand(n, H, up.shape[2])
    up = up.gather(1, rows)
    cols = (dx[:, None] + torch.arange(W, device=device))[:, None, :].expand(n, H, W)
    return up.gather(2, cols).clamp_(0, 1)  # bilinear weights of 0/1 values; clamp float round-off


@register_method("rise")
class RISE(AttributionMethod):
    """Petsiuk et al. 2018: Σ p_c(masked x) · mask / (N·p) over random masks (see the module docs)."""

    label = "RISE"
    defaults = {"n_masks": 4000, "s": 8, "p": 0.5, "mode": "auto", "mask_batch": 250}
    presets = {"quick": {"n_masks": 384, "mask_batch": 128}}

    def _mode(self, adapter) -> str:
        mode = self.params["mode"]
        if mode not in MODES:
            raise UserError(f"rise: unknown mode '{mode}'. Valid modes: {', '.join(MODES)}")
        if mode == "auto":
            return "patch" if adapter.is_vit else "pixel"
        if mode == "patch" and not adapter.is_vit:
            raise UserError(f"rise: mode 'patch' drops ViT tokens; {adapter.name} is a CNN: use mode 'pixel'")
        return mode

    def attribute(self, adapter, x, target, *, ids, masks=None):
        mode = self._mode(adapter)
        n, step, s, p = (
            int(self.params["n_masks"]),
            int(self.params["mask_batch"]),
            int(self.params["s"]),
            float(self.params["p"]),
        )
        if n < 1 or step < 1 or s < 1 or not 0 < p <= 1:
            raise UserError(
                f"rise: need n_masks ≥ 1, mask_batch ≥ 1, s ≥ 1 and 0 < p ≤ 1; got "
                f"n_masks={n}, mask_batch={step}, s={s}, p={p}"
            )
        gens = [generator(self.seed, i, "rise", device=x.device) for i in ids]
        shape = adapter.grid if mode == "patch" else adapter.input_size
        sal = torch.zeros(x.shape[0], *shape, device=x.device)
        for start in range(0, n, step):
            m = min(step, n - start)
            if mode == "patch":
                keep = torch.stack(
                    [torch.rand(m, adapter.num_patches, generator=g, device=x.device) < p for g in gens]
                )
                scores = adapter.masked_probs(x, keep, "drop", ids=ids, target=target)
                sal += torch.einsum("bm,bmp->bp", scores, keep.float()).view_as(sal)
            else:
                keep = torch.stack([rise_pixel_masks(m, shape, s, p, g, x.device) for g in gens])
                scores = adapter.masked_probs(x, keep, "mean", ids=ids, target=target)
                sal += torch.einsum("bm,bmhw->bhw", scores, keep)
        return Attribution(sal / (n * p), "patch" if mode == "patch" else "pixel")
