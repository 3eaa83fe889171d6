"""xaibench vs Quantus, side by side, on the same removal work.

Run:  .venv/bin/python perf/bench_quantus.py [--threads 1 2] [--images 32] [--repeats 3]
      [--trained DIR] [--out perf/bench_quantus.result.json]
      (needs Quantus: ``pip install -e .[perf]`` or ``pip install quantus``; skipped otherwise)

The work (same model, images, maps and fill for both): 32 images of ``synthetic`` on the
default ``xaibench_vit`` architecture (64×64, patch 8: 64 patches; untrained unless
``--trained DIR`` with model.pt + meta.json of a trained one: the speed does not depend on the
weights), random patch-level maps (seeded, one distinct value per patch), 128 masked forwards
per image, removed pixels set to 0 (the dataset mean in normalised space), target = the
predicted class, softmax probabilities.

- Quantus 0.6: ``RegionPerturbation`` with ``patch_size=8`` (the ViT's patches, all channels),
  ``order="morf"`` and ``"lerf"``, ``regions_evaluation=63``, ``perturb_baseline=0.0``, no
  normalisation or abs, ``batch_size`` = all images. Each order makes one forward of the clean
  images and 63 of progressively more removed patches: 2 × 64 = 128 forwards per image.
  (``PixelFlipping`` cannot be set to one patch per step here: its step must divide H·W,
  while a patch has 3·8·8 features.)
- xaibench: the MIF/LIF metric (``InsertionMetrics.compute``): keep the k most / least relevant
  patches for k = 1..64, 2 × 64 = 128 forwards per image (k = 64 is the clean image, as is
  Quantus's reference forward), with ``mean`` removal (the same filled pixels as Quantus:
  identical forward cost) and with ``drop`` (removed patch tokens left out of the sequence;
  Quantus has no equivalent).

The masks differ (deletion vs insertion) but the number and size of the forwards are the same
for ``mean``; each side does everything it needs (ranking, masks, host and device copies, the
model). Two more rows put the ratios in context: ``plain forward``, the model alone on the same
mean-filled inputs prepared before the clock (batches of the pass size and of all images; the
faster one), is the ceiling of any tool that makes these forwards in float32, so ``mean`` cannot
beat Quantus by more than plain / Quantus; and xaibench with ``--amp bf16`` (the metrics'
forwards under bfloat16 autocast; its effect on the scores is in perf/engine_numerics.result.json).
Prints images/s of each and the ratios at each thread count (median of ``--repeats``,
configurations interleaved within a repetition) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch


def build(trained_dir):
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


def data(adapter, n):
    from xaibench.attribution import Attribution
    from xaibench.datasets import load_dataset
    from xaibench.metrics import Batch

    split = load_dataset("synthetic", "test", n_test=n, image_size=adapter.input_size[0])
    samples = [split[i] for i in range(len(split))]
    x = adapter.normalize(torch.stack([s.image for s in samples]))
    ids = [s.id for s in samples]
    probs = adapter.probs(x).detach()
    batch = Batch(x=x, labels=probs.argmax(1), targets=probs.argmax(1), ids=ids, probs=probs)
    g = torch.Generator().manual_seed(0)
    patch_maps = torch.rand(n, *adapter.grid, generator=g)  # distinct per patch (almost surely)
    return batch, Attribution(patch_maps, "patch")


def run_xaibench(adapter, batch, attr, strategy, amp=None) -> float:
    from xaibench.metrics import EvalContext, create_metric
    from xaibench.removal import Removal

    t = time.perf_counter()
    ctx = EvalContext(adapter, Removal(strategy), seed=0, amp=amp)
    create_metric("srg").compute(ctx, batch, attr)
    return time.perf_counter() - t


def filled_inputs(adapter, batch, attr) -> torch.Tensor:
    """The work's mean-filled inputs (MIF/LIF keep masks of every image), built before any clock."""
    from xaibench.metrics.ranking import keep_first, ranked_order

    ks = torch.arange(1, adapter.num_patches + 1)
    scores = attr.patch_scores(adapter.grid)
    keep = torch.cat([keep_first(ranked_order(scores, batch.ids, 0, most), ks) for most in (True, False)], 1)
    pixels = adapter.patch_keep_to_pixels(keep.flatten(0, 1))
    return batch.x.repeat_interleave(keep.shape[1], 0) * pixels[:, None]


def run_plain(adapter, inputs, size) -> float:
    """Seconds of the model alone on ``inputs`` in batches of ``size`` (softmax included): what a
    tool that did nothing but the forwards would take."""
    with torch.inference_mode():
        t = time.perf_counter()
        for s in range(0, len(inputs), size):
            adapter.logits(inputs[s : s + size]).float().softmax(-1)
        return time.perf_counter() - t


def run_quantus(quantus, adapter, batch, attr) -> float:
    t = time.perf_counter()
    x = batch.x.cpu().numpy()
    y = batch.targets.cpu().numpy()
    a = attr.to_pixels(adapter.input_size)[:, None].cpu().numpy()
    for order in ("morf", "lerf"):  # 1 clean + 63 perturbed forwards each
        metric = quantus.RegionPerturbation(
            patch_size=adapter.patch_size[0],
            order=order,
            regions_evaluation=adapter.num_patches - 1,
            perturb_baseline=0.0,
            normalise=False,
            abs=False,
            disable_warnings=True,
            display_progressbar=False,
        )
        metric(
            model=adapter.model,
            x_batch=x,
            y_batch=y,
            a_batch=a,
            device=str(adapter.device),
            batch_size=len(x),
            softmax=True,
        )
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trained", default=None, help="directory with model.pt + meta.json of xaibench_vit")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    try:
        import quantus
    except ImportError:
        print("Quantus is not installed (pip install -e .[perf], or pip install quantus): skipped")
        return
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    adapter = build(args.trained)
    batch, attr = data(adapter, args.images)
    inputs = filled_inputs(adapter, batch, attr)
    n = args.images
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "model": adapter.name,
        "quantus": quantus.__version__,
        "torch": torch.__version__,
        "work": f"{n} images × 128 masked forwards, {adapter.num_patches} patches, fill 0",
        "load_average_before": os.getloadavg(),
        "threads": {},
    }
    lines = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        chunk = adapter.chunk_size  # calibrated for this thread count (not timed below)
        runs = {
            "quantus": lambda: run_quantus(quantus, adapter, batch, attr),
            "xaibench mean": lambda: run_xaibench(adapter, batch, attr, "mean"),
            "xaibench drop": lambda: run_xaibench(adapter, batch, attr, "drop"),
            "xaibench mean bf16": lambda: run_xaibench(adapter, batch, attr, "mean", "bf16"),
            "xaibench drop bf16": lambda: run_xaibench(adapter, batch, attr, "drop", "bf16"),
            f"plain forward @{chunk}": lambda: run_plain(adapter, inputs, chunk),
            f"plain forward @{n}": lambda: run_plain(adapter, inputs, n),
        }
        for run in runs.values():  # warm-up
            run()
        samples = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, run in runs.items():
                samples[k].append(n / run())
        med = {k: statistics.median(v) for k, v in samples.items()}
        plain = max(med[f"plain forward @{chunk}"], med[f"plain forward @{n}"])
        q = med["quantus"]
        entry = {
            "pass_size": chunk,
            "images_per_second": {k: round(v, 3) for k, v in med.items()},
            "samples": {k: [round(s, 3) for s in v] for k, v in samples.items()},
            "drop_over_quantus": round(med["xaibench drop"] / q, 2),
            "mean_over_quantus": round(med["xaibench mean"] / q, 2),
            "drop_bf16_over_quantus": round(med["xaibench drop bf16"] / q, 2),
            "mean_bf16_over_quantus": round(med["xaibench mean bf16"] / q, 2),
            "quantus_over_plain_forward": round(q / plain, 2),
        }
        result["threads"][str(threads)] = entry
        lines.append(
            f"| {threads} | {q:.2f} | {plain:.2f} ({entry['quantus_over_plain_forward']:.2f}) "
            f"| {med['xaibench mean']:.2f} ({entry['mean_over_quantus']:.2f}) "
            f"| {med['xaibench drop']:.2f} ({entry['drop_over_quantus']:.2f}) "
            f"| {med['xaibench mean bf16']:.2f} ({entry['mean_bf16_over_quantus']:.2f}) "
            f"| {med['xaibench drop bf16']:.2f} ({entry['drop_bf16_over_quantus']:.2f}) | {chunk} |"
        )
        print(json.dumps({threads: entry["images_per_second"]}), flush=True)
    result["load_average_after"] = os.getloadavg()
    print(
        f"\n{result['work']}, {adapter.name}, Quantus {quantus.__version__}; images/s, median of "
        f"{args.repeats}; load average {result['load_average_before'][0]:.1f} → "
        f"{result['load_average_after'][0]:.1f}\n"
    )
    print(
        "| threads | Quantus | plain forward (Quantus/it) | xaibench mean (/Quantus, ≥1.3) "
        "| xaibench drop (/Quantus, ≥3) | mean, bf16 | drop, bf16 | pass size |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
