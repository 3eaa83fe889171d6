"""MIF/LIF throughput on the tiny default ViT: is the metric engine spending its time in the model?

Run:  .venv/bin/python perf/metric_throughput.py [--images 64] [--cardinalities all|N] [--device cpu]
      [--threads 1]   (on a CPU shared with other jobs, one thread avoids oversubscription stalls)

Prints, for the ``drop`` and ``mean`` removal strategies:
- images/s of the MIF/LIF metric (``InsertionMetrics.compute``: ranking, masks, removal, model);
- the model's raw forward throughput on the same masked inputs, prepared beforehand and fed to
  the model in the same chunks, measured in the same process (drop: the gathered token
  sequences; mean: the filled images);
- their ratio (target ≥ 0.85) and the speed-up of ``drop`` over ``mean`` (target ≥ 1.5×).
The architecture is the default ``xaibench_vit`` recipe (64×64, patch 8, 64 patches, CLS + 4
registers), untrained: throughput does not depend on the weights.

Note: the "raw forward" of ``drop`` here groups rows by cardinality (the removal engine's former
plan); the engine now packs rows of all cardinalities into full passes, so that ratio can exceed
1. ``perf/engine_throughput.py`` compares the engine with the model's best plain forward.
"""

from __future__ import annotations

import argparse
import time

import torch


def build_adapter(device):
    from xaibench.adapter import ModelAdapter
    from xaibench.models import xaibench_vit

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


def raw_forward_seconds(adapter, x, keep, strategy):
    """Seconds of the model alone on the same masked inputs (prepared before the clock starts)."""
    B, M, P = keep.shape
    chunks = []
    with torch.no_grad():
        if strategy == "drop":
            tokens = adapter.vit_embed(x)
            flat = keep.reshape(B * M, P)
            counts = flat.sum(1)
            full = adapter.num_prefix_tokens + P
            for k in counts.unique().tolist():
                rows = (counts == k).nonzero()[:, 0]
                kept = flat[rows].nonzero()[:, 1].view(len(rows), k)
                step = max(1, adapter.chunk_size * full // (adapter.num_prefix_tokens + k))
                for s in range(0, len(rows), step):
                    chunks.append(adapter.gather_tokens(tokens, rows[s : s + step] // M, kept[s : s + step]))
            run = adapter.vit_from_tokens
        else:
            pix = adapter.patch_keep_to_pixels(keep).reshape(B * M, *adapter.input_size)
            xs = x.repeat_interleave(M, 0)
            for s in range(0, B * M, adapter.chunk_size):
                chunks.append(xs[s : s + adapter.chunk_size] * pix[s : s + adapter.chunk_size, None])
            run = adapter.logits
        sync(x.device)
        t = time.perf_counter()
        for c in chunks:
            run(c).softmax(-1)
        sync(x.device)
    return time.perf_counter() - t


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    from xaibench.attribution import Attribution
    from xaibench.metrics import Batch, EvalContext, create_metric
    from xaibench.metrics.ranking import keep_first, ranked_order
    from xaibench.removal import Removal

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cardinalities", default="all", help="'all' (every k) or a count of evenly spaced k")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    adapter = build_adapter(device)
    card = None if args.cardinalities == "all" else int(args.cardinalities)
    g = torch.Generator().manual_seed(0)
    x_all = torch.randn(args.images, 3, *adapter.input_size, generator=g).to(device)
    maps_all = torch.randn(args.images, *adapter.grid, generator=g).to(device)
    metric = create_metric("srg")
    P = adapter.num_patches
    print(
        f"model: {adapter.name}, {P} patches, device {device}, {args.images} images, "
        f"cardinalities {args.cardinalities}, chunk size {adapter.chunk_size}"
    )
    results = {}
    for strategy in ("drop", "mean"):
        ctx = EvalContext(adapter, Removal(strategy), seed=0, cardinalities=card)
        ks = ctx.ks(P)
        t_metric = t_raw = 0.0
        n_inputs = 0
        for s in range(0, args.images, args.batch_size):
            x = x_all[s : s + args.batch_size]
            ids = [f"bench{i}" for i in range(s, s + len(x))]
            with torch.no_grad():
                probs = adapter.probs(x)
            batch = Batch(x=x, labels=probs.argmax(1), targets=probs.argmax(1), ids=ids, probs=probs)
            attr = Attribution(maps_all[s : s + len(x)], "patch")
            if s == 0:  # warm-up
                metric.compute(ctx, batch, attr)
            sync(device)
            t = time.perf_counter()
            metric.compute(ctx, batch, attr)
            sync(device)
            t_metric += time.perf_counter() - t
            scores = attr.patch_scores(adapter.grid)
            keep = torch.cat(
                [
                    keep_first(ranked_order(scores, ids, 0, True), ks),
                    keep_first(ranked_order(scores, ids, 0, False), ks),
                ],
                1,
            )
            t_raw += raw_forward_seconds(adapter, x, keep, strategy)
            n_inputs += keep.shape[0] * keep.shape[1]
        results[strategy] = t_metric
        print(
            f"{strategy:>5}: metric {args.images / t_metric:8.1f} images/s "
            f"({n_inputs / t_metric:9.0f} masked "
            f"inputs/s) | raw forward {n_inputs / t_raw:9.0f} inputs/s | ratio {t_raw / t_metric:.2f} "
            f"(target ≥ 0.85)"
        )
    print(f"drop over mean: {results['mean'] / results['drop']:.2f}× (target ≥ 1.5×)")


if __name__ == "__main__":
    main()
