"""Sampling methods under the adapter's memory budget.

Budget: every method that batches samples (noisy copies, integration steps, suppressed copies,
masks, distractor blends) must keep each pass within ``adapter.budget`` and give the same maps
whatever the budget. The maps are compared with those of the unbounded path (one pass); they
agree to float32 round-off only, because a different split changes the order in which the
per-pass sums are accumulated (and the batch shape the model's kernels see); mask optimisation
is checked separately: each image's blends go through in one pass whenever the budget holds them
(then the maps are bit-for-bit those of the unbounded path), and a smaller budget splits them,
which changes the step's gradient at float round-off only — but Adam's normalised steps amplify
round-off in near-zero gradient entries, so there the maps are not compared to a float tolerance.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_cnn, make_tiny_vit

from xaibench.methods import FitContext, create_method

SAMPLING = {  # method: (small settings, backward passes?)
    "saliency": ({}, True),
    "smoothgrad": ({"n_samples": 5}, True),
    "integrated_gradients": ({"n_steps": 6}, True),
    "feature_suppression": ({"n_samples": 5}, True),
    "rise": ({"n_masks": 24}, False),
}


def _inputs(n=3, size=32, seed=4):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 3, size, size, generator=g),
        torch.tensor([1, 4, 7][:n]),
        [f"b{i}" for i in range(n)],
    )


def _method(name, adapter, **params):
    small = {**{k: v[0] for k, v in SAMPLING.items()}, "mask_optimisation": {"steps": 3, "n_distractors": 3}}
    method = create_method(name, preset="quick", **{**small.get(name, {}), **params})
    if method.requires.distractors:
        pool = torch.randn(8, 3, *adapter.input_size, generator=torch.Generator().manual_seed(9))
        method.fit(adapter, None, FitContext(cache_dir="unused", distractors=pool))
    return method


def _set_rows(adapter, rows, backward):
    """Set the budget so that exactly ``rows`` inputs fit one pass."""
    per_input = adapter.budget.bytes_per_input(backward)
    adapter.budget.megabytes = (rows + 0.5) * per_input / 2**20
    assert adapter.budget.rows(backward) == rows


class _PassSizes:
    """Records the inputs of every pass through the model: images for CNNs (model forward),
    token rows (rows × sequence length) for ViTs (first block), since token dropping packs more
    shorter sequences into one pass."""

    def __init__(self, adapter):
        self.sizes = []
        if adapter.is_vit:
            module = adapter.model.blocks[0]
            self.tokens = adapter.num_prefix_tokens + adapter.num_patches
            self.handle = module.register_forward_pre_hook(
                lambda _m, a: self.sizes.append(a[0].shape[0] * a[0].shape[1])
            )
        else:
            self.tokens = 1
            self.handle = adapter.model.register_forward_pre_hook(
                lambda _m, a: self.sizes.append(a[0].shape[0])
            )

    def largest(self) -> float:
        """Largest pass, in full inputs."""
        return max(self.sizes) / self.tokens


@pytest.mark.parametrize("arch", ["vit", "cnn"])
@pytest.mark.parametrize("name", sorted(SAMPLING))
def test_maps_do_not_depend_on_the_budget(name, arch):
    adapter = make_tiny_vit() if arch == "vit" else make_tiny_cnn()
    method = _method(name, adapter)
    backward = SAMPLING[name][1]
    x, target, ids = _inputs()
    # the unbounded path: the default budget fits every input of the batch in one pass
    assert adapter.budget.rows(backward) >= 3 * 24
    record = _PassSizes(adapter)
    free = method.attribute(adapter, x, target, ids=ids).maps
    passes_free = len(record.sizes)
    record.sizes.clear()
    rows = 2
    _set_rows(adapter, rows, backward)
    bounded = _method(name, adapter).attribute(adapter, x, target, ids=ids).maps  # fresh: no memo (RISE)
    record.handle.remove()
    assert len(record.sizes) > passes_free  # the small budget really split the work
    if name == "rise":  # ⌊rows / B⌋ masks per image and call, at least one: at most max(rows, B) inputs
        assert record.largest() <= max(rows, len(x))
    else:
        assert record.largest() <= rows
    scale = free.abs().max().clamp_min(1e-12)
    err = float((bounded - free).abs().max() / scale)
    assert err <= 1e-5, f"{name}: bounded vs unbounded differ by {err:.2e} of the range"


def test_integrated_gradients_budget_counts_images_times_steps():
    """captum's internal batch counts images × steps: with room for 8 inputs and 3 images, a pass
    holds 3 images × 2 steps (6 inputs); with room for 2 inputs, 2 images × 1 step (captum never
    runs fewer than one step of every image it is given, so the method splits the images)."""
    adapter = make_tiny_cnn()
    x, target, ids = _inputs()
    record = _PassSizes(adapter)
    for rows, largest in ((8, 6), (2, 2)):
        _set_rows(adapter, rows, backward=True)
        record.sizes.clear()
        create_method("integrated_gradients", n_steps=6).attribute(adapter, x, target, ids=ids)
        assert max(record.sizes) == largest
    record.handle.remove()


def test_mask_optimisation_batch_equals_single_bit_for_bit():
    """Each image is optimised alone (same shapes whatever the batch), so a batch gives exactly the
    maps of its images explained one at a time — also with a budget that splits the distractors."""
    for adapter in (make_tiny_vit(), make_tiny_cnn()):
        method = _method("mask_optimisation", adapter, steps=6, n_distractors=3)
        x, target, ids = _inputs()
        for rows in (None, 2):
            if rows:
                _set_rows(adapter, rows, backward=True)
            batched = method.attribute(adapter, x, target, ids=ids).maps
            history = method.history
            singles, histories = [], []
            for i in range(3):
                singles.append(
                    method.attribute(adapter, x[i : i + 1], target[i : i + 1], ids=ids[i : i + 1]).maps
                )
                histories.append(method.history)
            assert torch.equal(batched, torch.cat(singles))
            assert history == pytest.approx([sum(h) for h in zip(*histories)], rel=1e-6)


@pytest.mark.parametrize("arch", ["vit", "cnn"])
def test_mask_optimisation_under_the_budget(arch):
    adapter = make_tiny_vit() if arch == "vit" else make_tiny_cnn()
    method = _method("mask_optimisation", adapter, steps=4, n_distractors=3)
    x, target, ids = _inputs()
    record = _PassSizes(adapter)
    free = method.attribute(adapter, x, target, ids=ids).maps
    assert record.largest() == 3  # one pass per image and step: its 3 blends
    # a budget that still holds one image's blends: the same passes, the same bits
    _set_rows(adapter, 3, backward=True)
    same = method.attribute(adapter, x, target, ids=ids)
    assert torch.equal(same.maps, free) and same.meta["blends_per_pass"] == 3
    # a budget below the blends splits them (2 + 1): the step's objective and gradient (the sum of
    # the passes' gradients over the sum of their probabilities) equal the one-pass ones to round-off
    w = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    bg = method.distractors[:3]
    loss_one, grad_one = method._loss_and_grad(adapter, x[:1], target[0], w, bg)
    _set_rows(adapter, 2, backward=True)
    record.sizes.clear()
    loss_split, grad_split = method._loss_and_grad(adapter, x[:1], target[0], w, bg)
    assert sorted(record.sizes) == sorted([2 * record.tokens, 1 * record.tokens])
    record.handle.remove()
    assert method.attribute(adapter, x[:1], target[:1], ids=ids[:1]).meta["blends_per_pass"] == 2
    assert float(loss_split) == pytest.approx(float(loss_one), rel=1e-6)
    assert float((grad_split - grad_one).abs().max()) <= 1e-5 * float(grad_one.abs().max())
    # and the gradient is the objective's: compare with autograd through −log(mean p) + regulariser
    M = torch.nn.functional.interpolate(w.sigmoid()[:, None], size=(32, 32), mode="bilinear")[:, 0]
    with torch.enable_grad():
        mixed = M[:, None] * x[:1] + (1 - M[:, None]) * bg
        p = adapter.logits(mixed).softmax(-1)[:, int(target[0])].mean()
        direct = -torch.log(p) + method.regulariser(M).sum()
        (grad_direct,) = torch.autograd.grad(direct, w)
    assert float(direct.detach()) == pytest.approx(float(loss_one), rel=1e-5)
    assert float((grad_direct - grad_one).abs().max()) <= 1e-4 * float(grad_one.abs().max())
