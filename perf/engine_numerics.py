"""Removal engine numerics: do results depend on the pass size, and what does bf16/fp16 autocast
do to the scores?

Run:  .venv/bin/python perf/engine_numerics.py [--images 32] [--threads 1]
      [--trained DIR]   (DIR holds model.pt + meta.json of a trained ``xaibench_vit``, e.g. a
                         cache entry <cache>/models/xaibench_vit-<hash>/)
      [--out perf/engine_numerics.result.json]

1. Pass size: the masked probabilities of MIF + LIF masks (every cardinality) on the default
   ViT architecture, for ``drop`` and ``mean``, at pass sizes 1, 7, 16, 64, 256 and the memory
   ceiling: the largest absolute difference to the pass size 64 (0 means bitwise identical;
   the engine runs at least 4 inputs per pass, so sizes 1 to 3 act as 4).
2. Autocast: MIF / LIF / SRG (×100, every cardinality) with ``EvalContext(amp=...)`` against
   float32, on the synthetic test images, for the tiny test models (untrained ViT and ResNet at
   32×32) and the default ViT (untrained, and trained with ``--trained``), random patch maps
   (seeded): the largest and mean absolute difference per image, and of the mean over images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def default_vit(trained_dir=None):
    from xaibench.adapter import ModelAdapter
    from xaibench.models import xaibench_vit

    recipe = xaibench_vit()
    torch.manual_seed(0)
    model = recipe.build(10)
    mean, std, name = (0.5,) * 3, (0.25,) * 3, "xaibench_vit (untrained)"
    if trained_dir:
        with open(os.path.join(trained_dir, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        model.load_state_dict(torch.load(os.path.join(trained_dir, "model.pt"), weights_only=True))
        mean, std, name = meta["mean"], meta["std"], "xaibench_vit (trained)"
    return ModelAdapter(model, mean=mean, std=std, input_size=recipe.input_size, name=name)


def tiny_models():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from conftest import make_tiny_cnn, make_tiny_vit

    return [make_tiny_vit(), make_tiny_cnn()]


def images(adapter, n):
    from xaibench.datasets import load_dataset

    split = load_dataset("synthetic", "test", n_test=n, image_size=adapter.input_size[0])
    samples = [split[i] for i in range(len(split))]
    x = adapter.normalize(torch.stack([s.image for s in samples]))
    return x, [s.id for s in samples]


def batch_of(adapter, x, ids):
    from xaibench.metrics import Batch

    probs = adapter.probs(x).detach()
    return Batch(x=x, labels=probs.argmax(1), targets=probs.argmax(1), ids=ids, probs=probs)


def pass_size_effect(adapter, x, ids):
    from xaibench.metrics.ranking import keep_first, ranked_order

    g = torch.Generator().manual_seed(1)
    scores = torch.randn(len(x), adapter.num_patches, generator=g)
    ks = torch.arange(1, adapter.num_patches + 1)
    keep = torch.cat(
        [
            keep_first(ranked_order(scores, ids, 0, True), ks),
            keep_first(ranked_order(scores, ids, 0, False), ks),
        ],
        1,
    )
    out = {}
    for strategy in ("drop", "mean"):
        probs = {}
        for rows in (1, 7, 16, 64, 256, adapter.budget.ceiling()):
            adapter.chunk_size = rows
            probs[rows] = adapter.masked_probs(x, keep, strategy)
        out[strategy] = {str(r): float((p - probs[64]).abs().max()) for r, p in probs.items()}
    adapter.budget.forward_rows = None
    return out


def amp_effect(adapter, x, ids, strategies):
    from xaibench.attribution import Attribution
    from xaibench.metrics import EvalContext, create_metric
    from xaibench.removal import Removal

    batch = batch_of(adapter, x, ids)
    g = torch.Generator().manual_seed(2)
    attr = Attribution(torch.randn(len(x), *adapter.grid, generator=g), "patch")
    metric = create_metric("srg")
    out = {}
    for strategy in strategies:
        ref = metric.compute(EvalContext(adapter, Removal(strategy), seed=0), batch, attr).scores
        for amp in ("bf16", "fp16"):
            low = metric.compute(EvalContext(adapter, Removal(strategy), seed=0, amp=amp), batch, attr).scores
            out[f"{strategy}/{amp}"] = {
                name: {
                    "max_abs_per_image": round(float((low[name] - ref[name]).abs().max()), 4),
                    "mean_abs_per_image": round(float((low[name] - ref[name]).abs().mean()), 4),
                    "abs_of_mean": round(float((low[name].mean() - ref[name].mean()).abs()), 4),
                    "float32_mean": round(float(ref[name].mean()), 3),
                }
                for name in ("mif", "lif", "srg")
            }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trained", default=None, help="directory with model.pt + meta.json of xaibench_vit")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "torch": torch.__version__}
    vit = default_vit()
    x, ids = images(vit, args.images)
    result["pass_size_max_abs_diff_vs_64"] = pass_size_effect(vit, x, ids)
    print(json.dumps(result["pass_size_max_abs_diff_vs_64"], indent=1), flush=True)
    models = tiny_models() + [vit] + ([default_vit(args.trained)] if args.trained else [])
    result["autocast"] = {}
    for adapter in models:
        x, ids = images(adapter, args.images)
        strategies = ("drop", "mean") if adapter.is_vit else ("mean",)
        result["autocast"][adapter.name] = amp_effect(adapter, x, ids, strategies)
        print(adapter.name, json.dumps(result["autocast"][adapter.name]), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
