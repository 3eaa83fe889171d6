"""Fast exact-Shapley check of the learned explainers on a 4-patch game (the 16-patch version with a
trained classifier is perf/bench_exact_shapley.py): trained on a few images (validated on the same
images), their maps must be closer to the exact Shapley values of the surrogate's removal game —
computed by enumerating all 2^4 subsets — than the cheap baselines: single-patch values
v({i}) − v(∅), leave-one-out values v(N) − v(N∖{i}), and an untrained explainer.

ViT-Shapley estimates the probability game; Salvage (class-centred φ⁺ − φ⁻) the centred
log-probability game log p_c − mean_c' log p_c'. A 4-player weighted least-squares fit with the
Shapley kernel and the efficiency constraint *is* the Shapley value, so ViT-Shapley must be nearly
exact; Salvage fits a logit-additive model, exact only for additive log-games, so it is only
required to be clearly closer than the baselines.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vit

from xaibench.datasets import load_dataset
from xaibench.methods import FitContext, create_method
from xaibench.methods.learned import common, surrogate
from xaibench.methods.learned.amortized import build_net
from xaibench.methods.learned.exact_shapley import exact_shapley, removal_game

pytestmark = pytest.mark.usefixtures("one_thread")

RULE = common.StoppingRule(max_steps=200, eval_every=50, patience=10, val_images=8, val_masks=16)
PARAMS = dict(batch_size=8, masks_per_image=16, lr=5e-3, weight_decay=0.0, mlp_layers=2, mlp_ratio=2.0)
N = 8


def pearson(a, b):
    """Mean over images of the per-image Pearson correlation over patches."""
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def rel_error(a, b):
    """Mean absolute error relative to the mean absolute exact value."""
    return float((a.double() - b).abs().mean() / b.abs().mean())


@pytest.fixture(scope="module")
def game_setup(tmp_path_factory):
    adapter = make_tiny_vit(img=32, patch=16, depth=1)  # 2×2 = 4 patches
    with torch.no_grad():
        adapter.model.head.weight.mul_(12.0)  # an untrained but far from flat game
    train = load_dataset("synthetic", "train", n_train=N, image_size=32)
    ctx = FitContext(cache_dir=str(tmp_path_factory.mktemp("exact")), preset="quick", val_data=train)
    saved = common.STOPPING["quick"], surrogate.RECIPES["quick"]
    common.STOPPING["quick"] = RULE
    surrogate.RECIPES["quick"] = surrogate.SurrogateRecipe(
        batch_size=8, masks_per_image=2, lr=1e-6, weight_decay=0.0
    )
    try:
        methods = {}
        for name in ("vit_shapley", "salvage"):
            methods[name] = create_method(name, preset="quick", freeze_backbone=False, **PARAMS)
            methods[name].fit(adapter, train, ctx)
    finally:
        common.STOPPING["quick"], surrogate.RECIPES["quick"] = saved
    x = adapter.normalize(torch.stack([train[i].image for i in range(N)]))
    p = removal_game(methods["vit_shapley"].surrogate, x)  # (N, 16, C)
    target = p[:, -1].argmax(1)
    rows = torch.arange(N)
    logp = p.double().log()
    games = {
        "p": p[rows, :, target].double(),
        "centred_log_p": (logp - logp.mean(-1, keepdim=True))[rows, :, target],
    }
    untrained = create_method("vit_shapley", preset="quick", freeze_backbone=False, **PARAMS)
    untrained.surrogate = methods["vit_shapley"].surrogate
    untrained.net = build_net(untrained, adapter, 0).eval()
    maps = {name: m.all_values(x)[rows, :, target] for name, m in methods.items()}
    maps["untrained"] = untrained.all_values(x)[rows, :, target]
    return methods, x, target, games, maps


def baselines(v):
    single = 1 << torch.arange(4)
    return {"single_patch": v[:, single] - v[:, :1], "leave_one_out": v[:, -1:] - v[:, 15 ^ single]}


def test_removal_game_is_indexed_by_bitmask(game_setup):
    methods, x, _, _, _ = game_setup
    sur = methods["vit_shapley"].surrogate
    game = removal_game(sur, x[:2])
    keep = torch.tensor([[True, False, True, False]])  # bits 0 and 2 → row 5
    assert torch.allclose(game[:, 5], sur.masked_probs(x[:2], keep[None].expand(2, -1, -1), "drop")[:, 0])
    assert torch.allclose(game[:, -1], sur.probs(x[:2]), atol=1e-5)


def test_baselines_are_not_already_exact(game_setup):
    """The check can fail: the game has interactions, so the baselines are far from the exact values."""
    _, _, _, games, _ = game_setup
    for v in games.values():
        exact = exact_shapley(v.T).T
        assert all(rel_error(b, exact) > 0.25 for b in baselines(v).values())


def test_vit_shapley_matches_exact_shapley_of_the_probability_game(game_setup):
    methods, x, _, games, maps = game_setup
    exact = exact_shapley(games["p"].T).T
    base = baselines(games["p"])
    err = rel_error(maps["vit_shapley"], exact)
    assert err < 0.1 and err < 0.25 * min(rel_error(b, exact) for b in base.values())
    assert pearson(maps["vit_shapley"], exact) >= max(pearson(b, exact) for b in base.values())
    assert rel_error(maps["untrained"], exact) > 0.5 and pearson(maps["untrained"], exact) < 0.9
    vs = methods["vit_shapley"]
    v_full, v_empty = vs.game_endpoints(x)
    assert torch.allclose(vs.all_values(x).sum(1), v_full - v_empty, atol=1e-5)


def test_salvage_is_closer_than_the_baselines_on_the_centred_log_probability_game(game_setup):
    _, _, _, games, maps = game_setup
    exact = exact_shapley(games["centred_log_p"].T).T
    base = baselines(games["centred_log_p"])
    err = rel_error(maps["salvage"], exact)
    assert err < 0.7 * min(rel_error(b, exact) for b in base.values())
    assert pearson(maps["salvage"], exact) > pearson(base["leave_one_out"], exact)
    assert pearson(maps["salvage"], exact) > 0.95
