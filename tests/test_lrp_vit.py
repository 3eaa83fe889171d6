"""ViT LRP, the "transformer attribution" of Chefer, Gur & Wolf, "Transformer Interpretability
Beyond Attention Visualization" (CVPR 2021): relevance conservation, batching, agreement with the
authors' own implementation, and properties that a trivial map (plain attention) lacks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import SYNTH_MEAN, SYNTH_STD, make_tiny_vit

from xaibench.adapter import ModelAdapter
from xaibench.methods import create_method
from xaibench.methods.lrp import matmul_halves, vit_relevance

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "lrp_reference_vit.json"

# Every rule conserves the per-image relevance total in exact arithmetic, up to the stabiliser
# ε = 1e-9 in its divisions: LayerNorm, softmax, GELU, LayerScale pass it; α1β0 gives each
# output's relevance to its positive contributions (biases take none, so the total stays the
# one-hot's 1, not the logit); the renormalised residual additions conserve by construction;
# each operand of a product carries the whole relevance, halved. In float32 the head and the
# pooling keep the total to ~1e-7 (sums of same-sign terms). Inside a block, q·kᵀ scores near
# zero (the near-empty prefix tokens of an untrained model) make S = R / Z large and its
# products cancel, which leaves up to ~1e-4 per block on these models, hence the looser bound.
TOL_HEAD = 1e-5
TOL_BLOCK = 5e-4


def _reference_recipe():
    """``perf/lrp_reference.py`` as a module: the seeded model and inputs of the fixture."""
    spec = importlib.util.spec_from_file_location("lrp_reference", ROOT / "perf" / "lrp_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _adapter(model, name):
    return ModelAdapter(model, mean=SYNTH_MEAN, std=SYNTH_STD, input_size=(32, 32), name=name)


def _avg_pool_vit(seed=3):
    """No CLS token (average pooling + fc_norm), LayerScale, q/k LayerNorms, 4 heads, 3 blocks."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=4,
        mlp_ratio=2.0,
        class_token=False,
        global_pool="avg",
        init_values=0.5,
        qk_norm=True,
        num_classes=7,
    )
    return _adapter(model, "tiny_vit_avg")


MODELS = {
    "cls_and_registers": lambda: make_tiny_vit(),
    "reference": lambda: _adapter(_reference_recipe().build_timm_vit(), "tiny_vit_reference"),
    "avg_pool": _avg_pool_vit,
}


def _batch(adapter, n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return x, torch.randint(0, adapter.num_classes, (n,), generator=g), [f"img{i}" for i in range(n)]


def _total(t):
    return t.flatten(1).double().sum(1)


def _pearson(a, b):
    return torch.stack([torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1] for u, v in zip(a, b)])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_relevance_is_conserved_through_every_block(model):
    adapter = MODELS[model]()
    x, target, _ = _batch(adapter)
    rel = vit_relevance(adapter, x, target)
    ones = torch.ones(len(x), dtype=torch.float64)
    assert torch.allclose(_total(rel.pooled), ones, rtol=0, atol=TOL_HEAD)  # after the head
    assert torch.allclose(_total(rel.tokens), ones, rtol=0, atol=TOL_HEAD)  # after the final LayerNorm
    for block, (r_in, r_out) in enumerate(zip(rel.block_inputs, rel.block_outputs())):
        assert torch.allclose(_total(r_in), _total(r_out), rtol=0, atol=TOL_BLOCK), block
        # the attention probabilities get half of what the attention branch receives
        assert torch.allclose(_total(rel.attn[block]), _total(rel.attn_outputs[block]) / 2, atol=TOL_HEAD)
    # and so the relevance reaching the first block's input is still the target's 1
    assert torch.allclose(_total(rel.block_inputs[0]), ones, rtol=0, atol=len(rel.attn) * TOL_BLOCK)


def test_attention_products_split_relevance_in_halves():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 2, 5, 4, generator=g) + 0.1, torch.rand(3, 2, 4, 6, generator=g) + 0.1
    R = torch.randn(3, 2, 5, 6, generator=g)
    ra, rb = matmul_halves(a, b, R)
    assert ra.shape == a.shape and rb.shape == b.shape
    assert torch.allclose(_total(ra), _total(R) / 2, atol=1e-5)
    assert torch.allclose(_total(rb), _total(R) / 2, atol=1e-5)
    # gradient × input of a: a_ik Σ_j (R_ij / Z_ij) b_kj
    assert torch.allclose(ra, a * ((R / (a @ b)) @ b.transpose(-2, -1)) / 2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_batch_equals_single_images(model):
    adapter = MODELS[model]()
    x, target, ids = _batch(adapter)
    lrp = create_method("lrp")
    batched = lrp.attribute(adapter, x, target, ids=ids).maps
    single = torch.cat(
        [
            lrp.attribute(adapter, x[i : i + 1], target[i : i + 1], ids=ids[i : i + 1]).maps
            for i in range(len(x))
        ]
    )
    assert batched.shape == (len(x), *adapter.grid)
    assert (batched - single).abs().max() <= 1e-5 * batched.abs().max()


@pytest.mark.parametrize("model", ["cls_and_registers", "avg_pool"])
def test_map_is_the_rollout_of_positive_gradient_weighted_relevance(model):
    """The map is row 'CLS' (mean of the patch rows without one) of Π_l (I + mean_h (∇A ⊙ R_A)⁺),
    first block rightmost, over the patch columns only (CLS and registers skipped)."""
    adapter = MODELS[model]()
    x, target, ids = _batch(adapter, n=3)
    maps = create_method("lrp").attribute(adapter, x, target, ids=ids).maps
    rel = vit_relevance(adapter, x, target)
    pre = adapter.num_prefix_tokens
    for b in range(len(x)):
        joint = torch.eye(rel.attn[0].shape[-1])
        for r_a, grad in zip(rel.attn, rel.attn_grads):
            joint = ((grad[b] * r_a[b]).clamp_min(0).mean(0) + torch.eye(len(joint))) @ joint
        row = joint[0] if model == "cls_and_registers" else joint[pre:].mean(0)
        assert torch.allclose(maps[b].flatten(), row[pre:], rtol=1e-5, atol=1e-7)
    assert pre == (3 if model == "cls_and_registers" else 0)


def test_class_indices_select_the_logit_explained(tiny_vit):
    x, target, ids = _batch(tiny_vit, n=3)
    subset = _adapter(tiny_vit.model, "subset")
    subset.class_indices = torch.tensor([7, 2, 5])
    local = torch.tensor([0, 2, 1])
    got = create_method("lrp").attribute(subset, x, local, ids=ids).maps
    want = create_method("lrp").attribute(tiny_vit, x, torch.tensor([7, 5, 2]), ids=ids).maps
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-9)


def test_agrees_with_the_authors_implementation():
    """Maps of the authors' code on the same tiny ViT, recorded by ``perf/lrp_reference.py``."""
    record = json.loads(FIXTURE.read_text())
    recipe = _reference_recipe()
    assert record["config"] == recipe.CONFIG and record["n_images"] == recipe.N_IMAGES
    adapter = _adapter(recipe.build_timm_vit(record["model_seed"]), "tiny_vit_reference")
    x, target = recipe.reference_inputs(record["input_seed"], record["n_images"])
    assert target.tolist() == record["targets"]
    with torch.no_grad():  # the rebuilt model is the one the fixture was made with
        assert torch.allclose(adapter.logits(x), torch.tensor(record["logits"]), atol=1e-4)
    ours = create_method("lrp").attribute(adapter, x, target, ids=[str(i) for i in range(len(x))]).maps
    theirs = torch.tensor(record["maps"]).reshape(ours.shape)
    assert (_pearson(ours, theirs) >= 0.99).all()
    # the same rules give the same numbers, up to float rounding
    scale = theirs.flatten(1).abs().amax(1)
    assert ((ours - theirs).flatten(1).abs().amax(1) <= 1e-3 * scale).all()


@pytest.fixture(scope="module")
def trained_vit(tiny_trained_vit):
    return tiny_trained_vit


def test_map_depends_on_the_class_and_is_not_plain_attention(trained_vit):
    adapter, x, y = trained_vit
    ids = [f"img{i}" for i in range(len(x))]
    maps = create_method("lrp").attribute(adapter, x, y, ids=ids).maps
    other = create_method("lrp").attribute(adapter, x, (y + 5) % 10, ids=ids).maps
    rollout = create_method("attention_rollout").attribute(adapter, x, y, ids=ids).maps
    last = create_method("attention_last").attribute(adapter, x, y, ids=ids).maps
    assert _pearson(maps, other).mean() < 0.8  # another class is explained by other patches
    assert _pearson(maps, rollout).mean() < 0.9
    assert _pearson(maps, last).mean() < 0.9
