"""Throughput of the attribution methods: maps per second on the embedded default's tiny ViT.

    python perf/bench_methods.py [--methods rise,lrp] [--preset quick] [--batch 32]
        [--batches 2] [--device cpu] [--model xaibench_vit]

Builds the model's architecture with untrained weights (speed does not depend on them), runs
every method on ``--batches`` batches of ``synthetic`` test images and prints maps/s per method
(the first batch is a warm-up and not timed when there are two or more). Methods that need
distractors get a pool of synthetic training images; learned explainers (which need ``fit``)
are skipped.
"""

from __future__ import annotations

import argparse
import time

import torch

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


def build_adapter(model: str, device: str):
    from xaibench.adapter import ModelAdapter
    from xaibench.registry import MODELS

    recipe = MODELS.get(model)()
    torch.manual_seed(0)
    return ModelAdapter(
        recipe.build(10),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        input_size=recipe.input_size,
        device=device,
        name=f"{model} (untrained)",
    )


def main(argv=None) -> None:
    from xaibench.datasets import load_dataset
    from xaibench.methods import FitContext, create_method

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(POSTHOC))
    p.add_argument("--preset", default="quick", choices=["quick", "paper"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="xaibench_vit")
    args = p.parse_args(argv)

    adapter = build_adapter(args.model, args.device)
    size = adapter.input_size[0]
    n = args.batch * args.batches
    test = load_dataset("synthetic", "test", n_test=n, image_size=size)
    x_all = adapter.normalize(torch.stack([test[i].image for i in range(n)]))
    ids_all = [test[i].id for i in range(n)]
    with torch.no_grad():
        target_all = adapter.logits(x_all).argmax(1)
    train = load_dataset("synthetic", "train", n_train=256, image_size=size)
    pool = adapter.normalize(torch.stack([train[i].image for i in range(len(train))]))
    print(
        f"{adapter.name}: {adapter.describe()['grid']} patches, batch {args.batch}, preset {args.preset}, "
        f"device {args.device}, {torch.get_num_threads()} threads"
    )
    print(f"{'method':24s} {'maps/s':>10s}  settings")
    for name in args.methods.split(","):
        method = create_method(name, preset=args.preset)
        if method.applies_to(adapter) is not None or method.requires.training:
            print(f"{name:24s} {'skipped':>10s}  {method.applies_to(adapter) or 'needs training'}")
            continue
        if method.requires.distractors:
            method.fit(adapter, None, FitContext(cache_dir="unused", preset=args.preset, distractors=pool))
        timed, seconds = 0, 0.0
        for b in range(args.batches):
            sl = slice(b * args.batch, (b + 1) * args.batch)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            method.attribute(adapter, x_all[sl], target_all[sl], ids=ids_all[sl])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if b > 0 or args.batches == 1:
                seconds += time.perf_counter() - t
                timed += len(ids_all[sl])
        params = {k: v for k, v in method.settings().items() if k not in ("preset", "seed")}
        print(f"{name:24s} {timed / seconds:10.1f}  {params}", flush=True)


if __name__ == "__main__":
    main()
