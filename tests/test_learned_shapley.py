"""Fast exact-Shapley check of the learned explainers on a 4-patch game (the 16-patch version is
perf/bench_exact_shapley.py): trained on a few images, their maps must match the exact Shapley
values of the surrogate's removal game, computed by enumerating all 2^4 subsets."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vit

from xaibench.datasets import load_dataset
from xaibench.methods import FitContext, create_method
from xaibench.methods.learned import surrogate
from xaibench.methods.learned.exact_shapley import exact_shapley, removal_game

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = dict(epochs=1, steps_per_epoch=120, batch_size=8, masks_per_image=16, lr=3e-3, weight_decay=0.0)


def pearson(a, b):
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def game_setup(tmp_path_factory):
    adapter = make_tiny_vit(img=32, patch=16, depth=1)  # 2×2 = 4 patches
    with torch.no_grad():
        adapter.model.head.weight.mul_(12.0)  # an untrained but far from flat game
    train = load_dataset("synthetic", "train", n_train=8, image_size=32)
    ctx = FitContext(cache_dir=str(tmp_path_factory.mktemp("exact")), preset="quick", progress=False)
    old = surrogate.RECIPES["quick"]
    surrogate.RECIPES["quick"] = surrogate.SurrogateRecipe(
        epochs=1, batch_size=8, masks_per_image=2, lr=1e-4, weight_decay=0.0, steps_per_epoch=1
    )
    try:
        methods = {}
        for name in ("vit_shapley", "salvage"):
            methods[name] = create_method(name, preset="quick", **STEPS)
            methods[name].fit(adapter, train, ctx)
    finally:
        surrogate.RECIPES["quick"] = old
    x = adapter.normalize(torch.stack([train[i].image for i in range(8)]))
    game = removal_game(methods["vit_shapley"].surrogate, x)  # (8, 16, C)
    target = game[:, -1].argmax(1)
    p_c = game[torch.arange(8), :, target]
    exact = {"p": exact_shapley(p_c.T).T, "log_p": exact_shapley(p_c.log().T).T}
    return methods, x, target, exact


def test_removal_game_is_indexed_by_bitmask(game_setup):
    methods, x, _, _ = game_setup
    sur = methods["vit_shapley"].surrogate
    game = removal_game(sur, x[:2])
    keep = torch.tensor([[True, False, True, False]])  # bits 0 and 2 → row 5
    assert torch.allclose(game[:, 5], sur.masked_probs(x[:2], keep[None].expand(2, -1, -1), "drop")[:, 0])
    assert torch.allclose(game[:, -1], sur.probs(x[:2]), atol=1e-5)


def test_vit_shapley_matches_exact_shapley_of_the_probability_game(game_setup):
    methods, x, target, exact = game_setup
    vs = methods["vit_shapley"]
    phi = vs.all_values(x)[torch.arange(8), :, target]
    assert pearson(phi, exact["p"]) >= 0.9
    v_full, v_empty = vs.game_endpoints(x)
    assert torch.allclose(vs.all_values(x).sum(1), v_full - v_empty, atol=1e-4)


def test_salvage_matches_exact_shapley_of_the_log_probability_game(game_setup):
    methods, x, target, exact = game_setup
    phi = methods["salvage"].all_values(x)[torch.arange(8), :, target]
    assert pearson(phi, exact["log_p"]) >= 0.8
