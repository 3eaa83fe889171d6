"""Foundation: the removal operation, the attribution container, the seeded generators."""

import pytest
import torch

from xaibench.attribution import Attribution
from xaibench.removal import Removal
from xaibench.seeding import generator


def _random_keep(B, M, P, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, P + 1, (B, M), generator=g)
    order = torch.rand(B, M, P, generator=g).argsort(-1)
    return order.argsort(-1) < sizes[..., None]


def test_drop_equals_attention_masking(tiny_vit):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    keep = _random_keep(3, 6, tiny_vit.num_patches)
    keep[:, 0] = True  # all kept
    keep[:, 1, 1:] = False  # a single patch
    dropped = tiny_vit.masked_probs(x, keep, "drop")
    with torch.no_grad():
        reference = torch.stack(
            [tiny_vit.attention_mask_forward(x, keep[:, m]).softmax(-1) for m in range(keep.shape[1])], 1
        )
    assert dropped.shape == reference.shape == (3, 6, 10)
    torch.testing.assert_close(dropped, reference, atol=1e-5, rtol=0)
    # nothing removed = the clean prediction
    torch.testing.assert_close(dropped[:, 0], tiny_vit.probs(x).detach(), atol=1e-5, rtol=0)


def test_drop_is_differentiable_and_matches_masked_probs(tiny_vit):
    x = torch.randn(4, 3, 32, 32)
    keep = _random_keep(4, 1, tiny_vit.num_patches, seed=3)[:, 0]
    logits = tiny_vit.masked_logits(x, keep, "drop")
    logits.sum().backward()
    assert any(p.grad is not None for p in tiny_vit.model.parameters())
    torch.testing.assert_close(
        logits.softmax(-1).detach(), tiny_vit.masked_probs(x, keep[:, None], "drop")[:, 0], atol=1e-5, rtol=0
    )


def test_drop_needs_a_vit(tiny_cnn):
    from xaibench.errors import UserError

    with pytest.raises(UserError, match="needs a ViT"):
        tiny_cnn.masked_probs(torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 16, dtype=torch.bool), "drop")


def test_mean_fill_comes_from_the_clean_image(tiny_cnn):
    x = torch.randn(2, 3, 32, 32)
    keep = torch.zeros(2, 1, 16, dtype=torch.bool)
    keep[:, 0, :8] = True
    probs = tiny_cnn.masked_probs(x, keep, "mean")
    pixels = tiny_cnn.patch_keep_to_pixels(keep[:, 0])
    expected = torch.where(pixels[:, None], x, torch.zeros_like(x))  # 0 in normalised space = dataset mean
    torch.testing.assert_close(probs[:, 0], tiny_cnn.probs(expected).detach(), atol=1e-6, rtol=0)
    # the top half is the clean image, the bottom half exactly the mean
    assert pixels[:, :16].all() and not pixels[:, 16:].any()


def test_blur_fill_is_a_blur_of_the_clean_image_and_independent_of_the_mask():
    x = torch.randn(2, 3, 32, 32)
    fill = Removal("blur").fill(x)
    assert fill.shape == (2, 1, 3, 32, 32)
    # a blur preserves the mean of a constant image and smooths noise
    assert fill.std() < x.std()
    const = torch.full((1, 3, 32, 32), 0.7)
    torch.testing.assert_close(Removal("blur").fill(const)[:, 0], const, atol=1e-5, rtol=0)


def test_distractor_draws_are_seeded_by_image_id_and_averaged(tiny_cnn):
    pool = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    removal = Removal("distractor", n_draws=4, distractors=pool, seed=5)
    f1 = removal.fill(torch.zeros(2, 3, 32, 32), ["a", "b"])
    f2 = removal.fill(torch.zeros(2, 3, 32, 32), ["b", "a"])
    assert f1.shape == (2, 4, 3, 32, 32)
    torch.testing.assert_close(f1[0], f2[1])  # the draws follow the id, not the position
    assert not torch.equal(f1[0], f1[1])
    x = torch.randn(2, 3, 32, 32)
    keep = torch.zeros(2, 1, 16, dtype=torch.bool)
    probs = tiny_cnn.masked_probs(x, keep, removal, ids=["a", "b"])
    expected = tiny_cnn.probs(f1[0]).detach().mean(0)  # everything removed: mean over the 4 fills
    torch.testing.assert_close(probs[0, 0], expected, atol=1e-6, rtol=0)


def test_chunking_does_not_change_results(tiny_vit, tiny_cnn):
    x = torch.randn(3, 3, 32, 32)
    keep = _random_keep(3, 5, 16, seed=7)
    for adapter, strategy in ((tiny_vit, "drop"), (tiny_cnn, "mean"), (tiny_cnn, "blur")):
        adapter.chunk_size = 1000
        big = adapter.masked_probs(x, keep, strategy)
        adapter.chunk_size = 2
        small = adapter.masked_probs(x, keep, strategy)
        torch.testing.assert_close(big, small, atol=1e-6, rtol=0)


def test_soft_masks_blend():
    x, fill = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    keep = torch.tensor([[[0.25, 1.0], [0.0, 0.5]]])
    out = Removal.compose(x, keep, fill)
    torch.testing.assert_close(out[0, 0], keep[0])


def test_attribution_pooling_and_upsampling():
    maps = torch.arange(16.0).view(1, 4, 4)
    a = Attribution(maps, "pixel")
    patches = a.patch_scores((2, 2))
    torch.testing.assert_close(patches, torch.tensor([[2.5, 4.5, 10.5, 12.5]]))
    up = Attribution(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), "patch").to_pixels((4, 4))
    assert up[0, 0, :2].tolist() == [1.0, 1.0] and up[0, 3, 3] == 4.0


def test_generators_are_keyed_by_seed_id_and_purpose():
    a = torch.rand(3, generator=generator(0, "img1", "rise"))
    assert torch.equal(a, torch.rand(3, generator=generator(0, "img1", "rise")))
    for other in (generator(1, "img1", "rise"), generator(0, "img2", "rise"), generator(0, "img1", "tie")):
        assert not torch.equal(a, torch.rand(3, generator=other))
