"""Does the ``fast`` metric protocol rank methods as the full ``paper`` protocol does?

Runs the same methods on the same seeded images twice, ``--preset fast`` (MIF/LIF/SRG on 20
evenly spaced cardinalities, R-SRG with 16 masks per cardinality) and ``--preset paper`` (every
cardinality, 128 masks), and compares, per score, the ranking of the methods (Kendall τ over the
non-reference methods) and whether each fast mean lies inside the paper run's 95 % interval.

    .venv/bin/python perf/fast_protocol.py --out results/fast_protocol.json

(the committed result: this command with its defaults, six methods on 20 images; the paper protocol
costs ~8,700 forward-equivalents per image and method on the tiny ViT, ~2 min per method here.)

writes the comparison as JSON (the runs go to ``--runs``; a finished run is reused by the run
store when its inputs are unchanged).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau

METHODS = "saliency,gradcam,attention_rollout,lrp,smoothgrad,random"
SCORES = ("srg", "mif", "lif", "r_srg", "r_mif", "r_lif")


def run(preset: str, args) -> tuple[Path, float]:
    out = Path(args.runs)
    command = [
        sys.executable, "-m", "xaibench", "--quiet", "run", "--dataset", args.dataset,
        "--methods", args.methods, "--metrics", "srg,r_srg", "--preset", preset,
        "--n-images", str(args.n_images), "--out", str(out), "--run-id", f"{args.dataset}-{preset}",
    ]  # fmt: skip
    start = time.time()
    subprocess.run(command, check=True)
    return out / f"{args.dataset}-{preset}", time.time() - start


def compare(fast: pd.DataFrame, paper: pd.DataFrame) -> dict:
    out = {}
    for score in SCORES:
        f = fast[(fast.metric == score) & ~fast.reference].set_index("method")
        p = paper[(paper.metric == score) & ~paper.reference].set_index("method")
        methods = sorted(set(f.index) & set(p.index))
        tau = kendalltau(f.loc[methods, "mean"], p.loc[methods, "mean"]).statistic
        inside = {m: bool(p.loc[m, "ci_low"] <= f.loc[m, "mean"] <= p.loc[m, "ci_high"]) for m in methods}
        out[score] = {
            "kendall_tau": round(float(tau), 4),
            "fast_inside_paper_ci": inside,
            "all_inside": all(inside.values()),
            "fast_mean": {m: round(float(f.loc[m, "mean"]), 3) for m in methods},
            "paper_mean": {m: round(float(p.loc[m, "mean"]), 3) for m in methods},
            "paper_ci": {m: [round(float(p.loc[m, k]), 3) for k in ("ci_low", "ci_high")] for m in methods},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--n-images", type=int, default=20)
    ap.add_argument("--runs", default="/tmp/xaibench-fast-protocol-2")
    ap.add_argument("--out", default="results/fast_protocol.json")
    args = ap.parse_args()
    dirs, seconds = {}, {}
    for preset in ("fast", "paper"):
        dirs[preset], seconds[preset] = run(preset, args)
    fast, paper = (pd.read_csv(dirs[p] / "leaderboard.csv") for p in ("fast", "paper"))
    result = {
        "command": "perf/fast_protocol.py " + " ".join(sys.argv[1:]),
        "dataset": args.dataset,
        "methods": args.methods.split(","),
        "n_images": args.n_images,
        "seconds": {p: round(s, 1) for p, s in seconds.items()},
        "scores": compare(fast, paper),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for score, r in result["scores"].items():
        inside = r["all_inside"]
        print(f"{score}: Kendall τ {r['kendall_tau']:.3f}, every fast mean inside the paper CI: {inside}")


if __name__ == "__main__":
    main()
