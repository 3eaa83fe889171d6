"""Shared fixtures: tiny untrained models and a small synthetic split, all seeded.

Tests use these instead of the trained default models so the suite stays fast; a test
that needs a model that *knows* its task trains the tiny one for a few seconds
(``tiny_trained_vit``) or builds a hand-set model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xaibench.adapter import ModelAdapter
from xaibench.datasets import load_dataset

SYNTH_MEAN = (0.5, 0.5, 0.5)
SYNTH_STD = (0.25, 0.25, 0.25)


def make_tiny_vit(
    seed: int = 0,
    img: int = 32,
    patch: int = 8,
    reg_tokens: int = 2,
    num_classes: int = 10,
    depth: int = 2,
    embed_dim: int = 32,
    heads: int = 2,
) -> ModelAdapter:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=img,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=2.0,
        reg_tokens=reg_tokens,
        no_embed_class=True,
        global_pool="token",
        num_classes=num_classes,
    )
    return ModelAdapter(model, mean=SYNTH_MEAN, std=SYNTH_STD, input_size=(img, img), name="tiny_vit")


def make_tiny_cnn(seed: int = 0, img: int = 32, num_classes: int = 10) -> ModelAdapter:
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(seed)
    model = ResNet(
        block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 32, 32), stem_width=8, num_classes=num_classes
    )
    return ModelAdapter(
        model, mean=SYNTH_MEAN, std=SYNTH_STD, input_size=(img, img), patch_size=8, name="tiny_cnn"
    )


@pytest.fixture
def tiny_vit() -> ModelAdapter:
    """Untrained timm ViT: 32×32 input, patch 8 (4×4 = 16 patches), CLS + 2 registers."""
    return make_tiny_vit()


@pytest.fixture
def tiny_cnn() -> ModelAdapter:
    """Untrained timm ResNet: 32×32 input, removal grid of 8-px cells (16 patches)."""
    return make_tiny_cnn()


@pytest.fixture(scope="session")
def synth32():
    """32 test images of ``synthetic`` at 32×32 (images in [0, 1], labels, bool masks, ids)."""
    split = load_dataset("synthetic", "test", n_test=32, image_size=32)
    samples = [split[i] for i in range(len(split))]
    images = torch.stack([s.image for s in samples])
    labels = torch.tensor([s.label for s in samples])
    masks = torch.stack([s.mask for s in samples])
    ids = [s.id for s in samples]
    return images, labels, masks, ids


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train far faster on one thread (no oversubscription on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_trained_vit():
    """The tiny ViT (CLS + 2 registers) after 600 Adam steps on 320 ``synthetic`` images (~2 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train far faster on one thread
    split = load_dataset("synthetic", "train", n_train=320, image_size=32)
    adapter = make_tiny_vit(seed=0)
    images = adapter.normalize(torch.stack([split[i].image for i in range(len(split))]))
    labels = torch.tensor([split[i].label for i in range(len(split))])
    model = adapter.model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        idx = torch.randint(0, len(images), (32,), generator=g)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.set_num_threads(threads)
    with torch.no_grad():
        accuracy = (adapter.logits(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.4, f"the tiny ViT did not learn (train accuracy {accuracy:.2f}, chance 0.1)"
    return adapter, images[:16], labels[:16]
