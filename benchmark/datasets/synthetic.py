"""The embedded default dataset ``synthetic``: generated from a seed, nothing to download.

Each image is 64×64 RGB (``image_size`` scales everything proportionally) and holds one
class-defining object on a random textured background, plus 1–3 distractor objects.

Classes: 5 shapes × 2 colours = 10 classes, ``label = 5 * colour + shape`` with shapes
circle, square, triangle, cross, ring and colours red (220, 30, 30), blue (30, 60, 220);
names like ``"red_circle"`` and ``"blue_ring"`` (see :data:`CLASSES`). The object has a
random centre (fully inside the image) and size (drawn in a box 14–28 px wide at 64 px),
no rotation (rotated shapes made a tiny ViT learn far slower), and one flat colour per
image: the class colour jittered by at most ±12 per channel.

The background is muted (channels differ by at most 36): a low-frequency grey field, a
faint colour tint and faint stripes or a checker pattern. Distractors are the same five
shapes in colours far from both class colours (green, yellow, cyan, orange, white, black),
of similar sizes, placed so that they keep a gap of at least 2 px from the object's box
(shrinking down to 0.6× over 10 tries if needed; one that still does not fit is dropped,
so ~1% of images end up without a distractor).

Why the answer is known: the label is a function of the object alone. No pixel outside
the object has a colour within the jitter of a class colour, and distractors carry every
shape in non-class colours, so neither shape nor texture elsewhere says anything about
the class. The mask of every image is exactly the object's pixels, so attribution
metrics that need ground truth (RMA, RRA, PxAP, MIF/LIF) can be computed.

Every image is a function of ``(seed, split, index)`` only: image ``i`` is the same
whatever the split's size, and the labels are balanced in consecutive groups of 10.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Tuple

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..seeding import generator
from . import register_dataset
from .base import TensorSplit

SHAPES = ("circle", "square", "triangle", "cross", "ring")
CLASS_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}
CLASSES = [f"{colour}_{shape}" for colour in CLASS_COLOURS for shape in SHAPES]
DISTRACTOR_COLOURS = (
    (40, 170, 60),
    (225, 205, 40),
    (40, 190, 200),
    (240, 140, 30),
    (240, 240, 240),
    (20, 20, 20),
)

COLOUR_JITTER = 12  # per channel, object and distractors
MAX_DISTRACTORS = 3
PLACEMENT_TRIES = 10
MIN_IMAGE_SIZE = 32
_UNIFORMS_PER_IMAGE = 160  # fixed, so that the stream of an image never changes
_RENDER_BATCH = 500  # images rendered at once (bounds memory only)


class InvalidArgument(UserError, ValueError):
    """A bad argument: printed as one line by the CLI, and a ValueError for callers."""


# ---------------------------------------------------------------------------- shapes
# Each shape is a predicate on coordinates (u, v) in units of the object's radius (v points
# down); every shape lies inside the box [-1, 1]^2, so a radius-r object whose centre is at
# least r from the border fits in the image.


def _circle(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return torch.maximum(u.abs(), v.abs()) <= 0.8


def _triangle(u, v):  # isosceles, apex up
    return (v <= 0.8) & (u.abs() <= 0.95 * (v + 0.95) / 1.75)


def _cross(u, v):
    au, av = u.abs(), v.abs()
    return ((au <= 0.28) & (av <= 0.95)) | ((av <= 0.28) & (au <= 0.95))


def _ring(u, v):
    rho2 = u * u + v * v
    return (rho2 <= 1.0) & (rho2 >= 0.55**2)


_SHAPE_FNS = (_circle, _square, _triangle, _cross, _ring)


def _shape_masks(shape, cx, cy, radius, size: int) -> torch.Tensor:
    """Boolean masks (N, size, size) of N shapes given per-shape parameters (N,)."""
    coords = torch.arange(size, dtype=torch.float32)
    masks = torch.zeros(shape.shape[0], size, size, dtype=torch.bool)
    for index, shape_fn in enumerate(_SHAPE_FNS):
        chosen = shape == index
        if chosen.any():
            r = radius[chosen].view(-1, 1, 1)
            u = (coords.view(1, 1, -1) - cx[chosen].view(-1, 1, 1)) / r  # (k, 1, size)
            v = (coords.view(1, -1, 1) - cy[chosen].view(-1, 1, 1)) / r  # (k, size, 1)
            masks[chosen] = shape_fn(u, v)
    return masks


# ---------------------------------------------------------------------- parameters


class _Uniforms:
    """Hands out consecutive columns of a (N, K) matrix of uniforms, reshaped."""

    def __init__(self, uniforms: torch.Tensor) -> None:
        self.uniforms, self.used = uniforms, 0

    def take(self, *shape: int) -> torch.Tensor:
        count = math.prod(shape)
        if self.used + count > self.uniforms.shape[1]:
            raise AssertionError("synthetic: _UNIFORMS_PER_IMAGE is too small")
        out = self.uniforms[:, self.used : self.used + count]
        self.used += count
        return out.reshape(-1, *shape)


def _image_uniforms(seed: int, split: str, start: int, stop: int) -> torch.Tensor:
    return torch.stack(
        [
            torch.rand(_UNIFORMS_PER_IMAGE, generator=generator(seed, "synthetic", split, i))
            for i in range(start, stop)
        ]
    )


def _labels(seed: int, split: str, n: int) -> torch.Tensor:
    """Each consecutive group of 10 images holds every class once, in a seeded order."""
    groups = [
        torch.randperm(len(CLASSES), generator=generator(seed, "synthetic", split, "labels", g))
        for g in range(-(-n // len(CLASSES)))
    ]
    return torch.cat(groups)[:n]


def _radius(u: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * (7.0 + 7.0 * u)  # 14-28 px across at 64 px


def _jittered(base: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    jitter = (u * (2 * COLOUR_JITTER + 1)).floor().clamp(max=2 * COLOUR_JITTER) - COLOUR_JITTER
    return (base.float() + jitter).to(torch.uint8)


def _object_params(draw: _Uniforms, labels: torch.Tensor, size: int) -> dict:
    scale = size / 64
    radius = _radius(draw.take(1)[:, 0], scale)
    cx, cy = (radius + u * (size - 1 - 2 * radius) for u in draw.take(2).unbind(1))
    class_colours = torch.tensor(list(CLASS_COLOURS.values()))
    return dict(
        shape=labels % len(SHAPES),
        cx=cx,
        cy=cy,
        radius=radius,
        colour=_jittered(class_colours[labels // len(SHAPES)], draw.take(3)),
    )


def _distractor_params(draw: _Uniforms, obj: dict, size: int) -> dict:
    """Parameters (N, MAX_DISTRACTORS) of distractors, with ``present`` False for dropped ones."""
    n, d, scale = obj["cx"].shape[0], MAX_DISTRACTORS, size / 64
    count = 1 + (draw.take(1) * d).long().clamp(max=d - 1)
    shape = (draw.take(d) * len(SHAPES)).long().clamp(max=len(SHAPES) - 1)
    palette = torch.tensor(DISTRACTOR_COLOURS)
    colour = _jittered(
        palette[(draw.take(d) * len(palette)).long().clamp(max=len(palette) - 1)], draw.take(d, 3)
    )
    radius = _radius(draw.take(d), scale)
    # candidate placements (N, d, tries), shrinking a little from try to try so that
    # most fit beside a large object; the first one clear of the object's box wins
    tries = draw.take(d, PLACEMENT_TRIES, 2)
    r = radius.unsqueeze(-1) * torch.linspace(1.0, 0.6, PLACEMENT_TRIES)
    cx, cy = (r + tries[..., k] * (size - 1 - 2 * r) for k in (0, 1))
    margin = max(2.0, 2 * scale)
    clearance = r + obj["radius"].view(n, 1, 1) + margin
    clear = ((cx - obj["cx"].view(n, 1, 1)).abs() > clearance) | (
        (cy - obj["cy"].view(n, 1, 1)).abs() > clearance
    )
    first = clear.float().argmax(-1, keepdim=True)
    present = clear.any(-1) & (torch.arange(d).view(1, d) < count)
    cx, cy, radius = (t.gather(-1, first)[..., 0] for t in (cx, cy, r))
    return dict(shape=shape, cx=cx, cy=cy, radius=radius, colour=colour, present=present)


# ----------------------------------------------------------------------- rendering


def _background(draw: _Uniforms, size: int) -> torch.Tensor:
    """Muted textured backgrounds, float (N, 3, size, size) in [0, 255]."""
    scale = size / 64
    up = functools.partial(F.interpolate, size=(size, size), mode="bilinear", align_corners=False)
    grey = up(70.0 + 110.0 * draw.take(1, 4, 4))
    tint = up(36.0 * (draw.take(3, 3, 3) - 0.5))  # channels differ by at most 36
    n = grey.shape[0]
    is_checker, amplitude, period, angle, phase_x, phase_y = (
        c.view(n, 1, 1, 1) for c in draw.take(6).unbind(1)
    )
    is_checker = is_checker < 0.5
    amplitude, period = 8.0 + 17.0 * amplitude, scale * (6.0 + 10.0 * period)
    angle, phase_x, phase_y = math.pi * angle, 2 * math.pi * phase_x, 2 * math.pi * phase_y
    coords = torch.arange(size, dtype=torch.float32)
    x, y = coords.view(1, 1, 1, -1), coords.view(1, 1, -1, 1)
    along = (x * angle.cos() + y * angle.sin()) * (2 * math.pi / period)
    across = (y * angle.cos() - x * angle.sin()) * (2 * math.pi / period)
    stripes = torch.sin(along + phase_x)
    checker = torch.sign(torch.sin(along + phase_x) * torch.sin(across + phase_y))
    pattern = torch.where(is_checker, checker, stripes)
    return (grey + tint + amplitude * pattern).clamp(0, 255)


def _paint(canvas: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.unsqueeze(1), colour.view(-1, 3, 1, 1), canvas)


def _render(uniforms: torch.Tensor, labels: torch.Tensor, size: int):
    draw = _Uniforms(uniforms)
    obj = _object_params(draw, labels, size)
    distractors = _distractor_params(draw, obj, size)
    canvas = _background(draw, size).round().to(torch.uint8)
    for k in range(MAX_DISTRACTORS):
        p = {name: value[:, k] for name, value in distractors.items()}
        mask = _shape_masks(p["shape"], p["cx"], p["cy"], p["radius"], size)
        canvas = _paint(canvas, mask & p["present"].view(-1, 1, 1), p["colour"])
    mask = _shape_masks(obj["shape"], obj["cx"], obj["cy"], obj["radius"], size)
    return _paint(canvas, mask, obj["colour"]), mask


# -------------------------------------------------------------------------- public


def _check_integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_count(name: str, value, minimum: int = 1) -> int:
    value = _check_integer(name, value)
    if value < minimum:
        raise InvalidArgument(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_args(seed, split: str, image_size) -> Tuple[int, int]:
    """Validated (seed, image_size)."""
    if split not in ("train", "val", "test"):
        raise InvalidArgument(f"split must be 'train', 'val' or 'test', got {split!r}")
    return _check_integer("seed", seed), _check_count("image_size", image_size, MIN_IMAGE_SIZE)


def generate(
    n: int, seed: int, split: str, image_size: int = 64
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` images of a split: images uint8 (n, 3, H, W), labels int64 (n,),
    masks bool (n, H, W) of the class-defining object."""
    n = _check_count("n", n)
    seed, image_size = _check_args(seed, split, image_size)
    labels = _labels(seed, split, n)
    images, masks = [], []
    for start in range(0, n, _RENDER_BATCH):
        stop = min(n, start + _RENDER_BATCH)
        batch_images, batch_masks = _render(
            _image_uniforms(seed, split, start, stop), labels[start:stop], image_size
        )
        images.append(batch_images)
        masks.append(batch_masks)
    return torch.cat(images), labels, torch.cat(masks)


@functools.lru_cache(maxsize=8)
def _generate_cached(n: int, seed: int, split: str, image_size: int):
    return generate(n, seed, split, image_size)


@register_dataset("synthetic")
def load_synthetic(
    split: str,
    *,
    seed: int = 0,
    n_train: int = 6000,
    n_val: int = 1000,
    n_test: int = 1000,
    image_size: int = 64,
    **_ignored,
) -> TensorSplit:
    """A split of the synthetic dataset (cached in-process; treat its tensors as read-only)."""
    sizes = {
        name: _check_count(f"n_{name}", n)
        for name, n in (("train", n_train), ("val", n_val), ("test", n_test))
    }
    seed, image_size = _check_args(seed, split, image_size)
    n = sizes[split]
    images, labels, masks = _generate_cached(n, seed, split, image_size)
    ids = [f"synthetic-{split}-{i:05d}" for i in range(n)]
    return TensorSplit("synthetic", split, CLASSES, images, labels, ids, masks)
