"""A plugin module as a user would write one: a tiny model recipe (trains in seconds) and a method.

Loaded by the tests with ``--plugin plugin_tiny`` (tests/ is on ``sys.path`` under pytest and
is added to ``PYTHONPATH`` for the subprocess tests).
"""

import torch

from xaibench.attribution import Attribution
from xaibench.methods import AttributionMethod, Requires, register_method
from xaibench.models import ClassifierRecipe
from xaibench.registry import MODELS


@MODELS.register("tiny_test_vit", overwrite=True)
def tiny_test_vit() -> ClassifierRecipe:
    """One-block ViT for synthetic, trained for one epoch on 256 images (tests only)."""
    return ClassifierRecipe(
        "vit",
        dict(
            patch_size=16,
            embed_dim=32,
            depth=1,
            num_heads=2,
            mlp_ratio=2.0,
            reg_tokens=2,
            no_embed_class=True,
            global_pool="token",
        ),
        dataset_options=dict(n_train=256, n_val=64, n_test=64),
        epochs=1,
        batch_size=64,
    )


@register_method("grad_x_input_test", overwrite=True)
class GradXInputTest(AttributionMethod):
    """Gradient × input summed over channels (a user's plugin method)."""

    requires = Requires(gradients=True)

    def attribute(self, adapter, x, target, *, ids, masks=None):
        x = x.clone().requires_grad_(True)
        score = adapter.logits(x).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
        return Attribution((grad * x).sum(1).detach(), "pixel")


@register_method("nan_some_test", overwrite=True)
class NanSomeTest(AttributionMethod):
    """A broken method: NaN maps for the images whose id ends in an even digit, random elsewhere."""

    def attribute(self, adapter, x, target, *, ids, masks=None):
        g = torch.Generator().manual_seed(0)
        maps = torch.rand(len(ids), *adapter.grid, generator=g)
        for i, image_id in enumerate(ids):
            if int(image_id[-1]) % 2 == 0:
                maps[i, 0, 0] = float("nan")
        return Attribution(maps, "patch")


@register_method("nan_all_test", overwrite=True)
class NanAllTest(AttributionMethod):
    """A broken method: every map is infinite."""

    def attribute(self, adapter, x, target, *, ids, masks=None):
        return Attribution(torch.full((len(ids), *adapter.grid), float("inf")), "patch")
