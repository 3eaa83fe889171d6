"""The removal engine: packed token dropping (equal to one-at-a-time dropping), pass plans,
dynamic-size ViTs, the metrics' autocast, and what the pass loop may not do (read device
values back)."""

import pytest
import torch
from conftest import SYNTH_MEAN, SYNTH_STD

from xaibench.adapter import ModelAdapter
from xaibench.attribution import Attribution
from xaibench.engine import MIN_PASS_ROWS, plan_passes, row_passes
from xaibench.errors import UserError
from xaibench.metrics import Batch, EvalContext, create_metric
from xaibench.removal import Removal


def _vit(seed=0, **kw) -> ModelAdapter:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10)
    model = VisionTransformer(**{**args, **kw})
    return ModelAdapter(model, mean=SYNTH_MEAN, std=SYNTH_STD, input_size=(32, 32), name="vit")


def _keep(B, M, P, seed=0, low=1):
    """Random patch masks with every size from ``low`` to P represented (varied cardinalities)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(low, P + 1, (B, M), generator=g)
    order = torch.rand(B, M, P, generator=g).argsort(-1)
    return order.argsort(-1) < sizes[..., None]


def _one_at_a_time(adapter, x, keep):
    """Reference: each masked input on its own, only its kept patch tokens in the sequence."""
    B, M, _ = keep.shape
    out = torch.empty(B, M, adapter.num_classes)
    with torch.no_grad():
        tokens = adapter.vit_embed(x)
        for b in range(B):
            for m in range(M):
                kept = keep[b, m].nonzero()[:, 0][None]
                seq = adapter.gather_tokens(tokens, torch.tensor([b]), kept)
                out[b, m] = adapter.vit_from_tokens(seq).softmax(-1)[0]
    return out


MODELS = {
    "cls+registers, token pool": dict(reg_tokens=2, no_embed_class=True, global_pool="token"),
    "cls, avg pool": dict(global_pool="avg"),
    "no cls, 1 register, avg pool": dict(class_token=False, reg_tokens=1, global_pool="avg"),
    "no prefix, avg pool": dict(class_token=False, global_pool="avg"),
    "no prefix, max pool": dict(class_token=False, global_pool="max", fc_norm=False),
    "no cls, register, avgmax pool": dict(class_token=False, reg_tokens=1, global_pool="avgmax"),
    "avg pool with prefix": dict(reg_tokens=2, global_pool="avg", pool_include_prefix=True),
    "attention pool (exact passes)": dict(class_token=False, global_pool="map"),
    "dynamic image size": dict(reg_tokens=1, dynamic_img_size=True),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_drop_equals_one_at_a_time_dropping(name):
    adapter = _vit(**MODELS[name])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    keep = _keep(3, 10, adapter.num_patches, seed=2)
    reference = _one_at_a_time(adapter, x, keep)
    expected_mode = "exact" if "attention pool" in name else ("token" if "token" in name else None)
    mode = adapter.engine.pool_mode()
    if expected_mode:
        assert mode == expected_mode
    else:
        assert mode in ("token", "mean")
    for rows in (2, 5, 1000):  # many small ragged passes, and one pass of everything
        adapter.chunk_size = rows
        probs = adapter.masked_probs(x, keep, "drop")
        torch.testing.assert_close(probs, reference, atol=1e-5, rtol=0)
        target = torch.tensor([1, 4, 7])
        sel = adapter.masked_probs(x, keep, "drop", target=target)
        torch.testing.assert_close(sel, reference[torch.arange(3), :, target], atol=1e-5, rtol=0)


def test_pass_plans_pad_by_count_only_and_respect_the_token_budget():
    counts = [1, 1, 2, 3, 3, 3, 7, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16]
    passes = plan_passes(counts, 16, prefix=5, tokens_per_pass=60, quantum=2, min_rows=2)
    assert passes == [
        (0, 3, 2),  # counts 1 and 2 share the padded length 2
        (3, 6, 4),
        (6, 10, 8),  # 4 rows of 5 + 8 tokens fit 60; the 9 rows of length 8 are split 4, 3, 2
        (10, 13, 8),
        (13, 15, 8),
        (15, 17, 16),
    ]
    for s, e, length in passes:
        assert all(length == min(16, 2 * -(-c // 2)) for c in counts[s:e])  # a row's length: its count
        assert (e - s) * (5 + length) <= 60 and e - s >= 2
    exact = plan_passes(counts, 16, prefix=5, tokens_per_pass=None)
    assert exact == [(0, 2, 1), (2, 3, 2), (3, 6, 3), (6, 7, 7), (7, 15, 8), (15, 17, 16)]
    assert row_passes(70, 64) == [(0, 64), (64, 70)]
    assert row_passes(66, 64) == [(0, 62), (62, 66)]  # a short last pass is evened out
    assert row_passes(10, 4) == [(0, 4), (4, 8), (8, 10)]  # cannot be: the engine repeats a row
    assert row_passes(3, 64) == [(0, 3)]


def test_small_budgets_are_respected_and_short_passes_padded():
    adapter = _vit(reg_tokens=2, no_embed_class=True)  # 3 prefix tokens + 16 patches
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    keep = _keep(2, 5, 16, seed=11)
    tokens = []  # tokens per pass (rows × sequence length) at the first block
    adapter.model.blocks[0].register_forward_pre_hook(
        lambda _m, a: tokens.append(a[0].shape[0] * a[0].shape[1])
    )
    adapter.chunk_size = 2  # a budget below MIN_PASS_ROWS wins over it
    reference = _one_at_a_time(adapter, x, keep)
    tokens.clear()
    torch.testing.assert_close(adapter.masked_probs(x, keep, "drop"), reference, atol=1e-5, rtol=0)
    adapter.masked_probs(x, keep, "mean")
    assert tokens and max(tokens) <= 2 * 19
    adapter.chunk_size = 64
    tokens.clear()
    adapter.masked_probs(x[:1], keep[:1, :1], "mean")  # one input: repeated up to MIN_PASS_ROWS
    assert tokens == [MIN_PASS_ROWS * 19]


@pytest.mark.parametrize("name", ["cls+registers, token pool", "no cls, 1 register, avg pool"])
def test_results_do_not_depend_on_pass_size_or_batch_composition(name):
    """Bitwise: with lengths fixed by the count and passes of at least MIN_PASS_ROWS inputs, a
    row is computed the same way whatever the pass size (so a recalibrated run reproduces it)."""
    adapter = _vit(**MODELS[name])
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    keep = _keep(5, 12, 16, seed=9)
    for strategy in ("drop", "mean"):
        outs = []
        for rows in (4, 7, 16, 33, 1000):
            adapter.chunk_size = rows
            outs.append(adapter.masked_probs(x, keep, strategy))
            sub = adapter.masked_probs(x[1:3], keep[1:3, :5], strategy)  # other images, fewer masks
            assert torch.equal(sub, outs[-1][1:3, :5]), (strategy, rows)
        for out in outs[1:]:
            assert torch.equal(out, outs[0]), strategy


def test_drop_without_prefix_tokens_refuses_to_remove_everything():
    adapter = _vit(class_token=False, global_pool="avg")
    keep = torch.zeros(1, 1, adapter.num_patches, dtype=torch.bool)
    with pytest.raises(ValueError, match="removed every token"):
        adapter.masked_probs(torch.zeros(1, 3, 32, 32), keep, "drop")


def test_dynamic_image_size_vit_works_with_the_engine_and_methods():
    from xaibench.methods import create_method

    adapter = _vit(reg_tokens=1, dynamic_img_size=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert adapter.vit_embed(x).shape == (2, 2 + 16, 32)
    keep = _keep(2, 4, 16, seed=4)
    with torch.no_grad():
        reference = torch.stack(
            [adapter.attention_mask_forward(x, keep[:, m]).softmax(-1) for m in range(4)], 1
        )
    torch.testing.assert_close(adapter.masked_probs(x, keep, "drop"), reference, atol=1e-5, rtol=0)
    assert adapter.masked_probs(x, keep, "mean").shape == (2, 4, 10)
    target = adapter.probs(x).argmax(1)
    for name in ("gradcam", "attention_rollout", "gae", "lrp", "rise"):
        method = create_method(name, preset="quick")
        maps = method.attribute(adapter, x, target, ids=["a", "b"]).maps
        assert torch.isfinite(maps).all()


def test_masked_logits_drop_keeps_per_cardinality_passes():
    adapter = _vit(reg_tokens=2, no_embed_class=True)
    x = torch.randn(6, 3, 32, 32)
    keep = _keep(6, 1, 16, seed=5)[:, 0]
    logits = adapter.masked_logits(x, keep, "drop")
    reference = _one_at_a_time(adapter, x, keep[:, None])[:, 0]
    torch.testing.assert_close(logits.softmax(-1).detach(), reference, atol=1e-6, rtol=0)
    assert logits.requires_grad


def test_outputs_are_normal_tensors_and_the_pass_loop_reads_nothing_back(monkeypatch):
    adapter = _vit(reg_tokens=2, no_embed_class=True)
    x = torch.randn(4, 3, 32, 32)
    keep = _keep(4, 32, 16, seed=6)
    adapter.chunk_size = 4  # dozens of passes
    calls = {"n": 0}
    for name in ("item", "tolist", "cpu", "nonzero", "unique", "__bool__", "__int__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _original=original, **kw):
            calls["n"] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)
    for strategy in ("drop", "mean", "blur"):
        calls["n"] = 0
        out = adapter.masked_probs(x, keep, strategy, target=torch.tensor([0, 1, 2, 3]))
        # drop: one host copy of the counts for the plan (and its tolist); fills: none
        assert calls["n"] <= 2, (strategy, calls["n"])
        assert not torch.is_inference(out)
    monkeypatch.undo()
    (out * torch.ones_like(out, requires_grad=True)).sum().backward()  # usable in autograd


# ------------------------------------------------------------------ autocast


def _batch(adapter, n=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    probs = adapter.probs(x).detach()
    ids = [f"img{i}" for i in range(n)]
    return Batch(x=x, labels=probs.argmax(1), targets=probs.argmax(1), ids=ids, probs=probs)


@pytest.mark.parametrize("strategy", ["drop", "mean"])
def test_autocast_reaches_metric_forwards_only(strategy):
    from xaibench.methods import create_method

    adapter = _vit(reg_tokens=2, no_embed_class=True)
    batch = _batch(adapter)
    attr = Attribution(torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(1)), "patch")
    ctx = EvalContext(adapter, Removal(strategy), seed=0, amp="bf16")
    assert ctx.adapter is not adapter and ctx.adapter.model is adapter.model
    assert ctx.adapter.metric_amp == "bf16" and adapter.metric_amp is None
    blocks = []
    adapter.model.blocks[0].mlp.fc1.register_forward_hook(lambda _m, _i, out: blocks.append(out.dtype))
    metric = create_metric("srg")
    low = metric.compute(ctx, batch, attr).scores
    assert blocks and set(blocks) == {torch.bfloat16}  # the metric's passes ran in bf16
    blocks.clear()
    full = metric.compute(EvalContext(adapter, Removal(strategy), seed=0), batch, attr).scores
    assert set(blocks) == {torch.float32}
    for name in ("mif", "lif"):
        diff = (low[name] - full[name]).abs().max()
        assert 0 < diff < 5  # ×100 scale: bf16 moves the scores a little, but does move them
    # methods never autocast, not even when handed the metrics' view of the adapter
    blocks.clear()
    method = create_method("rise", preset="quick")
    method.attribute(ctx.adapter, batch.x, batch.targets, ids=batch.ids)
    ctx.adapter.masked_probs(batch.x, torch.ones(4, 1, 16, dtype=torch.bool), strategy)
    assert blocks and set(blocks) == {torch.float32}


def test_amp_setting_is_checked():
    adapter = _vit(reg_tokens=2, no_embed_class=True)
    with pytest.raises(UserError, match="unknown amp"):
        EvalContext(adapter, Removal("mean"), amp="int8")
    ctx = EvalContext(adapter, Removal("mean"))
    assert ctx.adapter is adapter  # no view without amp
    from dataclasses import replace

    again = replace(EvalContext(adapter, Removal("mean"), amp="fp16"), amp=None)
    assert again.adapter.metric_amp is None


@pytest.mark.parametrize("name", ["cls+registers, token pool", "no prefix, avg pool", "dynamic image size"])
@pytest.mark.parametrize("strategy", ["mean", "blur", "distractor"])
def test_filled_patch_masks_compose_embedded_tokens(name, strategy):
    """A boolean patch mask is applied to the embedded tokens of the clean and the filled image
    (each embedded once per call, not once per masked input); the probabilities are those of the
    composed pixels through the whole model."""
    from xaibench.engine import composes_tokens

    adapter = _vit(**MODELS[name])
    assert composes_tokens(adapter)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 32, 32, generator=g)
    keep = _keep(3, 6, 16, seed=6, low=0)
    pool = torch.randn(5, 3, 32, 32, generator=g)
    removal = Removal(strategy, n_draws=2, seed=1, distractors=pool if strategy == "distractor" else None)
    ids = ["a", "b", "c"]
    embedded = []
    hook = adapter.model.patch_embed.register_forward_hook(lambda _m, i, _o: embedded.append(len(i[0])))
    adapter.chunk_size = 4
    out = adapter.masked_probs(x, keep, removal, ids=ids)
    hook.remove()
    D = removal.draws
    assert embedded == [3, 3 * D]  # the clean images, then every fill: no embedding per pass
    fill = removal.fill(x, ids)
    pixels = adapter.patch_keep_to_pixels(keep.flatten(0, 1)).view(3, 6, 32, 32)
    with torch.no_grad():
        reference = torch.stack(
            [
                torch.stack(
                    [
                        adapter.logits(Removal.compose(x[b : b + 1], pixels[b, m : m + 1], fill[b, :, ...]))
                        .softmax(-1)
                        .mean(0)
                        for m in range(6)
                    ]
                )
                for b in range(3)
            ]
        )
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)
    soft = adapter.masked_probs(x, keep.float(), removal, ids=ids)  # soft masks: the pixel path
    torch.testing.assert_close(soft, out, atol=1e-6, rtol=0)


def test_overlapping_patch_embeddings_compose_pixels():
    from xaibench.engine import composes_tokens

    adapter = _vit()
    adapter.model.patch_embed.proj.padding = (1, 1)  # a patch's token would see its neighbours
    assert not composes_tokens(adapter)
