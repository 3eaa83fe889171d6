"""Removal engine throughput: engine vs the model's best plain forward, and ``drop`` vs ``mean``.

Run:  .venv/bin/python perf/engine_throughput.py [--threads 1 2] [--images 32] [--repeats 3]
      [--device cpu] [--trained --cache-dir /tmp/engine-cache] [--out perf/engine_throughput.result.json]

The work is MIF + LIF at every cardinality (``InsertionMetrics.compute``: ranking, masks,
removal, model) on ``--images`` images of the default ``xaibench_vit`` architecture (64×64,
patch 8, 64 patches, CLS + 4 registers; untrained unless ``--trained``: the speed does not
depend on the weights): 128 masked forwards per image. For each thread count it reports

- ``plain``: the model alone on the same mean-filled inputs, prepared before the clock starts,
  at several batch sizes (the best one is the reference);
- ``engine mean`` / ``engine drop``: the metric with the calibrated pass size;
- ``engine mean @ memory ceiling``: the metric with passes as large as the memory budget allows
  (the engine's previous behaviour);
- the ratios engine mean / best plain (target ≥ 0.95) and drop / mean (target ≥ 1.8).

Every number is the median of ``--repeats`` repetitions, the configurations interleaved within
each repetition so that a change of machine load hits them alike. Prints a Markdown table and
writes the numbers, the chosen pass sizes, the load average and the command as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

PLAIN_SIZES = (16, 32, 64, 128, 256)


def build_adapter(device, trained: bool, cache_dir: str):
    from xaibench.adapter import ModelAdapter
    from xaibench.models import load_model, xaibench_vit

    if trained:
        return load_model("xaibench_vit", cache_dir=cache_dir, device=device)
    recipe = xaibench_vit()
    torch.manual_seed(0)
    model = recipe.build(10)
    return ModelAdapter(
        model,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        input_size=recipe.input_size,
        device=device,
        name="xaibench_vit (untrained)",
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def workload(adapter, n_images: int, device):
    """Images, maps, batches and the MIF/LIF keep-masks of the work (seeded)."""
    from xaibench.attribution import Attribution
    from xaibench.metrics import Batch
    from xaibench.metrics.ranking import keep_first, ranked_order

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_images, 3, *adapter.input_size, generator=g).to(device)
    maps = torch.randn(n_images, *adapter.grid, generator=g).to(device)
    ids = [f"bench{i}" for i in range(n_images)]
    probs = adapter.probs(x).detach()
    batch = Batch(x=x, labels=probs.argmax(1), targets=probs.argmax(1), ids=ids, probs=probs)
    attr = Attribution(maps, "patch")
    ks = torch.arange(1, adapter.num_patches + 1)
    scores = attr.patch_scores(adapter.grid)
    keep = torch.cat(
        [
            keep_first(ranked_order(scores, ids, 0, True), ks),
            keep_first(ranked_order(scores, ids, 0, False), ks),
        ],
        1,
    )
    return batch, attr, keep


def time_metric(adapter, batch, attr, strategy, chunk=None) -> float:
    from xaibench.metrics import EvalContext, create_metric
    from xaibench.removal import Removal

    before = adapter.budget.forward_rows
    adapter.budget.forward_rows = chunk
    try:
        ctx = EvalContext(adapter, Removal(strategy), seed=0)
        metric = create_metric("srg")
        sync(batch.x.device)
        t = time.perf_counter()
        metric.compute(ctx, batch, attr)
        sync(batch.x.device)
        return time.perf_counter() - t
    finally:
        adapter.budget.forward_rows = before


def time_plain(adapter, inputs, size) -> float:
    """Seconds of the model alone on ``inputs`` in batches of ``size`` (softmax included)."""
    with torch.inference_mode():
        sync(inputs.device)
        t = time.perf_counter()
        for s in range(0, len(inputs), size):
            adapter.logits(inputs[s : s + size]).float().softmax(-1)
        sync(inputs.device)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--plain-inputs", type=int, default=1024, help="masked inputs per plain-forward timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--trained", action="store_true", help="the trained default ViT (trains it once)")
    ap.add_argument("--cache-dir", default="/tmp/engine-cache")
    ap.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    args = ap.parse_args()
    device = torch.device(args.device)
    adapter = build_adapter(device, args.trained, args.cache_dir)
    batch, attr, keep = workload(adapter, args.images, device)
    n_inputs = keep.shape[0] * keep.shape[1]
    pix = adapter.patch_keep_to_pixels(keep).reshape(n_inputs, *adapter.input_size)
    filled = (batch.x.repeat_interleave(keep.shape[1], 0) * pix[:, None])[: args.plain_inputs]
    ceiling = adapter.budget.ceiling()
    results = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "model": adapter.name,
        "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "images": args.images,
        "masked_inputs": n_inputs,
        "memory_ceiling_rows": ceiling,
        "load_average_before": os.getloadavg(),
        "threads": {},
    }
    rows_md = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        t = time.perf_counter()
        chunk = adapter.budget.rows()
        calib_s = time.perf_counter() - t
        time_metric(adapter, batch, attr, "drop")  # warm-up
        time_metric(adapter, batch, attr, "mean")
        sizes = sorted(set(PLAIN_SIZES + (chunk, ceiling)))
        samples = {f"plain@{s}": [] for s in sizes}
        samples.update({"engine mean": [], "engine drop": [], "engine mean @ ceiling": []})
        for _ in range(args.repeats):
            for s in sizes:
                samples[f"plain@{s}"].append(len(filled) / time_plain(adapter, filled, s))
            samples["engine mean"].append(n_inputs / time_metric(adapter, batch, attr, "mean"))
            samples["engine drop"].append(n_inputs / time_metric(adapter, batch, attr, "drop"))
            samples["engine mean @ ceiling"].append(
                n_inputs / time_metric(adapter, batch, attr, "mean", chunk=ceiling)
            )
        med = {k: statistics.median(v) for k, v in samples.items()}
        best_plain = max(med[f"plain@{s}"] for s in sizes)
        entry = {
            "chosen_rows": chunk,
            "calibration_seconds": round(calib_s, 3),
            "calibration": adapter.budget.calibration,
            "masked_inputs_per_second": {k: round(v, 1) for k, v in med.items()},
            "samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
            "best_plain_forward": round(best_plain, 1),
            "engine_mean_over_best_plain": round(med["engine mean"] / best_plain, 3),
            "engine_mean_at_ceiling_over_best_plain": round(med["engine mean @ ceiling"] / best_plain, 3),
            "drop_over_mean": round(med["engine drop"] / med["engine mean"], 3),
            "images_per_second": {
                "mean": round(med["engine mean"] / keep.shape[1], 2),
                "drop": round(med["engine drop"] / keep.shape[1], 2),
            },
        }
        results["threads"][str(threads)] = entry
        rows_md.append(
            f"| {threads} | {chunk} | {best_plain:.0f} | {med['engine mean']:.0f} | "
            f"{entry['engine_mean_over_best_plain']:.2f} | {med['engine mean @ ceiling']:.0f} | "
            f"{med['engine drop']:.0f} | {entry['drop_over_mean']:.2f} |"
        )
        print(json.dumps({threads: entry["masked_inputs_per_second"]}), flush=True)
    results["load_average_after"] = os.getloadavg()
    print(
        f"\n{adapter.name}, {device}, {args.images} images × {keep.shape[1]} masked forwards, "
        f"memory ceiling {ceiling} rows, load average {results['load_average_before'][0]:.1f} → "
        f"{results['load_average_after'][0]:.1f}; masked inputs/s, median of {args.repeats}\n"
    )
    print(
        "| threads | pass size | best plain | engine mean | ratio (≥0.95) | mean @ ceiling | engine drop "
        "| drop/mean (≥1.8) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows_md))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
