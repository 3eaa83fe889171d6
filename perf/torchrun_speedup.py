"""torchrun speed-up: two ranks of one thread each against one process of one thread.

Run:  .venv/bin/python perf/torchrun_speedup.py [--n-images 48] [--batch-size 8] [--repeats 3]
      [--methods saliency,integrated_gradients,rise,attention_rollout,gae,random]
      [--cache-dir /tmp/torchrun-cache] [--out perf/torchrun_speedup.result.json]

The work is ``xaibench run`` on the embedded default (the trained default ViT, every metric at
the quick preset) for ``--methods`` on ``--n-images`` images in batches of ``--batch-size``, with
``--threads 1``: once as one process, once under ``torchrun --standalone --nproc-per-node 2``
(each rank one thread, the batches dealt out between them, rank 0 merging). A batch is the unit
of sharding, so the batch size is chosen to give each rank the same number of images (48 images,
6 batches of 8: 3 per rank). A first untimed run trains or loads the classifier and stores the
pass-size calibration, so the timed runs only score. Every timed run writes to a fresh output
directory (nothing is reused between them); the two configurations alternate within each
repetition, so a change of machine load hits both alike. Reports the median wall time of each
(start-up and merge included), the ratio, and whether every run's scores.csv is byte-identical
to the first single-process run's. Needs a machine with two free cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def xaibench_args(args, out: Path):
    return [
        "--cache-dir", args.cache_dir, "--quiet", "run", "--methods", args.methods,
        "--n-images", str(args.n_images), "--batch-size", str(args.batch_size), "--threads", "1",
        "--train-seeds", "1", "--out", str(out),
    ]  # fmt: skip


def launch(args, out: Path, ranks: int) -> float:
    if ranks == 1:
        cmd = [sys.executable, "-m", "xaibench", *xaibench_args(args, out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
        cmd += ["-m", "xaibench", *xaibench_args(args, out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return seconds


def scores_digest(out: Path) -> str:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return hashlib.sha256((run_dir / "scores.csv").read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="saliency,integrated_gradients,rise,attention_rollout,gae,random")
    ap.add_argument("--cache-dir", default="/tmp/torchrun-cache")
    ap.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = launch(args, root / "warm-up", 1)
        reference = scores_digest(root / "warm-up")
        samples = {"1 process × 1 thread": [], "torchrun 2 ranks × 1 thread": []}
        identical = True
        load_before = os.getloadavg()
        for r in range(args.repeats):
            for ranks, name in ((1, "1 process × 1 thread"), (2, "torchrun 2 ranks × 1 thread")):
                out = root / f"{ranks}-{r}"
                samples[name].append(launch(args, out, ranks))
                identical &= scores_digest(out) == reference
                print(json.dumps({name: round(samples[name][-1], 2)}), flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    speedup = med["1 process × 1 thread"] / med["torchrun 2 ranks × 1 thread"]
    results = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "work": (
            f"xaibench run --methods {args.methods} --n-images {args.n_images} "
            f"--batch-size {args.batch_size} --threads 1 (embedded default)"
        ),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "warm_up_seconds": round(warm, 2),
        "seconds_median": {k: round(v, 2) for k, v in med.items()},
        "seconds_samples": {k: [round(x, 2) for x in v] for k, v in samples.items()},
        "speedup": round(speedup, 3),
        "scores_identical": identical,
    }
    print(
        f"\n{results['work']}; wall seconds, median of {args.repeats}; load average "
        f"{load_before[0]:.1f} → {results['load_average_after'][0]:.1f}\n\n"
        "| 1 process × 1 thread | torchrun 2 ranks × 1 thread | speed-up (≥1.6) | scores.csv identical |\n"
        "|---|---|---|---|\n"
        f"| {med['1 process × 1 thread']:.1f} s | {med['torchrun 2 ranks × 1 thread']:.1f} s | "
        f"{speedup:.2f} | {'yes' if identical else 'NO'} |"
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
