"""Plugin: the colour photographs that ship with scikit-image as an ImageNet-labelled dataset.

    xaibench --plugin perf/skimage_photos.py run --dataset skimage_photos --model tf_efficientnet_lite0 \\
        --weights LITE0.pth --methods saliency,gradcam,random

Registers ``skimage_photos``: five photographs of different sizes and aspect ratios (the cat
"chelsea" 451×300, "coffee" 600×400, "rocket" 640×427, "astronaut" 512×512 and the left view of
"stereo_motorcycle" 741×500), written once as PNG files into ``<cache>/datasets/skimage_photos/``
and read back as an image-file split (so a run applies the model's own preprocessing to them),
with the 1000 ImageNet class names of timm. Labels are the closest ImageNet class (they only
matter with ``--target label``; the astronaut has none and is labelled 0). Every split is the same
five images. Needs ``scikit-image`` (in the ``test`` extra).
"""

from __future__ import annotations

from pathlib import Path

from xaibench.datasets import register_dataset
from xaibench.datasets.folder import ImageFileSplit, ImageRecord
from xaibench.io import cache_dir as cache_root

NAME = "skimage_photos"
#: photograph → (closest ImageNet class, how scikit-image returns it)
PHOTOS = {
    "chelsea": 285,  # Egyptian cat
    "coffee": 967,  # espresso
    "rocket": 657,  # missile
    "astronaut": 0,  # no ImageNet class
    "stereo_motorcycle": 670,  # motor scooter (the closest class)
}


def _image(name: str):
    import skimage.data

    out = getattr(skimage.data, name)()
    return out[0] if isinstance(out, tuple) else out  # stereo_motorcycle: (left, right, disparity)


def write_photos(directory: Path) -> list:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for name, label in PHOTOS.items():
        path = directory / f"{name}.png"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            Image.fromarray(_image(name)).save(tmp, format="PNG")
            tmp.replace(path)
        records.append(ImageRecord(str(path), label, name))
    return records


@register_dataset(NAME, overwrite=True)  # the plugin may be imported again (plot, report)
def skimage_photos(split: str = "test", *, cache_dir=None, data_root=None, **_) -> ImageFileSplit:
    """scikit-image's colour photographs (5 images, ImageNet classes): a real-photo smoke test."""
    from timm.data import ImageNetInfo

    directory = Path(data_root) if data_root else cache_root(cache_dir) / "datasets" / NAME
    info = ImageNetInfo()
    classes = [info.index_to_description(i) for i in range(1000)]
    return ImageFileSplit(NAME, split, classes, write_photos(directory), root=str(directory))
