"""kill -9 at any moment: the same command then finishes the run with byte-identical results.

Each case starts the real CLI in a subprocess, kills it with SIGKILL at a moment chosen by what
has appeared on disk (classifier training under way, a first part finished, the run's scores
merged but not yet sealed) or after a delay, runs the same command again to the end, and
compares scores.csv, curves.csv and the leaderboards with an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
COMPARED = ("scores.csv", "curves.csv", "leaderboard.md", "leaderboard.csv", "leaderboard.tex")


def command(cache: Path, out: Path):
    return [
        sys.executable, "-m", "xaibench", "--plugin", "plugin_tiny", "--cache-dir", str(cache), "run",
        "--model", "tiny_test_vit", "--methods", "random,grad_x_input_test,saliency", "--metrics", "srg,rma",
        "--n-images", "10", "--batch-size", "4", "--cardinalities", "3", "--out", str(out), "--quiet",
    ]  # fmt: skip


def run(cache: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
    return subprocess.run(
        command(cache, out), env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def killed_when(cache: Path, out: Path, condition, timeout: float = 120.0) -> bool:
    """Start the run and SIGKILL it as soon as ``condition()`` holds; False if it finished first."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        command(cache, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    start = time.time()
    try:
        while proc.poll() is None and time.time() - start < timeout:
            if condition():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.005)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    done = run(root / "cache", root / "out")
    assert done.returncode == 0, done.stderr
    return run_dir(root / "out")


def _exists(pattern_root: Path, pattern: str):
    return lambda: any(pattern_root.glob(pattern))


CASES = {
    "while the classifier trains": lambda c, o: _exists(c, "models/*/checkpoint.pt"),
    "after the first part": lambda c, o: _exists(o, "*/parts/random/*/manifest.json"),
    "after the second part": lambda c, o: _exists(o, "*/parts/grad_x_input_test/*/manifest.json"),
    "scores merged, not sealed": lambda c, o: _exists(o, "*/scores.csv"),
    "at a random moment": lambda c, o: (lambda t0=time.time(): lambda: time.time() - t0 > 4.0)(),
}


@pytest.mark.parametrize("moment", list(CASES))
def test_kill_9_then_resume_gives_identical_results(reference, tmp_path, moment):
    cache, out = tmp_path / "cache", tmp_path / "out"
    killed = killed_when(cache, out, CASES[moment](cache, out))
    done = run(cache, out)
    assert done.returncode == 0, done.stderr
    d = run_dir(out)
    assert d.name == reference.name  # same inputs (the resumed classifier included), same run id
    for name in COMPARED:
        assert (d / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs ({moment})"
    assert not list(d.rglob(".*.tmp")) and not list(cache.rglob(".*.tmp"))
    if not killed:
        pytest.skip(f"the run finished before the moment '{moment}' came; nothing was interrupted")
