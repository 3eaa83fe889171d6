"""Learned explainers: the shared stopping rule, verified and locked caches, resumable training,
training seeds, bounded-memory inference, and the algebra of ViT-Shapley and Salvage."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import time

import pytest
import torch
import torch.nn as nn
from conftest import make_tiny_vit

from xaibench.datasets import TensorSplit, load_dataset
from xaibench.methods import FitContext, create_method
from xaibench.methods.learned import common, surrogate
from xaibench.methods.learned.amortized import ExplainerParams, ExplainerRecipe
from xaibench.methods.learned.common import StoppingRule, cache_key, holdout
from xaibench.methods.learned.salvage import js_divergence
from xaibench.params import PRESETS
from xaibench.training import Plateau, train_epochs

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_RULE = StoppingRule(max_steps=4, eval_every=2, patience=5, val_images=3, val_masks=4)
TINY_SURROGATE = surrogate.SurrogateRecipe(batch_size=4, masks_per_image=2, lr=1e-3, weight_decay=0.0)
TINY = {"batch_size": 4, "masks_per_image": 4, "mlp_layers": 2, "mlp_ratio": 1.0}
TINY_COMET = {"batch_size": 4, "selector_width": 4}


@pytest.fixture
def tiny_rules(monkeypatch):
    monkeypatch.setitem(common.STOPPING, "quick", TINY_RULE)
    monkeypatch.setitem(surrogate.RECIPES, "quick", TINY_SURROGATE)


@pytest.fixture(scope="module")
def train16():
    return load_dataset("synthetic", "train", n_train=16, image_size=32)


def four_patch_vit(seed: int = 0):
    return make_tiny_vit(seed=seed, img=32, patch=16, depth=1)  # 2×2 = 4 patches


def ctx_for(path, seed: int = 0, **kw) -> FitContext:
    return FitContext(cache_dir=str(path), preset="quick", seed=seed, **kw)


def _states(method):
    nets = (
        {"selector": method.selector, "predictor": method.predictor.model}
        if method.name == "comet"
        else {"explainer": method.net, "surrogate": method.surrogate.model}
    )
    return {f"{k}.{n}": t.clone() for k, m in nets.items() for n, t in m.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------ fingerprints, keys


def test_tensor_split_fingerprint_is_content_not_name(train16):
    copy = TensorSplit(
        "renamed",
        "train",
        train16.classes,
        train16.images.clone(),
        train16.labels,
        train16.ids,
        train16.masks,
    )
    assert copy.fingerprint() == train16.fingerprint()
    images = train16.images.clone()
    images[3, 1, 5, 7] ^= 1
    changed = TensorSplit(
        "synthetic", "train", train16.classes, images, train16.labels, train16.ids, train16.masks
    )
    assert changed.fingerprint() != train16.fingerprint()
    labels = train16.labels.clone()
    labels[0] = (labels[0] + 1) % 10
    relabelled = TensorSplit(
        "synthetic", "train", train16.classes, train16.images, labels, train16.ids, train16.masks
    )
    assert relabelled.fingerprint() != train16.fingerprint()


def test_image_file_split_fingerprint_hashes_relative_paths_sizes_and_contents(tmp_path):
    from PIL import Image

    from xaibench.datasets.folder import ImageFileSplit, ImageRecord

    def make(root, colour=(10, 20, 30)):
        records = []
        for i, c in enumerate(["a", "b"]):
            (root / c).mkdir(parents=True, exist_ok=True)
            path = root / c / f"{i}.png"
            Image.new("RGB", (8, 8), colour if i == 0 else (200, 100, 0)).save(path)
            records.append(ImageRecord(str(path), i, f"{c}/{i}"))
        return ImageFileSplit("folder", "train", ["a", "b"], records, root=str(root))

    a, b = make(tmp_path / "one"), make(tmp_path / "two")
    assert a.fingerprint() == b.fingerprint()  # the same files under another root
    assert make(tmp_path / "three", colour=(10, 20, 31)).fingerprint() != a.fingerprint()
    c = make(tmp_path / "four")
    c.records = [dataclasses.replace(c.records[0], label=1 - c.records[0].label), c.records[1]]
    assert c.fingerprint() != a.fingerprint()


def test_cache_key_covers_data_content_classifier_recipe_rule_and_seed(train16):
    a = four_patch_vit()
    params = ExplainerParams(batch_size=4, masks_per_image=4, lr=1e-3, weight_decay=0.0)
    r = ExplainerRecipe(params)
    base = cache_key("vit_shapley", a, r, 0, train16, None, TINY_RULE)
    renamed = TensorSplit(
        "other", "train", train16.classes, train16.images, train16.labels, train16.ids, train16.masks
    )
    assert base == cache_key("vit_shapley", four_patch_vit(), r, 0, renamed, None, TINY_RULE)
    images = train16.images.clone()
    images[0, 0, 0, 0] ^= 1
    edited = TensorSplit(
        "synthetic", "train", train16.classes, images, train16.labels, train16.ids, train16.masks
    )
    assert base != cache_key("vit_shapley", a, r, 0, edited, None, TINY_RULE)
    assert base != cache_key(
        "vit_shapley", a, ExplainerRecipe(dataclasses.replace(params, lr=1e-4)), 0, train16, None, TINY_RULE
    )
    assert base != cache_key("vit_shapley", a, dataclasses.replace(r, version=2), 0, train16, None, TINY_RULE)
    assert base != cache_key("vit_shapley", a, r, 1, train16, None, TINY_RULE)
    assert base != cache_key("vit_shapley", a, r, 0, train16, train16, TINY_RULE)
    assert base != cache_key(
        "vit_shapley", a, r, 0, train16, None, dataclasses.replace(TINY_RULE, patience=2)
    )
    assert base != cache_key("salvage", a, r, 0, train16, None, TINY_RULE)
    assert base != cache_key("vit_shapley", four_patch_vit(seed=1), r, 0, train16, None, TINY_RULE)
    m1 = create_method("salvage", preset="quick")
    assert m1.recipe() != create_method("salvage", preset="quick", lr=1e-2).recipe()
    assert m1.recipe() != create_method("salvage", preset="quick", guided=False).recipe()


# ------------------------------------------------------------------------------ the training loop


class Counter(nn.Module):
    """A module whose weight counts the optimiser steps (so restored weights show their epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))


def _counting_epoch(module, opt):
    def run(epoch, g, bar):
        opt.zero_grad()
        (-(module.w * torch.rand(3, generator=g)).sum()).backward()
        opt.step()
        return {"loss": float(epoch)}

    return run


def test_plateau_stops_after_patience_and_restores_the_best_weights(tmp_path):
    m = Counter()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    script = iter([5.0, 4.0, 4.5, 3.999, 4.2, 1.0, 0.5])
    snapshots = []

    def validate():
        snapshots.append(m.w.detach().clone())
        return next(script)

    rows = train_epochs(
        tmp_path, {"m": m}, opt, 7, _counting_epoch(m, opt), 1, seed=0,
        validate=validate, plateau=Plateau(patience=3, min_rel_delta=1e-3),
    )  # fmt: skip
    # 3.999 is not 0.1 % better than 4.0: epochs 3, 4, 5 bring nothing, training stops after epoch 5
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["since_best"] for r in rows] == [0, 0, 1, 2, 3]
    assert rows[-1]["best_epoch"] == 2 and rows[-1]["best_val_loss"] == 4.0
    assert torch.equal(m.w.detach(), snapshots[1])  # the weights validated after epoch 2
    # a second call finds the finished (patience-exhausted) checkpoint and trains no further
    again = train_epochs(
        tmp_path, {"m": m}, opt, 7, _counting_epoch(m, opt), 1, seed=0,
        validate=validate, plateau=Plateau(patience=3, min_rel_delta=1e-3),
    )  # fmt: skip
    assert len(again) == 5 and torch.equal(m.w.detach(), snapshots[1])


def _fresh_counter_run(directory, epochs):
    m = Counter()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    train_epochs(directory, {"m": m}, opt, epochs, _counting_epoch(m, opt), 1, seed=3)
    return m.w.detach().clone()


@pytest.mark.parametrize("damage", ["flip", "truncate", "record"])
def test_damaged_checkpoint_is_discarded_and_training_restarts(tmp_path, caplog, damage):
    reference = _fresh_counter_run(tmp_path / "ref", 3)
    directory = tmp_path / "run"
    _fresh_counter_run(directory, 2)  # two epochs checkpointed, then "killed"
    ckpt = directory / "checkpoint.pt"
    if damage == "flip":
        _flip_byte(ckpt)
    elif damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:-10])
    else:
        (directory / "checkpoint.json").unlink()
    m, opt, seen, run = _recording_counter()
    with caplog.at_level(logging.WARNING, logger="xaibench"):
        rows = train_epochs(directory, {"m": m}, opt, 3, run, 1, seed=3)
    assert seen == [0, 1, 2]  # restarted from the beginning, not from garbage
    assert len(rows) == 3 and torch.equal(m.w.detach(), reference)
    assert sum("checkpoint" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records) == 1


def _recording_counter():
    """A fresh Counter, its optimiser, and an epoch function that records which epochs ran."""
    m = Counter()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    seen = []

    def run(epoch, g, bar):
        seen.append(epoch)
        return _counting_epoch(m, opt)(epoch, g, bar)

    return m, opt, seen, run


def test_intact_checkpoint_resumes(tmp_path):
    reference = _fresh_counter_run(tmp_path / "ref", 3)
    _fresh_counter_run(tmp_path / "run", 2)
    m, opt, seen, run = _recording_counter()
    train_epochs(tmp_path / "run", {"m": m}, opt, 3, run, 1, seed=3)
    assert seen == [2] and torch.equal(m.w.detach(), reference)


def test_batch_stream_is_resumable_and_covers_every_row_once_per_pass():
    rows = torch.arange(10, 20)
    full = torch.cat(list(common.batch_stream(rows, 4, 7, 0, 10)))
    assert torch.equal(torch.cat(list(common.batch_stream(rows, 4, 7, 3, 7))), full[12:])
    for p in range(4):
        assert sorted(full[10 * p : 10 * (p + 1)].tolist()) == list(range(10, 20))
    assert not torch.equal(full, torch.cat(list(common.batch_stream(rows, 4, 8, 0, 10))))


def test_holdout_uses_val_data_when_given_else_a_seeded_part_of_training(train16):
    rule = dataclasses.replace(TINY_RULE, val_images=5)
    h = holdout(train16, ctx_for("x"), rule)
    assert h.source == "train_holdout" and len(h.val_rows) == 1  # at most a tenth of 16
    assert set(h.val_rows.tolist()).isdisjoint(h.train_rows.tolist())
    assert len(h.val_rows) + len(h.train_rows) == 16
    assert torch.equal(h.val_rows, holdout(train16, ctx_for("x"), rule).val_rows)
    others = {tuple(holdout(train16, ctx_for("x", seed=s), rule).val_rows.tolist()) for s in range(6)}
    assert len(others) > 1
    val = load_dataset("synthetic", "val", n_val=8, image_size=32)
    hv = holdout(train16, ctx_for("x", val_data=val), rule)
    assert hv.source == "val_data" and hv.val_split is val and len(hv.val_rows) == 5
    assert torch.equal(hv.train_rows, torch.arange(16))


# ------------------------------------------------------------------------------ learned methods


@pytest.mark.parametrize("name", ["salvage", "comet"])
def test_interrupted_training_resumes_to_the_same_weights(name, tmp_path, monkeypatch, tiny_rules, train16):
    params = TINY_COMET if name == "comet" else TINY
    full = create_method(name, preset="quick", **params)
    full.fit(four_patch_vit(), train16, ctx_for(tmp_path / "a"))

    real = common.train_epochs

    def interrupted(directory, modules, optimizer, epochs, run_epoch, steps, **kw):
        if kw.get("desc") != "surrogate":
            real(
                directory, modules, optimizer, 1, run_epoch, steps, **kw
            )  # round 1 checkpointed, then killed
            raise KeyboardInterrupt
        return real(directory, modules, optimizer, epochs, run_epoch, steps, **kw)

    ctx = ctx_for(tmp_path / "b")
    monkeypatch.setattr(common, "train_epochs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        create_method(name, preset="quick", **params).fit(four_patch_vit(), train16, ctx)
    monkeypatch.setattr(common, "train_epochs", real)
    directory = next(p for p in (tmp_path / "b").iterdir() if p.name.startswith(name))
    assert (directory / "checkpoint.pt").exists() and not (directory / "weights.pt").exists()
    resumed = create_method(name, preset="quick", **params)
    resumed.fit(four_patch_vit(), train16, ctx)
    assert (directory / "weights.pt").exists() and not (directory / "checkpoint.pt").exists()
    assert (directory / "manifest.json").exists()
    assert len((directory / "log.csv").read_text().strip().splitlines()) == 1 + TINY_RULE.rounds
    _assert_same(_states(full), _states(resumed))
    again = create_method(name, preset="quick", **params)
    again.fit(four_patch_vit(), train16, ctx)
    info = again.report()["training"]
    assert (info["training"] if name == "comet" else info["explainer"])["cached"] is True


def test_flipped_byte_in_cached_explainer_weights_is_detected_and_retrained(
    tmp_path, tiny_rules, train16, caplog
):
    ctx = ctx_for(tmp_path)
    first = create_method("vit_shapley", preset="quick", **TINY)
    first.fit(four_patch_vit(), train16, ctx)
    weights = tmp_path / first.report()["training"]["cache_key"] / "weights.pt"
    _flip_byte(weights)
    second = create_method("vit_shapley", preset="quick", **TINY)
    with caplog.at_level(logging.WARNING, logger="xaibench"):
        second.fit(four_patch_vit(), train16, ctx)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unusable" in warnings[0] and "sha256" in warnings[0]
    training = second.report()["training"]
    assert training["explainer"]["cached"] is False and training["surrogate"]["cached"] is True
    _assert_same(_states(first), _states(second))  # retrained (deterministically), not the damaged file
    third = create_method("vit_shapley", preset="quick", **TINY)
    third.fit(four_patch_vit(), train16, ctx)
    assert third.report()["training"]["explainer"]["cached"] is True


def test_training_seed_gives_reproducible_and_distinct_explainers(tmp_path, tiny_rules, train16):
    def fit(seed, where):
        m = create_method("vit_shapley", preset="quick", **TINY)
        m.fit(four_patch_vit(), train16, ctx_for(tmp_path / where, seed=seed))
        return m

    a, b, c = fit(0, "a"), fit(0, "b"), fit(1, "c")
    _assert_same(_states(a), _states(b))
    assert (
        a.report()["training"]["explainer"]["val_curve"] == b.report()["training"]["explainer"]["val_curve"]
    )
    ea, ec = _states(a), _states(c)
    differ = [k for k in ea if k.startswith("explainer.") and not torch.equal(ea[k], ec[k])]
    assert any("mlp" in k for k in differ) and any("block" in k for k in differ)
    assert a.report()["training"]["cache_key"] != c.report()["training"]["cache_key"]


def test_report_and_notes_record_the_training(tmp_path, tiny_rules, train16):
    m = create_method("salvage", preset="quick", **TINY)
    m.fit(four_patch_vit(), train16, ctx_for(tmp_path))
    info = m.report()["training"]
    for part in ("explainer", "surrogate"):
        s = info[part]
        assert s["steps"] == TINY_RULE.max_steps and s["max_steps"] == TINY_RULE.max_steps
        assert s["stopped_by"] == "cap" and s["train_seconds"] >= 0
        assert s["val_loss"] <= s["initial_val_loss"] or s["best_step"] > 0
        assert s["validation"] == {"source": "train_holdout", "train_images": 15, "val_images": 1}
    (note,) = m.notes()
    assert note.startswith("explainer 4 steps (step cap") and "surrogate 4 steps" in note


def _surrogate_worker(cache, barrier, queue):
    import logging as lg

    from xaibench.methods.learned import common as cm
    from xaibench.methods.learned import surrogate as sg

    torch.set_num_threads(1)
    cm.STOPPING["quick"] = StoppingRule(max_steps=40, eval_every=20, patience=5, val_images=3, val_masks=4)
    sg.RECIPES["quick"] = TINY_SURROGATE
    messages = []

    class Keep(lg.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = lg.getLogger("xaibench")
    logger.addHandler(Keep())
    logger.setLevel(lg.INFO)
    adapter = four_patch_vit()
    train = load_dataset("synthetic", "train", n_train=16, image_size=32)
    barrier.wait()
    start = time.time()
    sur, key, info = sg.fit_surrogate(adapter, train, FitContext(cache_dir=cache, preset="quick"))
    from xaibench.io import weights_fingerprint

    queue.put((info["cached"], start, time.time(), messages, key, weights_fingerprint(sur.model)))


def test_two_processes_contending_for_a_surrogate_train_it_once(tmp_path):
    spawn = mp.get_context("spawn")
    barrier, queue = spawn.Barrier(2), spawn.Queue()
    procs = [spawn.Process(target=_surrogate_worker, args=(str(tmp_path), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    cached = sorted(r[0] for r in results)
    assert cached == [False, True]  # exactly one trained
    trainer = next(r for r in results if not r[0])
    loader = next(r for r in results if r[0])
    assert trainer[4] == loader[4] and trainer[5] == loader[5]  # same entry, same weights
    if loader[1] < trainer[2]:  # they overlapped: the loader waited for the trainer's lock
        assert any("waiting for another process" in msg for msg in loader[3])


def test_inference_is_split_by_the_memory_budget(tmp_path, tiny_rules, train16):
    adapter = four_patch_vit()
    ctx = ctx_for(tmp_path)
    x = adapter.normalize(torch.stack([train16[i].image for i in range(7)]))
    target = torch.arange(7) % 10
    ids = [str(i) for i in range(7)]
    for name, params in (("vit_shapley", TINY), ("salvage", TINY), ("comet", TINY_COMET)):
        m = create_method(name, preset="quick", **params)
        m.fit(adapter, train16, ctx)
        big = m.attribute(adapter, x, target, ids=ids).maps
        net = m.selector if name == "comet" else m.net
        sizes = []
        hook = net.register_forward_hook(lambda mod, inp, out: sizes.append(len(inp[0])))
        adapter.chunk_size = 2
        if name != "comet":
            m.surrogate.chunk_size = 2
        try:
            small = m.attribute(adapter, x, target, ids=ids).maps
        finally:
            hook.remove()
            adapter.budget.forward_rows = None
            if name != "comet":
                m.surrogate.budget.forward_rows = None
        assert max(sizes) == 2 and sum(sizes) == 7, (name, sizes)
        torch.testing.assert_close(small, big, rtol=0, atol=1e-6)
        if name == "salvage":  # classifying by explaining, likewise
            whole = m.classify(x)
            m.surrogate.chunk_size = 3
            try:
                torch.testing.assert_close(m.classify(x), whole, rtol=0, atol=1e-6)
            finally:
                m.surrogate.budget.forward_rows = None


# ------------------------------------------------------------------------------ algebra


def test_vit_shapley_is_efficient_and_salvage_algebra(tmp_path, tiny_rules, train16):
    adapter = four_patch_vit()
    ctx = ctx_for(tmp_path)
    x = adapter.normalize(torch.stack([train16[i].image for i in range(6)]))
    vs = create_method("vit_shapley", preset="quick", **TINY)
    vs.fit(adapter, train16, ctx)
    phi = vs.all_values(x)
    v_full, v_empty = vs.game_endpoints(x)
    assert phi.shape == (6, 4, 10)
    assert torch.allclose(phi.sum(1), v_full - v_empty, atol=1e-5)
    assert vs.net(x).abs().max() < 1  # tanh outputs before the efficient normalisation
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


def test_explainer_head_follows_the_reference_architecture():
    from xaibench.methods.learned.explainer import PatchExplainer

    adapter = four_patch_vit()
    net = PatchExplainer(adapter.model, adapter.num_prefix_tokens, 10, activation="tanh")
    linears = [m for m in net.mlp if isinstance(m, nn.Linear)]
    dim = adapter.model.embed_dim
    assert [(m.in_features, m.out_features) for m in linears] == [
        (dim, 4 * dim),
        (4 * dim, 4 * dim),
        (4 * dim, 10),
    ]
    assert isinstance(net.block.norm1, nn.Identity)
    last = adapter.model.blocks[-1]
    assert net.block.mlp.fc1.out_features == last.mlp.fc1.out_features
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    assert out.shape == (2, 4, 10) and out.abs().max() < 1


def test_salvage_guided_sampler_targets_the_label(monkeypatch):
    from xaibench.methods.learned import salvage

    sv = create_method("salvage", preset="quick")
    sv.out_dim(10)
    out = torch.randn(3, 4, 20, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([7, 0, 3])
    seen = {}

    def fake(phi, num_masks, g):
        seen["phi"] = phi
        return torch.ones(len(phi), num_masks, phi.shape[1], dtype=torch.bool)

    monkeypatch.setattr(salvage, "guided_masks", fake)
    sv.sample_masks(out, torch.softmax(torch.randn(3, 10), -1), labels, 4, torch.Generator())
    expected = sv.values(out)[torch.arange(3), :, labels]
    assert torch.equal(seen["phi"], expected)


def test_js_divergence_values():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    js = js_divergence(p, q)
    assert torch.allclose(js, torch.tensor([torch.log(torch.tensor(2.0)), 0.0]), atol=1e-6)
    assert torch.allclose(js_divergence(q, p), js)


def test_salvage_head_starts_near_uniform_u_and_every_layer_learns():
    """Salvage scales its last layer down: u(S) starts near uniform for every S (a default head
    saturates the softmax over many patches), and every layer gets gradients from the first step."""
    from xaibench.methods.learned.explainer import PatchExplainer

    adapter = make_tiny_vit(img=64, patch=8, depth=1)  # 64 patches, as on the embedded default
    sv = create_method("salvage", preset="quick", **TINY)
    x = adapter.normalize(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    keep = torch.rand(3, 5, 64, generator=torch.Generator().manual_seed(1)) < 0.5

    def spread(net):
        z = sv.shapley_logits(net(x), keep).detach()
        return float((z.max(-1).values - z.min(-1).values).max())

    build = lambda: PatchExplainer(adapter.model, adapter.num_prefix_tokens, sv.out_dim(10))  # noqa: E731
    torch.manual_seed(0)
    default = build()
    torch.manual_seed(0)
    seeded_net = build()
    sv.init_head(seeded_net)
    assert torch.allclose(seeded_net.mlp[-1].weight, 0.1 * default.mlp[-1].weight)
    assert torch.equal(seeded_net.mlp[-1].bias, torch.zeros_like(seeded_net.mlp[-1].bias))
    assert spread(seeded_net) < 0.1 * spread(default) + 1e-6
    u = sv.shapley_logits(seeded_net(x), keep).softmax(-1)
    assert (u - 0.1).abs().max() < 0.05
    v = torch.softmax(torch.randn(3, 5, 10, generator=torch.Generator().manual_seed(2)), -1)
    sv.loss(seeded_net(x), keep, v, None, None).backward()
    for name in ("mlp.0.weight", "mlp.2.weight", "mlp.4.weight", "block.attn.qkv.weight"):
        assert dict(seeded_net.named_parameters())[name].grad.abs().sum() > 0, name


def test_weights_fingerprint_handles_zero_dim_buffers():
    from xaibench.io import weights_fingerprint

    bn = nn.BatchNorm2d(3)  # num_batches_tracked is a 0-dim long tensor
    before = weights_fingerprint(bn)
    bn.num_batches_tracked += 1
    assert weights_fingerprint(bn) != before


def test_schedule_warms_up_then_decays_or_stays_constant():
    from xaibench.methods.learned.common import make_schedule

    def rates(rule, kind):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_schedule(opt, rule, kind)
        out = []
        for _ in range(rule.max_steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    rule = StoppingRule(max_steps=200, eval_every=50, patience=2)  # warm-up: 10 steps
    cos = rates(rule, "cosine")
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0)
    assert cos[105] == pytest.approx(0.5, abs=0.01) and cos[-1] < 1e-3
    flat = rates(dataclasses.replace(rule, decay=False), "cosine")
    assert flat[:10] == cos[:10] and all(r == 1.0 for r in flat[10:])
    assert all(r == 1.0 for r in rates(rule, "constant"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_run_preset_has_a_training_budget(preset):
    """``fast`` (the default on real datasets) trains like ``paper``; every preset gives a stopping
    rule and a training cost, more for the paper's budget than for the quick one."""
    from xaibench.cost import Shape

    shape = Shape(num_patches=196, prefix_tokens=1, is_vit=True)
    assert common.stopping_rule(preset) is common.STOPPING["quick" if preset == "quick" else "paper"]
    for name in ("vit_shapley", "salvage", "comet"):
        cost = create_method(name, preset=preset).fit_cost(shape, 1000).equivalent
        quick = create_method(name, preset="quick").fit_cost(shape, 1000).equivalent
        assert cost > 0 and (cost == quick if preset == "quick" else cost > 10 * quick), name
