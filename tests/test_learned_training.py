"""Learned explainers: cache keys, resumable training, the algebra of ViT-Shapley and Salvage."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_tiny_vit

from xaibench.datasets import load_dataset
from xaibench.methods import FitContext, create_method
from xaibench.methods.learned import common, surrogate
from xaibench.methods.learned.common import ExplainerRecipe, cache_key
from xaibench.methods.learned.salvage import js_divergence

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "masks_per_image": 4}
TINY_SURROGATE = surrogate.SurrogateRecipe(
    epochs=2, batch_size=4, masks_per_image=2, lr=1e-3, weight_decay=0.0, steps_per_epoch=2
)


@pytest.fixture
def quick_surrogate(monkeypatch):
    monkeypatch.setitem(surrogate.RECIPES, "quick", TINY_SURROGATE)
    monkeypatch.setattr(surrogate, "_LOADED", {})


@pytest.fixture(scope="module")
def train16():
    return load_dataset("synthetic", "train", n_train=16, image_size=32)


def four_patch_vit():
    return make_tiny_vit(img=32, patch=16, depth=1)  # 2×2 = 4 patches


def test_cache_key_depends_on_recipe_seed_and_classifier():
    a = four_patch_vit()
    r = ExplainerRecipe(epochs=1, batch_size=4, masks_per_image=4, lr=1e-3, weight_decay=0.0)
    base = cache_key("vit_shapley", a, r, 0, "synthetic")
    assert base == cache_key("vit_shapley", four_patch_vit(), r, 0, "synthetic")
    assert base != cache_key("vit_shapley", a, dataclasses.replace(r, lr=1e-4), 0, "synthetic")
    assert base != cache_key("vit_shapley", a, dataclasses.replace(r, guided=False), 0, "synthetic")
    assert base != cache_key("vit_shapley", a, r, 1, "synthetic")
    assert base != cache_key("vit_shapley", a, r, 0, "imagenette")
    assert base != cache_key("salvage", a, r, 0, "synthetic")
    assert base != cache_key(
        "vit_shapley", make_tiny_vit(seed=1, img=32, patch=16, depth=1), r, 0, "synthetic"
    )
    m1 = create_method("salvage", preset="quick")
    m2 = create_method("salvage", preset="quick", lr=1e-2)
    assert m1.recipe() != m2.recipe() and m1.recipe() != create_method("salvage", preset="paper").recipe()


def _states(method):
    nets = (
        {"selector": method.selector, "predictor": method.predictor.model}
        if method.name == "comet"
        else {"explainer": method.net}
    )
    return {f"{k}.{n}": t.clone() for k, m in nets.items() for n, t in m.state_dict().items()}


@pytest.mark.parametrize("name", ["salvage", "comet"])
def test_interrupted_training_resumes_to_the_same_weights(
    name, tmp_path, monkeypatch, quick_surrogate, train16
):
    params = (
        dict(TINY) if name != "comet" else {k: TINY[k] for k in ("epochs", "steps_per_epoch", "batch_size")}
    )
    full = create_method(name, preset="quick", **params)
    full.fit(
        four_patch_vit(), train16, FitContext(cache_dir=str(tmp_path / "a"), preset="quick", progress=False)
    )

    real = common.train_epochs

    def interrupted(directory, modules, optimizer, epochs, run_epoch, steps, **kw):
        if kw.get("desc") != "surrogate":
            real(
                directory, modules, optimizer, 1, run_epoch, steps, **kw
            )  # epoch 1 checkpointed, then killed
            raise KeyboardInterrupt
        return real(directory, modules, optimizer, epochs, run_epoch, steps, **kw)

    ctx = FitContext(cache_dir=str(tmp_path / "b"), preset="quick", progress=False)
    monkeypatch.setattr(common, "train_epochs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        create_method(name, preset="quick", **params).fit(four_patch_vit(), train16, ctx)
    monkeypatch.setattr(common, "train_epochs", real)
    directory = next(p for p in (tmp_path / "b").iterdir() if p.name.startswith(name))
    assert (directory / "checkpoint.pt").exists() and not (directory / "weights.pt").exists()
    resumed = create_method(name, preset="quick", **params)
    resumed.fit(four_patch_vit(), train16, ctx)
    assert (directory / "weights.pt").exists() and not (directory / "checkpoint.pt").exists()
    assert len((directory / "log.csv").read_text().strip().splitlines()) == 1 + params["epochs"]
    a, b = _states(full), _states(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a third fit loads the cached weights without training
    again = create_method(name, preset="quick", **params)
    again.fit(four_patch_vit(), train16, ctx)
    assert (
        again.report()["training"].get("cached", again.report()["training"].get("explainer_cached")) is True
    )


def test_vit_shapley_is_efficient_and_salvage_algebra(tmp_path, quick_surrogate, train16):
    adapter = four_patch_vit()
    ctx = FitContext(cache_dir=str(tmp_path), preset="quick", progress=False)
    x = adapter.normalize(torch.stack([train16[i].image for i in range(6)]))
    vs = create_method("vit_shapley", preset="quick", **TINY)
    vs.fit(adapter, train16, ctx)
    phi = vs.all_values(x)
    v_full, v_empty = vs.game_endpoints(x)
    assert phi.shape == (6, 4, 10)
    assert torch.allclose(phi.sum(1), v_full - v_empty, atol=1e-5)
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    att = vs.attribute(adapter, x, target, ids=[str(i) for i in range(6)])
    assert att.level == "patch" and att.maps.shape == (6, 2, 2)
    assert torch.allclose(att.maps.flatten(1), phi[torch.arange(6), :, target])

    sv = create_method("salvage", preset="quick", **TINY)
    sv.fit(adapter, train16, ctx)
    out = sv.net(x).detach()
    plus, minus = out[..., :10], out[..., 10:]
    plus, minus = plus - plus.mean(-1, keepdim=True), minus - minus.mean(-1, keepdim=True)  # class-centred
    assert torch.allclose(sv.split(out)[0], plus) and torch.allclose(sv.split(out)[1], minus)
    keep = torch.tensor([[True, False, True, False]]).expand(6, 1, 4)
    z = sv.shapley_logits(out, keep)[:, 0]
    loop = torch.stack(
        [sum(plus[b, i] if keep[b, 0, i] else minus[b, i] for i in range(4)) for b in range(6)]
    )
    assert torch.allclose(z, loop, atol=1e-5)
    assert torch.allclose(sv.classify(x), plus.sum(1).softmax(-1), atol=1e-6)
    assert torch.allclose(sv.all_values(x), plus - minus, atol=1e-6)
    assert sv.report()["classifying_by_explaining"] == {}


def test_js_divergence_values():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    js = js_divergence(p, q)
    assert torch.allclose(js, torch.tensor([torch.log(torch.tensor(2.0)), 0.0]), atol=1e-6)
    assert torch.allclose(js_divergence(q, p), js)


def test_salvage_head_starts_at_uniform_u_and_still_learns():
    """Salvage zeroes its last layer: u(S) is uniform for every S at initialisation (a random head
    saturates the softmax over many patches), and the zeroed weight still receives gradients."""
    from xaibench.methods.learned.explainer import PatchExplainer

    adapter = four_patch_vit()
    sv = create_method("salvage", preset="quick", **TINY)
    net = PatchExplainer(adapter.model, adapter.num_prefix_tokens, sv.out_dim(10))
    assert net.mlp[-1].weight.abs().sum() > 0
    sv.init_head(net)
    x = adapter.normalize(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    out = net(x)
    assert torch.equal(out, torch.zeros_like(out))
    keep = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(1)) < 0.5
    u = sv.shapley_logits(out, keep).softmax(-1)
    assert torch.allclose(u, torch.full_like(u, 0.1))
    v = torch.softmax(torch.randn(3, 5, 10, generator=torch.Generator().manual_seed(2)), -1)
    sv.loss(out, keep, v, None, None).backward()
    assert net.mlp[-1].weight.grad.abs().sum() > 0


def test_weights_fingerprint_handles_zero_dim_buffers():
    import torch.nn as nn

    from xaibench.methods.learned.common import weights_fingerprint

    bn = nn.BatchNorm2d(3)  # num_batches_tracked is a 0-dim long tensor
    before = weights_fingerprint(bn)
    bn.num_batches_tracked += 1
    assert weights_fingerprint(bn) != before
