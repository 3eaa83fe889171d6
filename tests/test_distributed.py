"""torchrun: two ranks (gloo, CPU) write the same files as one process, and resume per rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xaibench.io import load_torch

TESTS = Path(__file__).parent
SAME = (
    "scores.csv",
    "curves.csv",
    "leaderboard.md",
    "leaderboard.csv",
    "maps/random.preview.npz",
)


def xaibench_args(cache: Path, out: Path):
    return [
        "--plugin", "plugin_tiny", "--cache-dir", str(cache), "run", "--model", "tiny_test_vit",
        "--methods", "random,grad_x_input_test,saliency", "--metrics", "srg,rma,pxap", "--n-images", "11",
        "--batch-size", "3", "--cardinalities", "3", "--threads", "1", "--out", str(out), "--quiet",
    ]  # fmt: skip


def run(args, **env) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(TESTS), **env)
    return subprocess.run(
        args, env=environment, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600
    )


def torchrun(cache: Path, out: Path) -> subprocess.CompletedProcess:
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port of its own: no clash with a previous launch's socket
        "--nproc-per-node",
        "2",
    ]
    return run([*launcher, "-m", "xaibench", *xaibench_args(cache, out)])


def only_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    done = run([sys.executable, "-m", "xaibench", *xaibench_args(root / "cache", root / "out")])
    assert done.returncode == 0, done.stderr
    return only_dir(root / "out")


def test_two_ranks_write_what_one_process_writes(single, tmp_path):
    done = torchrun(tmp_path / "cache", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-8000:]
    d = only_dir(tmp_path / "out")
    assert d.name == single.name
    for name in SAME:
        assert (d / name).read_bytes() == (single / name).read_bytes(), name
    ours, theirs = (load_torch(p / "states.pt") for p in (d, single))  # torch.save embeds a random id
    assert ours.keys() == theirs.keys() and all(
        torch.equal(ours[m][k], theirs[m][k]) for m in ours for k in ours[m]
    )
    shards = sorted(p.name for p in (d / "parts" / "saliency").iterdir())
    assert shards == ["shard-0-of-2", "shard-1-of-2"]
    assert done.stdout.count("| Method") == 1  # one rank prints the leaderboard


def test_a_killed_rank_resumes_its_own_shards(single, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    first = torchrun(cache, out)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-8000:]
    d = only_dir(out)
    shard = d / "parts" / "grad_x_input_test" / "shard-1-of-2"
    kept = (d / "parts" / "random" / "shard-0-of-2" / "scores.csv").stat().st_mtime_ns
    for f in shard.iterdir():  # as if rank 1 had died while writing this part
        f.unlink()
    (d / "manifest.json").unlink()
    done = torchrun(cache, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-8000:]
    assert (shard / "manifest.json").exists()
    assert (d / "parts" / "random" / "shard-0-of-2" / "scores.csv").stat().st_mtime_ns == kept
    assert (d / "scores.csv").read_bytes() == (single / "scores.csv").read_bytes()


def test_uneven_shards_get_a_batch_size_that_evens_them():
    from xaibench.distributed import rank_batches, sharding_advice

    assert [rank_batches(40, 32, r, 2) for r in (0, 1)] == [[0], [1]]
    assert sharding_advice(40, 32, 1) is None
    assert sharding_advice(11, 3, 2) is None  # 6 and 5 images
    advice = sharding_advice(40, 32, 2)
    assert "[32, 8]" in advice and "--batch-size 20 gives them [20, 20]" in advice
    advice = sharding_advice(100, 32, 8)  # the headline's default subset on one 8-GPU node
    assert "[32, 32, 32, 4, 0, 0, 0, 0]" in advice and "--batch-size 13" in advice
    for n, b, world in ((40, 32, 2), (100, 32, 8), (7, 5, 3), (1000, 300, 6)):
        suggested = int(sharding_advice(n, b, world).split("--batch-size ")[1].split()[0])
        assert suggested <= b and sharding_advice(n, suggested, world) is None


def test_ranks_start_training_different_explainers():
    from xaibench.distributed import rank_order

    parts = ["saliency", "vit_shapley.seed0", "rise", "salvage.seed0", "comet.seed0"]
    trained = lambda p: ".seed" in p  # noqa: E731
    assert rank_order(parts, trained, 0, 1) == parts  # one process: the registry's order
    orders = [rank_order(parts, trained, r, 4) for r in range(4)]
    assert [o[0] for o in orders] == [
        "vit_shapley.seed0",
        "salvage.seed0",
        "comet.seed0",
        "vit_shapley.seed0",
    ]
    assert all(sorted(o) == sorted(parts) and o[3:] == ["saliency", "rise"] for o in orders)
    assert rank_order(["saliency", "rise"], trained, 1, 2) == ["saliency", "rise"]
