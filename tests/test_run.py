"""End-to-end runs of the CLI on a tiny plugin model: reproducibility, plugins, bad input, resuming."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from xaibench.cli import main

TESTS = Path(__file__).parent
FAST = [
    "--model",
    "tiny_test_vit",
    "--n-images",
    "12",
    "--batch-size",
    "5",
    "--metrics",
    "srg",
    "--cardinalities",
    "3",
    "--quiet",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def xb(cache, *args):
    return main(["--plugin", "plugin_tiny", "--cache-dir", cache, *args])


def run_dir(out):
    (d,) = [p for p in Path(out).iterdir() if p.is_dir()]
    return d


def test_same_run_twice_gives_identical_scores(cache, tmp_path, capsys):
    for name in ("a", "b"):
        assert (
            xb(
                cache,
                "run",
                *FAST,
                "--methods",
                "random,oracle,grad_x_input_test",
                "--out",
                str(tmp_path / name),
            )
            == 0
        )
    first, second = run_dir(tmp_path / "a"), run_dir(tmp_path / "b")
    assert first.name == second.name  # the run id is derived from the settings
    assert (first / "scores.csv").read_bytes() == (second / "scores.csv").read_bytes()
    scores = pd.read_csv(first / "scores.csv")
    assert set(scores.method) == {"random", "oracle", "grad_x_input_test"}
    assert set(scores.metric) == {"mif", "lif", "srg"}
    assert len(scores) == 3 * 3 * 12
    config = json.loads((first / "config.json").read_text())
    assert config["versions"]["torch"] and config["config"]["seed"] == 0
    assert config["methods"]["random"]["settings"]["preset"] == "quick"
    assert capsys.readouterr().out.count("| Random") == 2  # the leaderboard is printed


def test_another_seed_changes_random_scores(cache, tmp_path):
    for seed in ("0", "1"):
        assert (
            xb(cache, "run", *FAST, "--methods", "random", "--seed", seed, "--out", str(tmp_path / seed)) == 0
        )
    a = pd.read_csv(run_dir(tmp_path / "0") / "scores.csv")
    b = pd.read_csv(run_dir(tmp_path / "1") / "scores.csv")
    assert not a["value"].equals(b["value"])


def test_plugin_method_is_listed_and_runs(cache, tmp_path, capsys):
    assert xb(cache, "list", "methods") == 0
    listed = capsys.readouterr().out
    assert "grad_x_input_test" in listed and "saliency" in listed and "random" in listed
    assert xb(cache, "run", *FAST, "--methods", "grad_x*", "--out", str(tmp_path)) == 0
    assert set(pd.read_csv(run_dir(tmp_path) / "scores.csv").method) == {"grad_x_input_test"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--methods", "salency"], "unknown method 'salency'.*Did you mean 'saliency'.*Valid"),
        (["run", "--metrics", "srgg"], "unknown metric 'srgg'"),
        (["run", "--dataset", "imagenet-x"], "unknown dataset 'imagenet-x'.*synthetic"),
        (["run", "--model", "vit_tiny_nope"], "unknown model 'vit_tiny_nope'.*xaibench_vit"),
        (["run", "--n-images", "-3"], "--n-images must be > 0, got -3"),
        (["run", "--batch-size", "0"], "--batch-size must be > 0, got 0"),
        (["run", "--removal", "erase"], "unknown removal strategy 'erase'.*drop, mean, blur, distractor"),
        (["run", "--target", "top"], "unknown target 'top'.*pred, label"),
        (["--plugin", "no_such_module_xyz", "list", "methods"], "no_such_module_xyz"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    import re

    assert main(["--cache-dir", str(tmp_path), *args, "--quiet"] if args[0] == "run" else args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err, flags=re.S), err


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xaibench",
            "--cache-dir",
            str(tmp_path),
            "run",
            "--methods",
            "gradcamm,random",
        ],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown method 'gradcamm'" in proc.stderr


def test_interrupted_run_resumes_without_recomputing(cache, tmp_path, monkeypatch, capsys):
    import plugin_tiny

    args = ["run", *FAST, "--methods", "random,grad_x_input_test,oracle", "--out", str(tmp_path / "r")]
    calls = {"n": 0}
    original = plugin_tiny.GradXInputTest.attribute

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(plugin_tiny.GradXInputTest, "attribute", interrupted)
    assert xb(cache, *args) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err
    d = run_dir(tmp_path / "r")
    assert (d / "parts" / "random" / "shard-0-of-1" / "manifest.json").exists()
    assert not (d / "parts" / "grad_x_input_test" / "shard-0-of-1" / "manifest.json").exists()
    stamp = (d / "parts" / "random" / "shard-0-of-1" / "scores.csv").stat().st_mtime_ns

    monkeypatch.setattr(plugin_tiny.GradXInputTest, "attribute", original)
    assert xb(cache, *args) == 0
    assert (
        d / "parts" / "random" / "shard-0-of-1" / "scores.csv"
    ).stat().st_mtime_ns == stamp  # reused, not recomputed
    assert (
        xb(cache, "run", *FAST, "--methods", "random,grad_x_input_test,oracle", "--out", str(tmp_path / "u"))
        == 0
    )
    assert (d / "scores.csv").read_bytes() == (run_dir(tmp_path / "u") / "scores.csv").read_bytes()


def test_a_failing_method_is_recorded_and_the_others_finish(cache, tmp_path, monkeypatch, capsys):
    import plugin_tiny

    def broken(self, *a, **k):
        return deep_failure()

    def deep_failure():
        raise RuntimeError("boom")

    monkeypatch.setattr(plugin_tiny.GradXInputTest, "attribute", broken)
    code = xb(cache, "run", *FAST, "--methods", "random,grad_x_input_test", "--out", str(tmp_path))
    assert code == 1  # a requested method failed
    d = run_dir(tmp_path)
    config = json.loads((d / "config.json").read_text())
    status = config["methods"]
    failed = status["grad_x_input_test"]
    assert failed["status"] == "failed" and "boom" in failed["reason"]
    assert status["random"]["status"] == "done"
    trace = d / "parts" / "grad_x_input_test" / "shard-0-of-1" / "error.txt"
    text = trace.read_text()
    assert "Traceback" in text and "deep_failure" in text and "RuntimeError: boom" in text
    err = capsys.readouterr().err  # --quiet, and still told where the traceback is
    assert str(trace) in err and "FAILED" in err
    assert "FAILED in synthetic" in (d / "leaderboard.md").read_text()


def test_a_run_in_which_every_method_fails_exits_non_zero(cache, tmp_path, monkeypatch, capsys):
    import plugin_tiny

    def broken(self, *a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(plugin_tiny.GradXInputTest, "attribute", broken)
    assert xb(cache, "run", *FAST, "--methods", "grad_x_input_test", "--out", str(tmp_path)) == 1
    assert "(no results)" in capsys.readouterr().out


def test_random_srg_is_zero_within_its_interval(cache, tmp_path):
    assert (
        xb(
            cache,
            "run",
            "--model",
            "tiny_test_vit",
            "--n-images",
            "64",
            "--metrics",
            "srg",
            "--methods",
            "random",
            "--cardinalities",
            "4",
            "--quiet",
            "--out",
            str(tmp_path),
        )
        == 0
    )
    board = pd.read_csv(run_dir(tmp_path) / "leaderboard.csv")
    row = board[(board.method == "random") & (board.metric == "srg")].iloc[0]
    assert row.ci_low <= 0 <= row.ci_high


def test_a_method_that_freezes_the_classifier_does_not_break_the_next(cache, tmp_path, monkeypatch):
    import plugin_tiny

    original = plugin_tiny.GradXInputTest.attribute

    def freezes_then_fails(self, adapter, *a, **k):
        adapter.model.requires_grad_(False)
        adapter.model.train()
        raise RuntimeError("left the classifier frozen")

    monkeypatch.setattr(plugin_tiny.GradXInputTest, "attribute", freezes_then_fails)
    assert xb(cache, "run", *FAST, "--methods", "grad_x_input_test,gradcam", "--out", str(tmp_path)) == 1
    config = json.loads((run_dir(tmp_path) / "config.json").read_text())
    assert config["methods"]["grad_x_input_test"]["status"] == "failed"
    assert config["methods"]["gradcam"]["status"] == "done"
    monkeypatch.setattr(plugin_tiny.GradXInputTest, "attribute", original)


def test_changed_code_is_never_reused(cache, tmp_path, monkeypatch, capsys):
    """Any edit of the installed package (a helper module, not only a method's own file) gives
    the run another identity: by default a new run directory; under a fixed run id a refusal."""
    import xaibench.identity as identity

    args = ["run", *FAST, "--methods", "random", "--out", str(tmp_path)]
    assert xb(cache, *args) == 0
    first = run_dir(tmp_path)
    monkeypatch.setattr(identity, "source_fingerprint", lambda plugins=(): "edited")
    assert xb(cache, *args) == 0
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert len(dirs) == 2 and first.name in dirs  # recomputed in its own directory
    fixed = ["run", *FAST, "--methods", "random", "--out", str(tmp_path / "f"), "--run-id", "mine"]
    monkeypatch.undo()
    assert xb(cache, *fixed) == 0
    monkeypatch.setattr(identity, "source_fingerprint", lambda plugins=(): "edited")
    capsys.readouterr()
    assert xb(cache, *fixed) == 2
    assert "source_sha256" in capsys.readouterr().err


def test_classifier_training_is_reproducible(tmp_path):
    import plugin_tiny  # noqa: F401  (registers tiny_test_vit)

    from xaibench.models import load_model

    a = load_model("tiny_test_vit", cache_dir=str(tmp_path / "a"))
    b = load_model("tiny_test_vit", cache_dir=str(tmp_path / "b"))
    c = load_model("tiny_test_vit", cache_dir=str(tmp_path / "c"), seed=1)
    assert a.meta["weights_sha256"] == b.meta["weights_sha256"]
    assert a.meta["weights_sha256"] != c.meta["weights_sha256"]


def test_the_readme_plugin_example_works_as_written(tmp_path):
    """The README's plugin file, saved in the current directory, is found by ``--plugin``."""
    import re

    readme = (TESTS.parent / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "register_method" in b]
    name = re.search(r"# (\w+)\.py", code).group(1)
    (tmp_path / f"{name}.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    exe = Path(sys.executable).with_name("xaibench")
    proc = subprocess.run(
        [str(exe), "--plugin", name, "list", "methods", "grad_x*"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "grad_x_input" in proc.stdout
