"""The synthetic dataset: deterministic, prefix-stable, and its masks are exactly the class object."""

from collections import deque

import pytest
import torch

from xaibench.datasets import Sample, TensorSplit, load_dataset, synthetic
from xaibench.datasets.synthetic import CLASS_COLOURS, CLASSES, COLOUR_JITTER, SHAPES, generate
from xaibench.errors import UserError

CLASS_RGB = torch.tensor(list(CLASS_COLOURS.values()))


@pytest.fixture(scope="module")
def data64():
    return generate(200, 3, "val", 64)


def _object_colours(images, masks):
    """The single RGB value of each image's masked pixels (asserts there is only one)."""
    colours = []
    for image, mask in zip(images, masks):
        values = image[:, mask].T.unique(dim=0)
        assert values.shape[0] == 1, f"mask holds {values.shape[0]} colours"
        colours.append(values[0])
    return torch.stack(colours)


def _connected(mask: torch.Tensor) -> bool:
    """Whether the True pixels form one 8-connected component."""
    pixels = {tuple(p) for p in mask.nonzero().tolist()}
    queue, seen = deque([next(iter(pixels))]), set()
    while queue:
        y, x = queue.popleft()
        if (y, x) in seen:
            continue
        seen.add((y, x))
        queue.extend(
            n
            for n in ((y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            if n in pixels and n not in seen
        )
    return seen == pixels


def _shape_signature(masks):
    """Per mask: area / bounding-box area, the filled fraction of the box's middle row,
    and whether the box's centre pixel lies outside the mask (a ring's hole)."""
    n, size = masks.shape[0], masks.shape[-1]
    index, rows, cols = torch.arange(size), masks.any(2), masks.any(1)
    y0, y1 = torch.where(rows, index, size).amin(1), torch.where(rows, index, -1).amax(1)
    x0, x1 = torch.where(cols, index, size).amin(1), torch.where(cols, index, -1).amax(1)
    height, width = y1 - y0 + 1, x1 - x0 + 1
    fill = masks.sum((1, 2)) / (height * width)
    middle_row = masks[torch.arange(n), (y0 + y1) // 2]
    hole = ~middle_row[torch.arange(n), (x0 + x1) // 2]
    return fill, middle_row.sum(1) / width, hole


def test_types_and_shapes(data64):
    images, labels, masks = data64
    assert images.dtype == torch.uint8 and images.shape == (200, 3, 64, 64)
    assert labels.dtype == torch.int64 and labels.shape == (200,)
    assert masks.dtype == torch.bool and masks.shape == (200, 64, 64)
    assert len(CLASSES) == 10 and len(set(CLASSES)) == 10


def test_same_seed_same_data_other_seed_or_split_differs():
    first = generate(30, 5, "train", 32)
    again = generate(30, 5, "train", 32)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], generate(30, 6, "train", 32)[0])
    assert not torch.equal(first[0], generate(30, 5, "test", 32)[0])
    assert not torch.equal(first[2], generate(30, 6, "train", 32)[2])


def test_image_does_not_depend_on_split_size_or_batching(monkeypatch):
    large = generate(60, 1, "test", 32)
    for k in (1, 25, 59):
        small = generate(k, 1, "test", 32)
        for a, b in zip(small, large):
            assert torch.equal(a, b[:k])
    monkeypatch.setattr(synthetic, "_RENDER_BATCH", 7)
    for a, b in zip(generate(60, 1, "test", 32), large):
        assert torch.equal(a, b)


def test_labels_balanced(data64):
    labels = data64[1]
    assert labels.min() >= 0 and labels.max() < len(CLASSES)
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 20))
    assert set(generate(10, 9, "train", 32)[1].tolist()) == set(range(10))


@pytest.mark.parametrize("size", [64, 32])
def test_mask_is_exactly_the_object(size, data64):
    images, labels, masks = data64 if size == 64 else generate(100, 3, "val", 32)
    colours = _object_colours(images, masks)
    # the object's colour is its class colour, up to the jitter
    expected = CLASS_RGB[labels // len(SHAPES)]
    assert (colours.int() - expected).abs().max() <= COLOUR_JITTER
    # no pixel outside the mask has the object's colour
    same_colour = (images == colours.view(-1, 3, 1, 1)).all(1)
    assert not (same_colour & ~masks).any()
    # area in the range of shapes 14-28 px across (scaled), and one connected piece
    area = masks.sum((1, 2)).float() / (size / 64) ** 2
    assert area.min() >= 40 and area.max() <= 700
    rows, cols = masks.any(2), masks.any(1)
    extent = torch.maximum(rows.sum(1), cols.sum(1)).float() / (size / 64)
    assert extent.min() >= 8 and extent.max() <= 30
    if size == 64:
        assert all(_connected(mask) for mask in masks)


def test_no_class_colour_outside_the_mask(data64):
    images, _, masks = data64
    pixels = images.permute(0, 2, 3, 1)[~masks].int()  # (P, 3)
    distance = (pixels[:, None, :] - CLASS_RGB[None]).abs().amax(-1)  # to each class colour
    assert distance.min() > 2 * COLOUR_JITTER
    # distractors are there: saturated pixels outside the mask in most images
    spread = images.int().amax(1) - images.int().amin(1)
    with_saturated = ((spread > 80) & ~masks).flatten(1).any(1)
    assert with_saturated.float().mean() > 0.5
    # and the background is not flat
    assert (images.float().std((2, 3)) > 5).all()


def test_object_shape_matches_label(data64):
    _, labels, masks = data64  # at 64 px: at 32 px the smallest cross and circle look alike
    fill, middle_row, hole = _shape_signature(masks)
    shape = labels % len(SHAPES)
    signature = {
        "circle": (fill > 0.65) & (fill < 0.92) & (middle_row > 0.8) & ~hole,
        "square": fill == 1,
        "triangle": (fill < 0.8) & (middle_row < 0.8) & ~hole,
        "cross": (fill < 0.65) & (middle_row == 1),
        "ring": hole,
    }
    for index, name in enumerate(SHAPES):
        assert torch.equal(signature[name], shape == index), name


def test_load_dataset_returns_tensor_split():
    split = load_dataset("synthetic", "test", n_test=20)
    assert isinstance(split, TensorSplit) and len(split) == 20 and split.has_masks
    assert split.name == "synthetic" and split.split == "test" and list(split.classes) == CLASSES
    sample = split[3]
    assert isinstance(sample, Sample) and sample.id == "synthetic-test-00003"
    assert sample.image.dtype == torch.float32 and sample.image.shape == (3, 64, 64)
    assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
    assert isinstance(sample.label, int) and 0 <= sample.label < 10
    assert sample.mask.dtype == torch.bool and sample.mask.shape == (64, 64)
    assert load_dataset("synthetic", "test", n_test=20).images is split.images  # cached
    longer = load_dataset("synthetic", "test", n_test=40)
    assert torch.equal(longer.images[:20], split.images) and longer.ids[:20] == split.ids


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(n_test=0), "n_test"),
        (dict(n_train=-5), "n_train"),
        (dict(n_val=2.5), "n_val"),
        (dict(image_size=16), "image_size"),
        (dict(seed="zero"), "seed"),
    ],
)
def test_bad_arguments_raise(options, name):
    with pytest.raises(ValueError, match=name) as caught:
        load_dataset("synthetic", "test", **options)
    assert isinstance(caught.value, UserError)


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must"):
        generate(0, 0, "test")
    with pytest.raises(ValueError, match="split"):
        generate(5, 0, "holdout")
