"""No silent wrong result: every way a run could reuse something stale or damaged is detected.

Each test takes one fault class of the audit (changed data, weights replaced in place, changed
settings under a fixed run id, edited code, damaged caches and part files, non-finite maps,
contended caches, unwritable directories, unsafe run ids) through the real CLI or the real
store, and checks that it is recomputed or refused with one line — never a different number.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_real_datasets import TINY, make_imagenette, save_tiny_weights

from xaibench import artifacts
from xaibench.cli import main
from xaibench.errors import UserError

FAST = ["--n-images", "12", "--batch-size", "5", "--metrics", "srg", "--cardinalities", "3", "--quiet"]
TINY_VIT = ["--model", "tiny_test_vit"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def xb(cache, *args):
    return main(["--plugin", "plugin_tiny", "--cache-dir", cache, *args])


def err_of(capsys) -> str:
    return capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- changed inputs
def _nette_args(tmp_path, root, weights, *extra):
    return [
        "--cache-dir", str(tmp_path / "cache"), "run", "--dataset", "imagenette", "--model", TINY,
        "--methods", "random", "--metrics", "srg", "--data-root", str(root), "--weights", str(weights),
        "--cardinalities", "3", "--out", str(tmp_path / "res"), "--quiet", *extra,
    ]  # fmt: skip


def test_another_data_root_is_another_run(tmp_path, capsys):
    a = make_imagenette(tmp_path / "a", n_train=1, n_val=2)
    b = make_imagenette(tmp_path / "b", n_train=1, n_val=2)
    (b / "val" / "n01440764" / "n01440764_val0.JPEG").rename(b / "val" / "n01440764" / "renamed.JPEG")
    weights = save_tiny_weights(tmp_path / "w.pt")
    assert main(_nette_args(tmp_path, a, weights, "--run-id", "r")) == 0
    before = (tmp_path / "res" / "r" / "scores.csv").read_bytes()
    err_of(capsys)
    assert main(_nette_args(tmp_path, b, weights, "--run-id", "r")) == 2
    line = one_line(err_of(capsys))
    assert "dataset.fingerprint" in line and "--overwrite" in line
    assert (tmp_path / "res" / "r" / "scores.csv").read_bytes() == before  # nothing mixed in
    assert main(_nette_args(tmp_path, b, weights)) == 0  # default run id: a run of its own
    (new,) = [p for p in (tmp_path / "res").iterdir() if p.name != "r"]
    ids = set(pd.read_csv(new / "scores.csv").image_id)
    assert "val/n01440764/renamed" in ids and "val/n01440764/n01440764_val0" not in ids


def test_weights_replaced_in_place_are_noticed(tmp_path, capsys):
    root = make_imagenette(tmp_path / "d", n_train=1, n_val=2)
    weights = save_tiny_weights(tmp_path / "w.pt", seed=0)
    assert main(_nette_args(tmp_path, root, weights, "--run-id", "r")) == 0
    save_tiny_weights(weights, seed=1)  # same path, other content
    err_of(capsys)
    assert main(_nette_args(tmp_path, root, weights, "--run-id", "r")) == 2
    assert "model.weights_sha256" in one_line(err_of(capsys))
    assert main(_nette_args(tmp_path, root, weights, "--run-id", "r", "--overwrite")) == 0
    cfg = json.loads((tmp_path / "res" / "r" / "config.json").read_text())
    assert cfg["identity"]["model"]["weights_sha256"] == cfg["model"]["weights_sha256"]


@pytest.mark.parametrize(
    "change, field", [(["--n-images", "8"], "n_images"), (["--target", "label"], "target")]
)
def test_changed_settings_under_a_fixed_run_id_are_refused(cache, tmp_path, capsys, change, field):
    base = ["run", *TINY_VIT, *FAST, "--methods", "random", "--out", str(tmp_path), "--run-id", "mine"]
    assert xb(cache, *base) == 0
    before = (tmp_path / "mine" / "scores.csv").read_bytes()
    err_of(capsys)
    assert xb(cache, *base, *change) == 2
    assert f"settings.{field}" in one_line(err_of(capsys))
    assert (tmp_path / "mine" / "scores.csv").read_bytes() == before
    assert xb(cache, *base, *change, "--overwrite") == 0
    scores = pd.read_csv(tmp_path / "mine" / "scores.csv")
    assert scores.image_id.nunique() == (8 if field == "n_images" else 12)


def test_any_edited_source_file_changes_the_identity(monkeypatch):
    """Helpers count as much as the method's own file: each edit gives another fingerprint."""
    import xaibench.identity as identity

    base = identity.source_fingerprint()
    for edited in (
        "benchmark/sampling.py",
        "benchmark/adapter.py",
        "benchmark/removal.py",
        "methods/learned/amortized.py",
    ):
        real = identity.content_hash

        def fake(path, _edited=edited, _real=real):
            return "edited" if str(path).endswith(_edited) else _real(path)

        monkeypatch.setattr(identity, "content_hash", fake)
        assert identity.source_fingerprint() != base, edited
        monkeypatch.undo()
    assert identity.source_fingerprint() == base


# --------------------------------------------------------------------------- damaged files
def test_a_damaged_classifier_is_retrained_not_used(tmp_path, caplog):
    import plugin_tiny  # noqa: F401  (registers tiny_test_vit)

    from xaibench.models import load_model

    good = load_model("tiny_test_vit", cache_dir=str(tmp_path))
    (entry,) = (tmp_path / "models").iterdir()
    weights = entry / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a tensor
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="xaibench"):
        again = load_model("tiny_test_vit", cache_dir=str(tmp_path))
    assert "unusable" in caplog.text and "sha256" in caplog.text
    assert again.meta["weights_sha256"] == good.meta["weights_sha256"]  # retrained, identically
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert (
        load_model("tiny_test_vit", cache_dir=str(tmp_path)).meta["weights_sha256"]
        == good.meta["weights_sha256"]
    )


def test_a_truncated_part_is_recomputed(cache, tmp_path, capsys):
    args = ["run", *TINY_VIT, *FAST, "--methods", "random,grad_x_input_test", "--out", str(tmp_path)]
    assert xb(cache, *args) == 0
    (d,) = tmp_path.iterdir()
    before = (d / "scores.csv").read_bytes()
    part = d / "parts" / "grad_x_input_test" / "shard-0-of-1" / "scores.csv"
    part.write_text(part.read_text()[:60])
    (d / "parts" / "random" / "shard-0-of-1" / ".scores.csv.x.tmp").write_text("left by a killed writer")
    err_of(capsys)
    assert xb(cache, *args) == 0
    assert "damaged" in err_of(capsys)
    assert (d / "scores.csv").read_bytes() == before
    assert not list(d.rglob(".*.tmp"))


def test_an_edited_finished_run_is_not_aggregated(cache, tmp_path, capsys):
    assert xb(cache, "run", *TINY_VIT, *FAST, "--methods", "random", "--out", str(tmp_path)) == 0
    (d,) = tmp_path.iterdir()
    scores = d / "scores.csv"
    scores.write_text(scores.read_text().replace(",srg,", ",srg,1").replace("\n", "\n", 1))
    err_of(capsys)
    assert main(["leaderboard", str(d)]) == 2
    assert "changed after the run finished" in one_line(err_of(capsys))


def test_a_damaged_dataset_extraction_is_fetched_again(tmp_path, monkeypatch, caplog):
    from test_real_datasets import make_tar, md5

    from xaibench.datasets import imagenette, load_dataset

    root = make_imagenette(tmp_path / "src", n_train=1, n_val=1)
    archive = make_tar(root, tmp_path / "imagenette2-160.tgz", "imagenette2-160")
    monkeypatch.setitem(imagenette.ARCHIVES, "160", (archive.as_uri(), md5(archive)))
    cache = str(tmp_path / "cache")
    split = load_dataset("imagenette", "test", cache_dir=cache, size="160")
    path = Path(split.records[0].path)
    original = path.read_bytes()
    path.write_bytes(original[:-10] + b"0123456789")
    with caplog.at_level("WARNING", logger="xaibench"):
        again = load_dataset("imagenette", "test", cache_dir=cache, size="160")
    assert "unusable" in caplog.text
    assert Path(again.records[0].path).read_bytes() == original


# --------------------------------------------------------------------------- maps that are not numbers
def test_nan_and_inf_maps_are_failures_never_scores(cache, tmp_path, capsys):
    code = xb(
        cache,
        "run",
        *TINY_VIT,
        *FAST,
        "--methods",
        "random,nan_some_test,nan_all_test",
        "--out",
        str(tmp_path),
    )
    assert code == 1  # the all-infinite method failed
    (d,) = tmp_path.iterdir()
    cfg = json.loads((d / "config.json").read_text())["methods"]
    assert cfg["nan_all_test"]["status"] == "failed" and "infinite" in cfg["nan_all_test"]["reason"]
    assert cfg["nan_some_test"]["status"] == "done"
    scores = pd.read_csv(d / "scores.csv", dtype={"image_id": str})
    some = scores[scores.method == "nan_some_test"]
    even = some.image_id.str[-1].astype(int) % 2 == 0
    assert some[even].value.isna().all() and some[~even].value.notna().all()
    assert cfg["nan_some_test"]["nonfinite_maps"] == int(even.sum()) // 3  # three scores per image
    board = pd.read_csv(d / "leaderboard.csv")
    row = board[(board.method == "nan_some_test") & (board.metric == "srg")].iloc[0]
    assert row.n_nan == int(even.sum()) // 3 and row.n == 12 - row.n_nan
    assert "nan_all_test" not in set(board.method)


# --------------------------------------------------------------------------- locks
def _build_once(directory: str, log: str) -> None:
    def build(d: Path) -> dict:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.05)
        (d / "value.txt").write_text("42")
        return {}

    artifacts.cached(directory, "test entry", build, lambda d: (d / "value.txt").read_text())


def test_two_processes_never_build_the_same_entry(tmp_path):
    ctx = mp.get_context("fork")
    for trial in range(25):
        directory, log = tmp_path / f"e{trial}", tmp_path / f"log{trial}"
        procs = [ctx.Process(target=_build_once, args=(str(directory), str(log))) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert len(log.read_text().splitlines()) == 1, f"trial {trial}: built more than once"
        assert artifacts.verify(directory) is None


def test_a_lock_file_left_by_another_process_does_not_block(tmp_path):
    entry = tmp_path / "e"
    entry.mkdir()
    (entry / ".lock").write_text(str(os.getppid()))  # a live pid in a stale lock file
    start = time.time()
    assert artifacts.cached(entry, "test entry", lambda d: (d / "v").write_text("1") and {}, lambda d: 7) == 7
    assert time.time() - start < 5


# --------------------------------------------------------------------------- bad input, checked first
@pytest.mark.parametrize("run_id", ["../escape", "/abs/path", ".", "..", "a/b", "", "-x"])
def test_unsafe_run_ids_are_refused(tmp_path, capsys, run_id):
    assert (
        main(["--cache-dir", str(tmp_path / "c"), "run", "--run-id", run_id, "--out", str(tmp_path / "o")])
        == 2
    )
    assert "--run-id" in one_line(err_of(capsys))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("option", ["--out", "--cache-dir"])
@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_unwritable_directories_are_refused_before_any_work(tmp_path, capsys, option, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    path = blocker if kind == "file" else blocker / "sub"
    args = {"--out": str(tmp_path / "o"), "--cache-dir": str(tmp_path / "c")}
    args[option] = str(path)
    start = time.time()
    code = main(["--cache-dir", args["--cache-dir"], "run", "--out", args["--out"]])
    assert code == 2 and option in one_line(err_of(capsys))
    assert time.time() - start < 30  # refused before the default model is trained
    assert not (tmp_path / "c" / "models").exists()


def test_weights_for_the_embedded_model_work_with_wrappers(cache, tmp_path, capsys):
    import plugin_tiny  # noqa: F401

    from xaibench.models import load_model

    adapter = load_model("tiny_test_vit", cache_dir=cache)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": adapter.model.state_dict(), "epoch": 3}, wrapped)
    args = ["run", *TINY_VIT, *FAST, "--methods", "random", "--out", str(tmp_path / "o")]
    assert xb(cache, *args, "--weights", str(wrapped)) == 0
    (d,) = (tmp_path / "o").iterdir()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model"]["weights_sha256"] == adapter.meta["weights_sha256"]
    other = tmp_path / "other.pt"
    torch.save({"head.weight": torch.zeros(3, 3)}, other)
    err_of(capsys)
    assert xb(cache, *args, "--weights", str(other)) == 2
    assert "does not fit model 'tiny_test_vit'" in one_line(err_of(capsys))


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--cardinalities", ",,,"], "--cardinalities"),
        (["run", "--n-images", "100000000"], "100000 images"),
        (
            ["train", "classifier", "--dataset", "pets", "--model", "resnet18", "--removal-fraction", "2.5"],
            "[0, 1]",
        ),
        (["train", "salvage", "--epochs", "3"], "applies to 'xaibench train classifier' only"),
        (["run", "--n-images", "abc"], "invalid int value"),
    ],
)
def test_more_bad_input_gives_one_line(tmp_path, capsys, args, message):
    assert main(["--cache-dir", str(tmp_path), *args]) == 2
    assert message in one_line(err_of(capsys))


def test_leaderboard_out_must_be_a_file(cache, tmp_path, capsys):
    assert xb(cache, "run", *TINY_VIT, *FAST, "--methods", "random", "--out", str(tmp_path / "o")) == 0
    (d,) = (tmp_path / "o").iterdir()
    err_of(capsys)
    assert main(["leaderboard", str(d), "--out", str(tmp_path)]) == 2
    assert "is a directory" in one_line(err_of(capsys))


def test_a_plugin_that_exits_is_reported(tmp_path, capsys, monkeypatch):
    (tmp_path / "exiting_plugin.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--plugin", "exiting_plugin", "list", "methods"]) == 2
    assert "sys.exit(3)" in one_line(err_of(capsys))


def test_orphan_state_is_not_mistaken_for_a_lock(tmp_path):
    with pytest.raises(UserError, match="not empty and holds no xaibench run"):
        from xaibench.store import open_store

        (tmp_path / "r").mkdir()
        (tmp_path / "r" / "notes.txt").write_text("mine")
        with open_store(tmp_path, "r", {"x": 1}):
            pass


# --------------------------------------------------------------------------- preflight
def test_preflight_reports_every_missing_piece_at_once(tmp_path, capsys, monkeypatch):
    import xaibench.preflight as pre

    tried = []
    monkeypatch.setattr(pre, "reachable", lambda host, timeout=3.0: tried.append(host) or False)
    monkeypatch.setattr(pre, "timm_weights_cached", lambda name: False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["--cache-dir", str(tmp_path / "c"), "run", "--dataset", "imagenette", "--out", str(blocker)]
    start = time.time()
    assert main(args) == 2
    line = one_line(err_of(capsys))
    assert time.time() - start < 10
    assert "--out" in line and "s3.amazonaws.com cannot be reached" in line and "--data-root" in line
    assert (
        "pretrained weights for 'vit_small_patch16_224.augreg_in21k_ft_in1k'" in line and "--weights" in line
    )
    assert sorted(tried) == ["huggingface.co", "s3.amazonaws.com"]  # one attempt per host, no retries


def test_preflight_checks_disk_space_and_local_copies(tmp_path, monkeypatch):
    import xaibench.preflight as pre
    from xaibench.spec import RunConfig, resolve

    monkeypatch.setattr(pre, "reachable", lambda host, timeout=3.0: True)
    monkeypatch.setattr(pre, "_free_bytes", lambda path: 10 * 2**20)
    spec = resolve(
        RunConfig(dataset="imagenette", model=TINY, out=str(tmp_path / "o"), cache_dir=str(tmp_path))
    )
    with pytest.raises(UserError, match="GiB free.*needs about"):
        pre.preflight(spec)
    root = make_imagenette(tmp_path / "d", n_train=1, n_val=1)
    weights = save_tiny_weights(tmp_path / "w.pt")
    local = RunConfig(
        dataset="imagenette", model=TINY, data_root=str(root), weights=str(weights), out=str(tmp_path / "o")
    )
    pre.preflight(resolve(local))  # everything at hand: no network, no disk needed
    missing = RunConfig(
        dataset="imagenette", model=TINY, data_root=str(tmp_path / "none"), weights=str(tmp_path / "w2")
    )
    with pytest.raises(UserError, match="no Imagenette found.*\\|.*--weights .*no such file"):
        pre.preflight(resolve(missing))
