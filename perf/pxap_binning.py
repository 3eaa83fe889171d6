"""PxAP with wsolevaluation's bins vs the previous binning, on real maps of the embedded default.

    OMP_NUM_THREADS=1 python perf/pxap_binning.py [--images 200] [--cache-dir /tmp/posthoc-cache]
        [--out perf/pxap_binning.result.json]

The previous binning put a min-max-normalised score of exactly 1.0 (the maximum of every map;
a whole patch of pixels for patch-level maps) into the bin [0.999, 1); wsolevaluation's
``MaskEvaluator`` gives it its own bin [1, 2). This script explains the first ``--images`` test
images of ``synthetic`` with the trained tiny ViT ``xaibench_vit`` (predicted class) by the cheap
post-hoc methods and reports PxAP (×100) under both binnings; the previous binning is re-implemented
here (bin ⌊s·1000⌋, 1.0 into the last bin).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def previous_pxap(maps: torch.Tensor, masks: torch.Tensor, T: int = 1000) -> float:
    from xaibench.attribution import minmax

    s = minmax(maps.float())
    b = (s * T).floor().long().clamp(0, T - 1)
    pos = torch.bincount(b[masks], minlength=T).double()
    neg = torch.bincount(b[~masks], minlength=T).double()
    tp, fp = pos.flip(0).cumsum(0), neg.flip(0).cumsum(0)
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.zeros_like(tp))
    recall = tp / pos.sum()
    return float(100 * (precision * torch.diff(recall, prepend=recall.new_zeros(1))).sum())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--cache-dir", default="/tmp/posthoc-cache")
    ap.add_argument("--out", default="perf/pxap_binning.result.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from xaibench.attribution import Attribution
    from xaibench.datasets import load_dataset
    from xaibench.methods import create_method
    from xaibench.metrics.pxap import pxap_from_histograms, pxap_histograms
    from xaibench.metrics.ranking import pixel_maps
    from xaibench.models import load_model

    adapter = load_model("xaibench_vit", cache_dir=args.cache_dir)
    data = load_dataset("synthetic", "test")
    samples = [data[i] for i in range(args.images)]
    images = torch.stack([s.image for s in samples])
    masks = torch.stack([s.mask for s in samples]).bool()
    ids = [s.id for s in samples]
    methods = [
        "saliency",
        "gradcam",
        "eigencam",
        "attention_rollout",
        "attention_last",
        "gae",
        "lrp",
        "random",
    ]
    rows = {}
    for name in methods:
        method = create_method(name, preset="quick")
        parts = []
        for s in range(0, len(ids), 32):
            x = adapter.normalize(images[s : s + 32])
            with torch.no_grad():
                target = adapter.probs(x).argmax(1)
            attr = method.attribute(adapter, x, target, ids=ids[s : s + 32])
            parts.append(pixel_maps(attr, masks.shape[-2:]).detach())
        maps = torch.cat(parts)
        flat_masks = masks.flatten(1)
        new = pxap_from_histograms(pxap_histograms(maps, flat_masks))
        old = previous_pxap(maps, flat_masks)
        level = attr.level
        at_max = float((maps == maps.amax(1, keepdim=True)).sum(1).double().mean())
        rows[name] = {
            "level": level,
            "pxap_wsolevaluation_bins": round(new, 3),
            "pxap_previous_bins": round(old, 3),
            "difference": round(new - old, 3),
            "pixels_at_the_maximum_per_image": round(at_max, 1),
        }
        print(name, rows[name], flush=True)
    oracle = Attribution(masks.float(), "pixel")
    o = pixel_maps(oracle, masks.shape[-2:])
    rows["oracle"] = {
        "pxap_wsolevaluation_bins": round(pxap_from_histograms(pxap_histograms(o, masks.flatten(1))), 3),
        "pxap_previous_bins": round(previous_pxap(o, masks.flatten(1)), 3),
    }
    result = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "model": "xaibench_vit (trained, cached); synthetic test images; target = predicted class",
        "images": args.images,
        "methods": rows,
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
