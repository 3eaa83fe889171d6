"""``xaibench evaluate``: maps saved by a run score exactly as in the run; bad files are refused
with one line each, before anything is scored."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from xaibench.cli import main

BASE = [
    "--model",
    "tiny_test_vit",
    "--n-images",
    "10",
    "--batch-size",
    "4",
    "--cardinalities",
    "3",
    "--quiet",
]
METRICS = ["--metrics", "srg,completeness,pxap"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    cache = str(root / "cache")
    args = [
        "run",
        *BASE,
        *METRICS,
        "--methods",
        "random,grad_x_input_test",
        "--save-maps",
        "--out",
        str(root / "o"),
    ]
    assert main(["--plugin", "plugin_tiny", "--cache-dir", cache, *args]) == 0
    (run,) = (root / "o").iterdir()
    return cache, run


def evaluate(cache, out, *files, extra=()):
    args = ["evaluate", *BASE, *METRICS, "--out", str(out), *extra]
    for f in files:
        args += ["--maps", str(f)]
    return main(["--plugin", "plugin_tiny", "--cache-dir", cache, *args])


def test_saved_maps_score_exactly_as_in_the_run(saved, tmp_path):
    cache, run = saved
    maps = run / "maps" / "grad_x_input_test.npz"
    with np.load(maps) as data:
        assert "extra_maps" in data.files  # completeness explained the second label: its maps are kept
        assert json.loads(str(data["meta"]))["model"]["weights_sha256"]
    assert (
        evaluate(cache, tmp_path, maps, run / "maps" / "random.npz", extra=["--name", "gxi", "--name", "rnd"])
        == 0
    )
    (d,) = tmp_path.iterdir()
    theirs = pd.read_csv(run / "scores.csv", dtype=str)
    ours = pd.read_csv(d / "scores.csv", dtype=str)
    for name, original in (("gxi", "grad_x_input_test"), ("rnd", "random")):
        a = theirs[theirs.method == original].drop(columns="method").reset_index(drop=True)
        b = ours[ours.method == name].drop(columns="method").reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)  # every value, as written: byte for byte
    board = pd.read_csv(d / "leaderboard.csv")
    assert {"gxi", "rnd"} <= set(board.method)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def _bad_files(saved, tmp_path):
    _, run = saved
    with np.load(run / "maps" / "random.npz") as data:
        good = {k: data[k] for k in data.files if not k.startswith("extra_")}
    meta = json.loads(str(good["meta"]))
    other_data = json.dumps({**meta, "dataset": {**meta["dataset"], "fingerprint": "0" * 16}})
    other_model = json.dumps({**meta, "model": {**meta["model"], "weights_sha256": "f" * 16}})
    nan = good["maps"].copy()
    nan[3, 0, 0] = np.nan
    targets = good["targets"].copy()
    targets[0] = (targets[0] + 1) % 10
    cases = {
        "missing ids": ({**good, "maps": good["maps"][1:], "ids": good["ids"][1:],
                         "targets": good["targets"][1:]}, "lacks 1 of the run's 10 images"),
        "extra ids": ({**good, "ids": np.array(list(good["ids"][:-1]) + ["nope-1"])}, "lacks 1"),
        "foreign id": ({**good, "maps": np.concatenate([good["maps"], good["maps"][:1]]),
                        "ids": np.array(list(good["ids"]) + ["nope-1"]),
                        "targets": np.concatenate([good["targets"], good["targets"][:1]])},
                       "not among the run's images"),
        "shape": ({**good, "maps": good["maps"][:, :1]}, "do not fit the model"),
        "level": ({**good, "level": np.array("voxel")}, "level must be one of"),
        "nan": ({**good, "maps": nan}, "NaN or infinite"),
        "dtype": ({**good, "maps": good["maps"].astype(np.int32)}, "must be floating point"),
        "dataset": ({**good, "meta": np.array(other_data)}, "made for another dataset"),
        "model": ({**good, "meta": np.array(other_model)}, "made for another model"),
        "targets": ({**good, "targets": targets}, "explain another class than the run's target"),
    }  # fmt: skip
    files = {name: (_write(tmp_path / f"{name.replace(' ', '_')}.npz", **arrays), msg)
             for name, (arrays, msg) in cases.items()}  # fmt: skip
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    files["corrupt"] = (corrupt, "not a readable .npz file")
    return files


def test_every_bad_file_gets_its_line_and_nothing_is_scored(saved, tmp_path, capsys):
    cache, _ = saved
    for name, (path, message) in _bad_files(saved, tmp_path).items():
        out = tmp_path / f"out-{path.stem}"
        capsys.readouterr()
        assert evaluate(cache, out, path) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], (name, err)
        assert not out.exists() or not any(out.iterdir()), name


def test_maps_from_plain_numpy(saved, tmp_path):
    """What the README shows: patch maps written with numpy alone, one map per image."""
    cache, _ = saved
    ids = [f"synthetic-test-{i:05d}" for i in range(10)]
    yy, xx = np.mgrid[0:4, 0:4]
    prior = -((yy - 1.5) ** 2 + (xx - 1.5) ** 2).astype(np.float32)
    path = _write(
        tmp_path / "center.npz", maps=np.repeat(prior[None], 10, 0), ids=np.array(ids), level="patch"
    )
    assert evaluate(cache, tmp_path / "o", path) == 0
    (d,) = (tmp_path / "o").iterdir()
    scores = pd.read_csv(d / "scores.csv")
    assert set(scores.method) == {"center"} and scores.value.notna().all()
