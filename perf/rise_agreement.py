"""RISE: agreement of two mask seeds vs the number of masks on the embedded default.

    OMP_NUM_THREADS=1 python perf/rise_agreement.py [--images 32] [--max-masks 8000]
        [--counts 384,512,768,1000,2000,4000,8000] [--cache-dir /tmp/posthoc-cache]
        [--out perf/rise_agreement.result.json]

Model: the trained tiny ViT ``xaibench_vit`` on ``synthetic`` (trained on first use and cached in
``--cache-dir``), the first ``--images`` test images (the default run explains the first 200),
target = predicted class, patch-level RISE (p = 0.5, token dropping), as the default run does.

For each mask seed (0 and 1) every image draws its masks from the generator RISE itself uses,
seeding.generator(seed, id, "rise"), and the target probability of every masked input is computed
once; the map with n masks is the estimator over the first n masks (the same masks RISE draws with
``n_masks = n``; checked against ``RISE.attribute`` for one n). Two samplers of the same masks:

- ``independent``: the paper's i.i.d. masks m_1..m_n.
- ``paired``: m_1, 1 − m_1, m_2, 1 − m_2, … (n/2 draws and their complements; each mask is still
  Bernoulli(p = 0.5) per patch, so the estimator's expectation is the same).

Reported per n: the mean (and median, 10th percentile) over images of the Spearman correlation
of the two seeds' maps over all 64 patches, the mean Pearson correlation, the mean overlap of
their top-8 patches, and the mean Spearman of each map with a reference map (the mean of both
seeds' paired maps at the largest n). Over all masks: how often p_c(masked x) > 0.99, and how many
patches per image change p_c detectably (|Welch t| > 3 between the masks that keep and remove the
patch, 2 × max-masks independent masks). Then the cost of RISE at the ``quick`` preset: seconds per
image of ``RISE.attribute`` for the predicted class, and of the second-label call that follows
(completeness), answered from the same masks; and, in the same run, the cost of the previous quick
preset (384 independent masks, both labels computed).

``--probs-cache`` keeps the masked probabilities (the expensive part, ~15–25 min on one busy
core) so that the analysis can be rerun; the numbers do not depend on it.
Timings on a shared 2-core CPU are unreliable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from scipy.stats import spearmanr


def masked_target_probs(adapter, x, keep, target, chunk=512):
    """(B, M) target probabilities of the masked inputs, M masks per image."""
    out = []
    for s in range(0, keep.shape[1], chunk):
        out.append(adapter.masked_probs(x, keep[:, s : s + chunk], "drop", target=target))
    return torch.cat(out, 1)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--max-masks", type=int, default=8000)
    ap.add_argument("--counts", default="384,512,768,1000,2000,4000,8000")
    ap.add_argument("--cache-dir", default="/tmp/posthoc-cache")
    ap.add_argument("--out", default="perf/rise_agreement.result.json")
    ap.add_argument("--probs-cache", default=None, help="reuse the masked probabilities from this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from xaibench.datasets import load_dataset
    from xaibench.methods import create_method
    from xaibench.models import load_model
    from xaibench.seeding import generator

    adapter = load_model("xaibench_vit", cache_dir=args.cache_dir)
    data = load_dataset("synthetic", "test")
    samples = [data[i] for i in range(args.images)]
    x = adapter.normalize(torch.stack([s.image for s in samples]))
    ids = [s.id for s in samples]
    with torch.no_grad():
        target = adapter.probs(x).argmax(1)
    counts = [int(c) for c in args.counts.split(",")]
    nmax, P, p = args.max_masks, adapter.num_patches, 0.5

    t0 = time.time()
    keep, f, f_comp = {}, {}, {}
    for seed in (0, 1):
        keep[seed] = torch.stack([torch.rand(nmax, P, generator=generator(seed, i, "rise")) < p for i in ids])
    if args.probs_cache and os.path.exists(args.probs_cache):
        cached = torch.load(args.probs_cache)
        f, f_comp, seconds = cached["f"], cached["f_comp"], cached["seconds"]
    else:
        for seed in (0, 1):
            f[seed] = masked_target_probs(adapter, x, keep[seed], target)
            f_comp[seed] = masked_target_probs(adapter, x, ~keep[seed][:, : nmax // 2], target)
        seconds = time.time() - t0
        if args.probs_cache:
            torch.save({"f": f, "f_comp": f_comp, "seconds": seconds}, args.probs_cache)
    forwards = 2 * len(ids) * (nmax + nmax // 2)

    def independent(seed, n):
        return torch.einsum("bm,bmp->bp", f[seed][:, :n], keep[seed][:, :n].float()) / (n * p)

    def paired(seed, n):
        h = n // 2
        k = keep[seed][:, :h].float()
        return (
            torch.einsum("bm,bmp->bp", f[seed][:, :h], k)
            + torch.einsum("bm,bmp->bp", f_comp[seed][:, :h], 1 - k)
        ) / (2 * h * p)

    # the prefix estimator is RISE itself
    check_n = counts[0]
    rise = create_method("rise", n_masks=check_n, seed=0)
    got = rise.attribute(adapter, x[:4], target[:4], ids=ids[:4]).maps.flatten(1)
    check = float((got - independent(0, check_n)[:4]).abs().max())

    def rhos(a, b):
        return np.array([spearmanr(a[i].numpy(), b[i].numpy())[0] for i in range(len(a))])

    def pearsons(a, b):
        return np.array([np.corrcoef(a[i].numpy(), b[i].numpy())[0, 1] for i in range(len(a))])

    def top_overlap(a, b, k=8):
        ta, tb = a.topk(k, 1).indices, b.topk(k, 1).indices
        return np.array([len(set(ta[i].tolist()) & set(tb[i].tolist())) / k for i in range(len(a))])

    reference = (paired(0, nmax) + paired(1, nmax)) / 2
    table = []
    for n in counts:
        row = {"n_masks": n}
        for name, est in (("independent", independent), ("paired", paired)):
            r = rhos(est(0, n), est(1, n))
            ref = rhos(est(0, n), reference)
            a, b = est(0, n), est(1, n)
            row[name] = {
                "seed_spearman_mean": round(float(np.nanmean(r)), 3),
                "seed_spearman_median": round(float(np.nanmedian(r)), 3),
                "seed_spearman_p10": round(float(np.nanpercentile(r, 10)), 3),
                "seed_pearson_mean": round(float(np.nanmean(pearsons(a, b))), 3),
                "seed_top8_overlap_mean": round(float(top_overlap(a, b).mean()), 3),
                "spearman_to_reference_mean": round(float(np.nanmean(ref)), 3),
            }
        table.append(row)
        print(json.dumps(row), flush=True)
    # which patches change p_c detectably: Welch t of p_c with the patch kept vs removed, over all
    # 2 × max-masks independent masks of both seeds
    fa = torch.cat([f[0], f[1]], 1).double()
    ka = torch.cat([keep[0], keep[1]], 1)
    t_stats = []
    for i in range(len(ids)):
        ts = []
        for j in range(P):
            on, off = fa[i][ka[i, :, j]], fa[i][~ka[i, :, j]]
            se = (on.var() / len(on) + off.var() / len(off)).sqrt()
            ts.append(float((on.mean() - off.mean()) / se) if se > 0 else 0.0)
        t_stats.append(ts)
    t_stats = np.abs(np.array(t_stats))
    allf = torch.cat([f[0].flatten(), f[1].flatten()])
    result = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "model": "xaibench_vit (trained, cached)",
        "images": args.images,
        "targets": "predicted class",
        "max_masks": nmax,
        "reference": f"mean of both seeds' paired maps at {nmax} masks",
        "prefix_equals_rise_attribute_max_abs_diff": check,
        "patches_with_abs_t_gt_3_mean": round(float((t_stats > 3).sum(1).mean()), 2),
        "patches_with_abs_t_gt_3_per_image": (t_stats > 3).sum(1).tolist(),
        "p_c_masked_gt_0.99_fraction": round(float((allf > 0.99).double().mean()), 4),
        "p_c_masked_mean": round(float(allf.double().mean()), 4),
        "p_c_clean_mean": round(float(adapter.probs(x).detach().gather(1, target[:, None]).mean()), 4),
        "table": table,
        "masked_forwards": forwards,
        "seconds": round(seconds, 1),
        "ms_per_masked_forward": round(1000 * seconds / forwards, 4),
        "note": "timings on a shared 2-core CPU (1 torch thread) are unreliable",
    }
    # the cost of the quick preset: the target, then the second label (completeness's next call)
    quick = create_method("rise", preset="quick", seed=0)
    with torch.no_grad():
        second = adapter.probs(x).topk(2, 1).indices[:, 1]
    t = time.time()
    quick.attribute(adapter, x, target, ids=ids)
    t_first = time.time() - t
    t = time.time()
    quick.attribute(adapter, x, second, ids=ids)
    t_second = time.time() - t
    # the previous quick preset on the same images: 384 independent masks, the second label recomputed
    t = time.time()
    create_method("rise", n_masks=384, sampling="independent").attribute(adapter, x, target, ids=ids)
    create_method("rise", n_masks=384, sampling="independent").attribute(adapter, x, second, ids=ids)
    t_previous = time.time() - t
    result["quick_preset"] = {
        "settings": quick.settings(),
        "seconds_per_image": round(t_first / len(ids), 4),
        "second_label_seconds_per_image": round(t_second / len(ids), 4),
        "previous_quick_both_labels_seconds_per_image": round(t_previous / len(ids), 4),
        "ratio_both_labels_new_over_previous": round((t_first + t_second) / t_previous, 2),
        "notes": quick.notes(),
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))


if __name__ == "__main__":
    main()
