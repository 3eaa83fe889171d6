"""Class activation maps through pytorch-grad-cam: GradCAM and EigenCAM.

The target layer and (for ViTs) the prefix-aware token → grid reshape come from the adapter
(``gradcam_target_layers`` / ``gradcam_reshape_transform``: ViT ``blocks[-1].norm1`` with all
prefix tokens (CLS, registers) dropped; CNN: the last stage). The CAM object is used as a
context manager so its hooks are released after every batch.

Note: pytorch-grad-cam returns maps that are ReLU'd, min-max scaled to [0, 1] per image and
resized (bilinear, OpenCV) to the input size; those are the maps these methods return
(pixel level). The classifier's outputs are restricted to the task's classes by the adapter.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from xaibench.attribution import Attribution
from xaibench.cost import Cost

from .base import AttributionMethod, Requires, register_method


class _Logits(nn.Module):
    """The adapter's logits (restricted to the task's classes) as a module for pytorch-grad-cam."""

    def __init__(self, adapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._adapter.logits(x)


class _CAM(AttributionMethod):
    cam_class: str = ""

    def attribute(self, adapter, x, target, *, ids, masks=None):
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = getattr(pytorch_grad_cam, self.cam_class)
        targets = [ClassifierOutputTarget(int(t)) for t in target.tolist()]
        with cls(
            model=_Logits(adapter),
            target_layers=adapter.gradcam_target_layers(),
            reshape_transform=adapter.gradcam_reshape_transform(),
        ) as cam:
            maps = cam(input_tensor=x, targets=targets)
        adapter.zero_grad()
        return Attribution(torch.from_numpy(maps).to(x.device), "pixel")


@register_method("gradcam")
class GradCAM(_CAM):
    """Selvaraju et al. 2017: ReLU(Σ_k mean_{ij}(∂ logit_c/∂A^k_{ij}) · A^k) at the target layer."""

    label = "GradCAM"
    requires = Requires(gradients=True)
    cam_class = "GradCAM"


@register_method("eigencam")
class EigenCAM(_CAM):
    """Muhammad & Yeasin 2020: projection of the target layer's activations on their first
    principal component (class-agnostic: the target does not change the map; no gradients)."""

    label = "EigenCAM"

    def cost(self, shape):
        return Cost(forwards=1)

    cam_class = "EigenCAM"
    class_dependent = False  # the principal component of the activations ignores the target
