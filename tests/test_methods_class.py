"""Class (in)dependence: a method flagged ``class_dependent = False`` must give the same map for
any target (completeness then reuses it for the second label), and class-dependent ones must not."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_cnn, make_tiny_vit

from xaibench.methods import FitContext, create_method
from xaibench.methods.learned.amortized import build_net
from xaibench.methods.learned.comet import Comet, Selector
from xaibench.registry import METHODS

SMALL = {"smoothgrad": {"n_samples": 4}, "integrated_gradients": {"n_steps": 6}, "rise": {"n_masks": 24}}


def _untrained(method, adapter):
    """A learned method with its networks built and seeded but not trained: whether its map can
    depend on the target is a property of the architecture, not of the training."""
    if isinstance(method, Comet):
        method.selector, method.predictor = Selector(8).eval(), adapter
    else:
        method.surrogate = adapter
        method.net = build_net(method, adapter, 0).eval()
    return method


def _method(name, adapter):
    method = create_method(name, preset="quick", **SMALL.get(name, {}))
    if method.requires.training:
        return _untrained(method, adapter)
    if method.requires.distractors:
        pool = torch.randn(8, 3, *adapter.input_size, generator=torch.Generator().manual_seed(9))
        method.fit(adapter, None, FitContext(cache_dir="unused", distractors=pool))
    return method


CLASS_INDEPENDENT = sorted(n for n in METHODS.names() if not METHODS.get(n).class_dependent)


def test_the_class_independent_methods_are_flagged():
    assert {"eigencam", "attention_rollout", "attention_last", "random", "oracle"} <= set(CLASS_INDEPENDENT)


def _two_targets(name):
    adapter = make_tiny_vit(seed=3)
    if METHODS.get(name).requires.cnn:
        adapter = make_tiny_cnn(seed=3)
    method = _method(name, adapter)
    assert method.applies_to(adapter) is None, f"{name}: {method.applies_to(adapter)}"  # the adapter fits it
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ids = ["b0", "b1", "b2"]
    masks = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)) > 0.5
    a = method.attribute(adapter, x, torch.tensor([0, 1, 2]), ids=ids, masks=masks).maps
    b = method.attribute(adapter, x, torch.tensor([5, 6, 9]), ids=ids, masks=masks).maps
    return a, b


@pytest.mark.parametrize("name", CLASS_INDEPENDENT)
def test_class_independent_maps_ignore_the_target(name):
    a, b = _two_targets(name)
    assert a.abs().sum() > 0 and torch.equal(a, b)


@pytest.mark.parametrize(
    "name",
    ["saliency", "gradcam", "integrated_gradients", "rise", "gae", "smoothgrad", "vit_shapley", "salvage"],
)
def test_class_dependent_maps_change_with_the_target(name):
    assert METHODS.get(name).class_dependent
    a, b = _two_targets(name)
    for i in range(3):
        assert not torch.allclose(a[i], b[i], rtol=1e-3, atol=1e-6 * float(a[i].abs().max()))
