"""Post-hoc attribution methods: invariances and hand-checkable properties on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import SYNTH_MEAN, SYNTH_STD, make_tiny_cnn, make_tiny_vit

from xaibench.adapter import ModelAdapter
from xaibench.errors import UserError
from xaibench.methods import FitContext, create_method

# small settings so that every method runs in well under a second on the tiny models
SMALL = {
    "smoothgrad": dict(n_samples=6),
    "integrated_gradients": dict(n_steps=8),
    "rise": dict(n_masks=40),
    "feature_suppression": dict(n_samples=6),
    "mask_optimisation": dict(steps=3, n_distractors=3),
}
POSTHOC = [
    "saliency",
    "smoothgrad",
    "integrated_gradients",
    "gradcam",
    "eigencam",
    "rise",
    "feature_suppression",
    "attention_rollout",
    "attention_last",
    "gae",
    "lrp",
    "mask_optimisation",
]
GRADIENT_METHODS = ["saliency", "smoothgrad", "integrated_gradients"]


def _inputs(n=5, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    return x, torch.arange(n) % 10, [f"img{i}" for i in range(n)]


def _method(name, adapter, seed=0, **params):
    m = create_method(name, preset="quick", seed=seed, **{**SMALL.get(name, {}), **params})
    if m.requires.distractors:
        pool = torch.randn(12, 3, *adapter.input_size, generator=torch.Generator().manual_seed(5))
        m.fit(adapter, None, FitContext(cache_dir="unused", distractors=pool))
    return m


@pytest.mark.parametrize("arch", ["vit", "cnn"])
@pytest.mark.parametrize("name", POSTHOC)
def test_batched_equals_one_at_a_time(name, arch):
    adapter = make_tiny_vit() if arch == "vit" else make_tiny_cnn()
    method = _method(name, adapter)
    if method.applies_to(adapter) is not None:
        assert name in ("attention_rollout", "attention_last", "gae") and arch == "cnn"
        return
    x, target, ids = _inputs()
    batched = method.attribute(adapter, x, target, ids=ids)
    expected = adapter.grid if batched.level == "patch" else adapter.input_size
    assert tuple(batched.maps.shape) == (len(x), *expected)
    assert torch.isfinite(batched.maps).all()
    single = torch.cat(
        [
            method.attribute(adapter, x[i : i + 1], target[i : i + 1], ids=ids[i : i + 1]).maps
            for i in range(len(x))
        ]
    )
    scale = batched.maps.abs().max().clamp_min(1e-12)
    assert ((batched.maps - single).abs().max() / scale) < 1e-5
    # the same call again gives the same maps (seeded methods draw from per-image generators)
    assert torch.equal(method.attribute(adapter, x, target, ids=ids).maps, batched.maps)


@pytest.mark.parametrize("name", ["smoothgrad", "rise", "feature_suppression"])
def test_seeded_methods_depend_on_seed_and_id(name):
    adapter = make_tiny_cnn()
    x, target, ids = _inputs(2)
    a = _method(name, adapter, seed=0).attribute(adapter, x, target, ids=ids).maps
    b = _method(name, adapter, seed=1).attribute(adapter, x, target, ids=ids).maps
    c = _method(name, adapter, seed=0).attribute(adapter, x, target, ids=["other0", "other1"]).maps
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("make", [make_tiny_vit, make_tiny_cnn])
def test_integrated_gradients_completeness(make):
    adapter = make()
    x, target, ids = _inputs(4)
    maps = (
        create_method("integrated_gradients").attribute(adapter, x, target, ids=ids).maps
    )  # paper: 50 steps
    with torch.no_grad():
        diff = (adapter.logits(x) - adapter.logits(torch.zeros_like(x))).gather(1, target[:, None])[:, 0]
    assert torch.allclose(maps.flatten(1).sum(1), diff, rtol=0.01, atol=1e-4 * diff.abs().max().item())


class _LinearInMask(nn.Module):
    """Class-0 odds s = a·Σ_pixels w·x, logits (log s, 0): with removed pixels at 0 (mean fill),
    p_0 = s/(1+s) ≈ s is linear in the mask (s ≤ 0.02 here) and 0 for the empty mask."""

    def __init__(self, weights: torch.Tensor, a: float = 1e-5) -> None:
        super().__init__()
        self.register_buffer("w", weights)
        self.a = a

    def forward(self, x):
        s = self.a * (x * self.w).flatten(1).sum(1)
        return torch.stack([torch.log(s.clamp_min(1e-12)), torch.zeros_like(s)], 1)


def test_rise_recovers_linear_weights_ordering():
    # weights on the four corner cells of a 4×4 grid of 8-px cells (corners see the same mask
    # statistics, so RISE's blur cannot reorder them), zero elsewhere
    cell_w = torch.zeros(4, 4)
    corners = [(0, 0), (0, 3), (3, 0), (3, 3)]
    for (i, j), v in zip(corners, (2.0, 4.0, 1.0, 3.0)):
        cell_w[i, j] = v
    weights = cell_w.view(1, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3).expand(1, 3, 32, 32)
    adapter = ModelAdapter(
        _LinearInMask(weights.contiguous()), mean=SYNTH_MEAN, std=SYNTH_STD, input_size=(32, 32), patch_size=8
    )
    rise = create_method("rise", n_masks=4000, s=8)
    attr = rise.attribute(adapter, torch.ones(1, 3, 32, 32), torch.tensor([0]), ids=["lin"])
    assert attr.level == "pixel"
    scores = attr.patch_scores(adapter.grid)[0].view(4, 4)
    at_corners = torch.stack([scores[c] for c in corners])
    assert at_corners.argsort().tolist() == torch.tensor([2.0, 4.0, 1.0, 3.0]).argsort().tolist()
    assert scores[cell_w == 0].mean() < at_corners.min()


def test_rise_patch_mode_on_vit_and_mode_errors(tiny_vit, tiny_cnn):
    x, target, ids = _inputs(2)
    attr = _method("rise", tiny_vit).attribute(tiny_vit, x, target, ids=ids)
    assert attr.level == "patch" and tuple(attr.maps.shape) == (2, 4, 4)
    with pytest.raises(UserError, match="mode"):
        _method("rise", tiny_cnn, mode="patch").attribute(tiny_cnn, x, target, ids=ids)
    with pytest.raises(UserError, match="mode"):
        _method("rise", tiny_cnn, mode="bogus").attribute(tiny_cnn, x, target, ids=ids)


def test_rise_pixel_masks_shape_range_and_keep_rate():
    from xaibench.methods.rise import rise_pixel_masks

    m = rise_pixel_masks(400, (30, 30), 5, 0.3, torch.Generator().manual_seed(0), "cpu")
    assert m.shape == (400, 30, 30) and m.min() >= 0 and m.max() <= 1
    assert abs(m.mean().item() - 0.3) < 0.03


def _identity_attention(adapter):
    def pre_hook(_module, inputs):
        attn = inputs[0]
        return (torch.eye(attn.shape[-1]).expand_as(attn).contiguous(),)

    return [blk.attn.attn_drop.register_forward_pre_hook(pre_hook) for blk in adapter.model.blocks]


@pytest.mark.parametrize("name", ["attention_rollout", "attention_last"])
def test_identity_attention_gives_uniform_map(tiny_vit, name):
    handles = _identity_attention(tiny_vit)
    try:
        x, target, ids = _inputs(3)
        maps = create_method(name).attribute(tiny_vit, x, target, ids=ids).maps
    finally:
        for h in handles:
            h.remove()
    assert maps.shape == (3, 4, 4)
    assert torch.allclose(maps, maps[:, :1, :1].expand_as(maps))


def test_rollout_matches_plain_loop(tiny_vit):
    x, target, ids = _inputs(2)
    with torch.no_grad(), tiny_vit.record_attention() as rec:
        tiny_vit.logits(x)
    maps = create_method("attention_rollout").attribute(tiny_vit, x, target, ids=ids).maps
    pre = tiny_vit.num_prefix_tokens
    for b in range(2):
        joint = torch.eye(rec.maps[0].shape[-1])
        for i in range(len(rec.maps)):
            a = rec.maps[i][b].mean(0) + torch.eye(joint.shape[0])
            a = a / a.sum(1, keepdim=True)
            joint = a @ joint
        assert torch.allclose(maps[b].flatten(), joint[0, pre:], atol=1e-6)
        last = rec.maps[len(rec.maps) - 1][b].mean(0)[0, pre:]
        got = create_method("attention_last").attribute(
            tiny_vit, x[b : b + 1], target[b : b + 1], ids=ids[b : b + 1]
        )
        assert torch.allclose(got.maps.flatten(), last, atol=1e-6)


def test_vit_lrp_forward_reproduces_model_and_batches(tiny_vit):
    from xaibench.methods.lrp import _vit_forward, vit_relevance

    x, target, ids = _inputs(4)
    with torch.no_grad():
        logits, _, _ = _vit_forward(tiny_vit, x)
        assert torch.allclose(logits, tiny_vit.logits(x), atol=1e-5)
    lrp = create_method("lrp")
    batched = lrp.attribute(tiny_vit, x, target, ids=ids)
    # (maps ≥ 0 holds by construction of the rollout and says nothing.) The target's relevance
    # of 1 reaches the tokens whole (LayerNorm passes it; a gradient × input rule there leaves
    # ~1e-7), and every map tells its patches apart.
    tokens = vit_relevance(tiny_vit, x, target).tokens
    assert torch.allclose(tokens.flatten(1).sum(1), torch.ones(4), atol=1e-5)
    assert (
        batched.level == "patch" and (batched.maps.flatten(1).std(1) > 1e-3 * batched.maps.abs().max()).all()
    )
    single = torch.cat(
        [lrp.attribute(tiny_vit, x[i : i + 1], target[i : i + 1], ids=ids[i : i + 1]).maps for i in range(4)]
    )
    assert torch.allclose(batched.maps, single, rtol=1e-5, atol=1e-9)
    other = lrp.attribute(tiny_vit, x, (target + 1) % 10, ids=ids).maps
    assert not torch.allclose(other, batched.maps)  # class-specific


def test_relevance_pair_renormalisation_conserves_per_image():
    from xaibench.methods.lrp import two_operand

    g = torch.Generator().manual_seed(0)
    a, b, R = (
        torch.rand(3, 5, 4, generator=g),
        torch.rand(3, 5, 4, generator=g),
        torch.randn(3, 5, 4, generator=g),
    )
    ra, rb = two_operand(torch.add, a, b, R)
    assert torch.allclose((ra + rb).flatten(1).sum(1), R.flatten(1).sum(1), atol=1e-5)


def test_cnn_lrp_epsilon_conserves_relevance():
    from xaibench.methods.lrp import cnn_lrp

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16, bias=False),
        nn.ReLU(),
        nn.Linear(16, 5, bias=False),
    )
    adapter = ModelAdapter(net, mean=SYNTH_MEAN, std=SYNTH_STD, input_size=(16, 16), patch_size=4)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = adapter.logits(x)
    target = logits.argmax(1)
    rel = cnn_lrp(adapter, x, target)
    assert torch.allclose(rel.flatten(1).sum(1), logits.gather(1, target[:, None])[:, 0], rtol=0.02)


def test_cnn_lrp_on_timm_resnet_splits_residuals(tiny_cnn):
    """With the residual additions made explicit, relevance is no larger than the logit scale
    (duplicating it through both branches of every block would inflate it ~2^4 times)."""
    from xaibench.methods.lrp import cnn_lrp

    x, target, ids = _inputs(3)
    with torch.no_grad():
        before = tiny_cnn.logits(x)
    rel = cnn_lrp(tiny_cnn, x, target)
    logit = before.gather(1, target[:, None])[:, 0]
    assert torch.isfinite(rel).all()
    assert (rel.flatten(1).sum(1).abs() <= 2 * logit.abs() + 1e-3).all()
    with torch.no_grad():  # canonizers (merged BatchNorm, block forwards) are undone afterwards
        assert torch.allclose(tiny_cnn.logits(x), before, atol=1e-6)


@pytest.mark.parametrize("name", GRADIENT_METHODS + ["gradcam", "lrp"])
def test_randomised_weights_change_maps(name, tiny_trained_vit):
    """Adebayo et al. 2018: on a trained model, maps after re-initialising every layer must not
    resemble the original ones; a map computed from the input alone fails the same check."""
    from xaibench.metrics.sanity import randomised, rank_correlation

    adapter, x, target = tiny_trained_vit
    ids = [f"r{i}" for i in range(len(x))]
    random = randomised(adapter, "all", seed=0)

    def mean_rho(attribute):
        a, b = attribute(adapter).maps, attribute(random).maps
        return float(torch.tensor([rank_correlation(a[i], b[i]) for i in range(len(x))]).nanmean())

    method = _method(name, adapter)
    assert mean_rho(lambda m: method.attribute(m, x, target, ids=ids)) < 0.5
    from xaibench.attribution import Attribution

    assert mean_rho(lambda m: Attribution(x.abs().sum(1), "pixel")) > 0.99  # what the check exists to catch


def test_feature_suppression_algorithm_on_a_linear_model():
    """For logits z = Wx, |∂CE/∂x̂| = |Wᵀ(softmax − onehot)|: check the accumulation, × x/N,
    channel pooling and min-max against a plain loop over the same suppression draws."""
    from xaibench.methods.suppression import suppression_masks
    from xaibench.seeding import generator

    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    adapter = ModelAdapter(lin, mean=SYNTH_MEAN, std=SYNTH_STD, input_size=(8, 8), patch_size=4)
    x, target = torch.randn(2, 3, 8, 8), torch.tensor([1, 3])
    method = create_method("feature_suppression", n_samples=5)
    adapter.budget.megabytes = 1e-4  # one suppressed copy per pass: the draws must not depend on it
    assert adapter.budget.rows(backward=True) == 1
    maps = method.attribute(adapter, x, target, ids=["p", "q"]).maps
    for b, image_id in enumerate(["p", "q"]):
        draws = suppression_masks(5, 64, 0.6, generator(0, image_id, "suppression"), "cpu")
        acc = torch.zeros(3, 8, 8)
        for off in draws:
            xh = torch.where(off.view(1, 8, 8), torch.full((3, 8, 8), 1e-8), x[b]).requires_grad_(True)
            loss = nn.functional.cross_entropy(lin(xh[None]), target[b : b + 1])
            acc += torch.autograd.grad(loss, xh)[0].abs()
        e = (x[b] / 64 * acc).abs().sum(0)
        e = (e - e.min()) / (e.max() - e.min())
        assert torch.allclose(maps[b], e, atol=1e-5)


def test_truncated_poisson_stays_in_range():
    from scipy.stats import poisson

    from xaibench.methods.suppression import truncated_poisson

    k = truncated_poisson(9.0, 10, 20000, torch.Generator().manual_seed(0), "cpu")
    assert k.max() <= 10 and k.min() >= 0
    support = torch.arange(11).double()
    pmf = torch.tensor(poisson.pmf(support.numpy(), 9.0))
    exact_mean = float((support * pmf).sum() / pmf.sum())  # E[k | k ≤ 10] ≈ 7.5, below λ = 9
    assert abs(k.double().mean().item() - exact_mean) < 0.05


class _ColourDetector(nn.Module):
    """Hand-set classifier that knows ``synthetic``: class c's logit is the share of pixels close
    to c's colour (label = 5·colour + shape), so only class-coloured pixels carry evidence."""

    def __init__(self, alpha: float = 40.0) -> None:
        super().__init__()
        from xaibench.datasets.synthetic import CLASS_COLOURS

        cols = torch.tensor(list(CLASS_COLOURS.values()), dtype=torch.float32) / 255
        self.register_buffer("cols", cols.repeat_interleave(5, 0))  # (10, 3)
        self.register_buffer("mean", torch.tensor(SYNTH_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(SYNTH_STD).view(1, 3, 1, 1))
        self.alpha = alpha

    def forward(self, x):
        x01 = x * self.std + self.mean
        d2 = ((x01[:, None] - self.cols.view(1, 10, 3, 1, 1)) ** 2).sum(2)
        return self.alpha * torch.exp(-d2 / (2 * 0.15**2)).mean((2, 3))


def test_mask_optimisation_lowers_objective_and_keeps_the_object(synth32):
    from sklearn.metrics import roc_auc_score

    from xaibench.datasets import load_dataset

    images, labels, masks, ids = synth32
    adapter = ModelAdapter(
        _ColourDetector(alpha=20.0), mean=SYNTH_MEAN, std=SYNTH_STD, input_size=(32, 32), patch_size=8
    )
    train = load_dataset("synthetic", "train", n_train=40, image_size=32)
    pool = adapter.normalize(torch.stack([train[i].image for i in range(len(train))]))
    method = create_method("mask_optimisation", steps=80, lambda_l1=2e-4)
    method.fit(adapter, None, FitContext(cache_dir="unused", distractors=pool))
    n = 4
    x, target = adapter.normalize(images[:n]), labels[:n]
    attr = method.attribute(adapter, x, target, ids=ids[:n])
    assert attr.level == "pixel" and attr.meta["steps"] == 80 and len(method.history) == 80
    # the objective on a fixed set of distractors (the whole pool) is lower at the optimised mask
    picks = torch.arange(len(pool)).expand(n, -1)
    with torch.no_grad():
        start, _ = method.objective(adapter, x, target, torch.full_like(method.low_res, 0.5), picks)
        end, M = method.objective(adapter, x, target, method.low_res, picks)
    assert (end < start).all()
    assert torch.allclose(M, attr.maps)
    aucs = [roc_auc_score(masks[i].flatten().numpy(), attr.maps[i].flatten().numpy()) for i in range(n)]
    assert sum(aucs) / n > 0.75


def test_mask_optimisation_needs_distractors(tiny_cnn):
    x, target, ids = _inputs(1)
    method = create_method("mask_optimisation", steps=1)
    with pytest.raises(UserError, match="distractor"):
        method.attribute(tiny_cnn, x, target, ids=ids)
    with pytest.raises(UserError, match="distractor"):
        method.fit(tiny_cnn, None, FitContext(cache_dir="unused"))


def test_requirements_route_methods(tiny_vit, tiny_cnn):
    for name in ("attention_rollout", "attention_last", "gae"):
        assert create_method(name).applies_to(tiny_cnn) is not None
        assert create_method(name).applies_to(tiny_vit) is None
    assert create_method("mask_optimisation").requires.distractors
    for name in GRADIENT_METHODS + ["gradcam", "lrp", "feature_suppression"]:
        assert create_method(name).requires.gradients
    with pytest.raises(UserError, match="n_masks"):
        create_method("rise", n_mask=3)


def test_gae_matches_plain_loop_and_is_class_specific(tiny_vit):
    x, target, ids = _inputs(2)
    maps = create_method("gae").attribute(tiny_vit, x, target, ids=ids).maps
    pre = tiny_vit.num_prefix_tokens
    for b in range(2):
        xb = x[b : b + 1].clone().requires_grad_(True)
        with tiny_vit.record_attention() as rec:
            logit = tiny_vit.logits(xb)[0, target[b]]
        attns = rec.ordered()
        grads = torch.autograd.grad(logit, attns)
        R = torch.eye(attns[0].shape[-1])
        for a, g in zip(attns, grads):
            R = R + (g[0] * a[0]).clamp_min(0).mean(0) @ R
        assert torch.allclose(maps[b].flatten(), R[0, pre:].detach(), atol=1e-6)
    assert maps.abs().sum() > 0
    other = create_method("gae").attribute(tiny_vit, x, (target + 1) % 10, ids=ids).maps
    assert not torch.allclose(other, maps)


class _ConstantOutput(nn.Module):
    """Logits that ignore the input: p_c is the same for every masked input."""

    def forward(self, x):
        return torch.tensor([[2.0, 0.5, -1.0]]).expand(x.shape[0], -1) + 0 * x.mean()


@pytest.mark.parametrize("mode", ["pixel", "patch"])
def test_rise_paired_masks_cancel_the_constant_part(mode):
    """With paired masks (m, 1 − m) every part is kept in exactly half of the masks, so a constant
    p_c gives the flat map p_c/(2p)·2 = p_c exactly; independent masks scatter around it."""
    if mode == "patch":
        adapter = make_tiny_vit()
        with torch.no_grad():  # a ViT whose head ignores the tokens: constant logits
            adapter.model.head.weight.zero_()
            adapter.model.head.bias.copy_(torch.linspace(2, -1, 10))
    else:
        adapter = ModelAdapter(
            _ConstantOutput(), mean=SYNTH_MEAN, std=SYNTH_STD, input_size=(32, 32), patch_size=8
        )
    x, target, ids = _inputs(2)
    target = torch.zeros(2, dtype=torch.long)
    p_c = float(adapter.probs(x[:1]).detach()[0, 0])
    paired = create_method("rise", n_masks=64, sampling="paired", mode=mode).attribute(
        adapter, x, target, ids=ids
    )
    assert torch.allclose(paired.maps, torch.full_like(paired.maps, p_c), rtol=1e-5)
    indep = create_method("rise", n_masks=64, mode=mode).attribute(adapter, x, target, ids=ids)
    assert (indep.maps - p_c).abs().max() > 0.05 * p_c
    with pytest.raises(UserError, match="paired"):
        create_method("rise", sampling="paired", p=0.3).attribute(adapter, x, target, ids=ids)
    with pytest.raises(UserError, match="sampling"):
        create_method("rise", sampling="antithetic").attribute(adapter, x, target, ids=ids)


def test_rise_paired_and_independent_estimate_the_same_map():
    """Both samplers estimate E[p_c(x ⊙ m)·m]/p (each paired mask is still Bernoulli(0.5) per
    cell): on a model linear in the mask with a smooth weight bump, both maps follow the bump and
    agree with each other; pairing removes the noise of the constant part, so it is closer to a
    long independent run than the independent map of the same size."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    bump = torch.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 40)
    adapter = ModelAdapter(
        _LinearInMask(bump.expand(1, 3, 32, 32).contiguous()),
        mean=SYNTH_MEAN,
        std=SYNTH_STD,
        input_size=(32, 32),
        patch_size=8,
    )
    x, t = torch.ones(1, 3, 32, 32), torch.tensor([0])

    def rise(n, sampling, seed=0):
        method = create_method("rise", n_masks=n, sampling=sampling, mode="pixel", seed=seed)
        return method.attribute(adapter, x, t, ids=["lin"]).maps[0]

    def corr(m):
        return float(torch.corrcoef(torch.stack([m.flatten(), bump.flatten()]))[0, 1])

    long_run = rise(20000, "independent", seed=7)
    paired, indep = rise(1000, "paired"), rise(1000, "independent")
    assert corr(long_run) > 0.95 and corr(paired) > 0.9 and corr(indep) > 0.6  # measured 0.98, 0.95, 0.75
    assert corr(paired) > corr(indep)
    assert (paired - long_run).abs().mean() < 0.6 * (indep - long_run).abs().mean()  # measured 0.4
    assert (paired - long_run).abs().max() < 0.04 * long_run.max()  # measured 0.027


def test_rise_answers_the_second_label_from_the_same_masks(tiny_vit):
    """The first call also explains the clean prediction's top two classes; a following call for
    one of them (completeness's second label) returns exactly a fresh call's map without forwards."""
    x, _, ids = _inputs(3)
    with torch.no_grad():
        top2 = tiny_vit.probs(x).topk(2, 1).indices
    rise = _method("rise", tiny_vit)
    first = rise.attribute(tiny_vit, x, top2[:, 0], ids=ids).maps
    calls = []
    handle = tiny_vit.model.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    second = rise.attribute(tiny_vit, x, top2[:, 1], ids=ids).maps
    assert not calls
    kept = first.clone()
    first.zero_()  # the caller owns what it gets: changing it does not change later answers
    again = rise.attribute(tiny_vit, x, top2[:, 0], ids=ids).maps
    handle.remove()
    assert torch.equal(again, kept)
    fresh = _method("rise", tiny_vit).attribute(tiny_vit, x, top2[:, 1], ids=ids).maps
    assert torch.equal(second, fresh) and not torch.equal(second, kept)
    other = (top2[:, 1] + 1) % 10  # not among the explained classes for some image: recomputed
    assert torch.equal(
        rise.attribute(tiny_vit, x, other, ids=ids).maps,
        _method("rise", tiny_vit).attribute(tiny_vit, x, other, ids=ids).maps,
    )
    # a different image under the same id, or changed weights, are not answered from the memo
    rise.attribute(tiny_vit, x, top2[:, 0], ids=ids)
    x2 = x.clone()
    x2[0] += 1
    assert torch.equal(
        rise.attribute(tiny_vit, x2, top2[:, 1], ids=ids).maps,
        _method("rise", tiny_vit).attribute(tiny_vit, x2, top2[:, 1], ids=ids).maps,
    )
    rise.attribute(tiny_vit, x, top2[:, 0], ids=ids)
    with torch.no_grad():
        tiny_vit.model.head.weight.mul_(2)
    assert torch.equal(
        rise.attribute(tiny_vit, x, top2[:, 1], ids=ids).maps,
        _method("rise", tiny_vit).attribute(tiny_vit, x, top2[:, 1], ids=ids).maps,
    )


def test_rise_notes_state_the_seed_agreement():
    (quick,) = create_method("rise", preset="quick").notes()
    assert "768 paired" in quick and "Spearman 0.29" in quick
    (paper,) = create_method("rise").notes()
    assert "4000 independent" in paper and "Spearman 0.23" in paper
    (other,) = create_method("rise", n_masks=100).notes()
    assert "seed noise" in other
