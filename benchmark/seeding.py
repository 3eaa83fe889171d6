"""Seeded random generators.

Every random draw in xaibench comes from a generator keyed by (global seed, image id,
purpose): the numbers an image gets do not depend on which batch it is in, on the
batch size, or on what ran before. Draws made on different devices (CPU vs CUDA)
differ, since torch's generators differ by device.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, List, Sequence

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit integer derived from ``seed`` and any keys (stable across processes)."""
    text = "\x1f".join([str(int(seed)), *map(str, keys)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator(seed: int, *keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded by (seed, *keys), e.g. (seed, image_id, "rise")."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def image_generators(
    seed: int, ids: Sequence[str], purpose: str, device: torch.device | str = "cpu"
) -> List[torch.Generator]:
    """One generator per image id for ``purpose``."""
    return [generator(seed, i, purpose, device=device) for i in ids]


def per_image(draw, gens: Iterable[torch.Generator]) -> torch.Tensor:
    """Stack ``draw(g)`` over per-image generators: the batched result equals the one-by-one result."""
    return torch.stack([draw(g) for g in gens])
