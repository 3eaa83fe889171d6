"""Mask optimisation: cost of optimising each image on its own vs all images of a batch jointly.

    OMP_NUM_THREADS=1 python perf/maskopt_batching.py [--images 32] [--steps 20] [--distractors 3]
        [--repeats 2] [--cache-dir /tmp/posthoc-cache] [--out perf/maskopt_batching.result.json]

``mask_optimisation`` optimises every image alone (B forward+backward passes of D blends per
step), so that a batch gives bit-for-bit the maps of its images explained one at a time. The
alternative it replaced optimises the batch jointly (one pass of B·D blends per step, the
images' losses summed), which is cheaper per image but lets the kernels round differently for
different batch sizes. This script times both on the same images (the trained tiny ViT
``xaibench_vit`` on ``synthetic``, the ``quick`` preset's 20 steps × 3 distractors by default),
alternating them ``--repeats`` times, and reports the ratio of the medians, the batch-vs-single
agreement of each (max |difference| over the map range, 4 images), and the difference between
the two procedures' maps. Timings on a shared 2-core CPU are unreliable; the ratio within one run
is the number to read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def joint(method, adapter, x, target, ids):
    """The replaced procedure: one W (B, h, w) and one Adam for the batch, one pass of B·D blends."""
    from xaibench.methods.maskopt import upsample
    from xaibench.removal import Removal
    from xaibench.seeding import generator

    steps, D, s = (int(getattr(method.params, k)) for k in ("steps", "n_distractors", "upsample"))
    B, _, H, W = x.shape
    pool = method.distractors
    gens = [generator(method.seed, i, "maskopt") for i in ids]
    w = torch.zeros(B, math.ceil(H / s), math.ceil(W / s), requires_grad=True)
    opt = torch.optim.Adam([w], lr=float(method.params.lr))
    for _ in range(steps):
        picks = torch.stack([torch.randint(0, len(pool), (D,), generator=g) for g in gens])
        M = upsample(w.sigmoid(), (H, W))
        mixed = Removal.compose(x.repeat_interleave(D, 0), M.repeat_interleave(D, 0), pool[picks.flatten()])
        p = F.softmax(adapter.logits(mixed).float(), -1).gather(1, target.repeat_interleave(D)[:, None])
        p = p.view(B, D).mean(1)
        loss = (-torch.log(p.clamp_min(1e-12)) + method.regulariser(M)).sum()
        (w.grad,) = torch.autograd.grad(loss, w)
        opt.step()
    return upsample(w.detach().sigmoid(), (H, W))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--distractors", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache-dir", default="/tmp/posthoc-cache")
    ap.add_argument("--out", default="perf/maskopt_batching.result.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from xaibench.datasets import load_dataset
    from xaibench.methods import FitContext, create_method
    from xaibench.models import load_model

    adapter = load_model("xaibench_vit", cache_dir=args.cache_dir)
    test = load_dataset("synthetic", "test")
    train = load_dataset("synthetic", "train")
    samples = [test[i] for i in range(args.images)]
    x = adapter.normalize(torch.stack([s.image for s in samples]))
    ids = [s.id for s in samples]
    pool = adapter.normalize(torch.stack([train[i].image for i in range(64)]))
    with torch.no_grad():
        target = adapter.probs(x).argmax(1)
    method = create_method("mask_optimisation", steps=args.steps, n_distractors=args.distractors)
    method.fit(adapter, None, FitContext(cache_dir="unused", distractors=pool))

    times = {"per_image": [], "joint": []}
    maps = {}
    for _ in range(args.repeats):
        with torch.enable_grad():
            t = time.perf_counter()
            maps["joint"] = joint(method, adapter, x, target, ids)
            times["joint"].append(time.perf_counter() - t)
        t = time.perf_counter()
        maps["per_image"] = method.attribute(adapter, x, target, ids=ids).maps
        times["per_image"].append(time.perf_counter() - t)

    def batch_vs_single(fn):
        batched = fn(x[:4], target[:4], ids[:4])
        single = torch.cat([fn(x[i : i + 1], target[i : i + 1], ids[i : i + 1]) for i in range(4)])
        return float((batched - single).abs().max() / batched.abs().max())

    with torch.enable_grad():
        bvs_joint = batch_vs_single(lambda a, b, c: joint(method, adapter, a, b, c))
    bvs_own = batch_vs_single(lambda a, b, c: method.attribute(adapter, a, b, ids=c).maps)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "model": "xaibench_vit (trained, cached), synthetic test images",
        "images": args.images,
        "steps": args.steps,
        "distractors": args.distractors,
        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "seconds_per_image": {k: round(v / args.images, 4) for k, v in med.items()},
        "ratio_per_image_over_joint": round(med["per_image"] / med["joint"], 2),
        "batch_vs_single_max_diff_over_range": {"per_image": bvs_own, "joint": bvs_joint},
        "per_image_vs_joint_max_abs_diff": float((maps["per_image"] - maps["joint"]).abs().max()),
        "note": "shared 2-core CPU, 1 torch thread: absolute timings are unreliable; read the ratio",
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
