"""Reference rows that calibrate every table: a random map and the ground-truth mask."""

from __future__ import annotations

import torch

from xaibench.attribution import Attribution
from xaibench.cost import FREE
from xaibench.seeding import generator

from .base import AttributionMethod, Requires, register_method


@register_method("random")
class Random(AttributionMethod):
    """I.i.d. uniform patch scores, seeded by image id: SRG and R-SRG ≈ 0 in expectation."""

    label = "Random"
    queries_model = False
    class_dependent = False  # seeded by image id only

    def cost(self, shape):
        return FREE

    def attribute(self, adapter, x, target, *, ids, masks=None):
        maps = torch.stack(
            [torch.rand(adapter.grid, generator=generator(self.seed, i, "random")) for i in ids]
        )
        return Attribution(maps.to(x.device), "patch")


@register_method("oracle")
class Oracle(AttributionMethod):
    """The ground-truth object mask as the map (1 inside, 0 outside): RMA = RRA = PxAP = 100."""

    label = "Oracle"
    queries_model = False
    requires = Requires(masks=True)
    class_dependent = False  # the object mask, whatever the class

    def cost(self, shape):
        return FREE

    def attribute(self, adapter, x, target, *, ids, masks=None):
        if masks is None:
            raise ValueError("oracle needs the ground-truth masks of the batch")
        return Attribution(masks.to(x.device).float(), "pixel")
