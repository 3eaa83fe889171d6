"""The pass-size calibration of the Budget: stored and reused (a second run and a resumed run
use the same size), keyed by what determines speed, overridden by --chunk-size, chosen by
throughput (on a simulated device), harmless to a model being trained."""

import json

import pytest
import torch
from conftest import make_tiny_cnn, make_tiny_vit

from xaibench import budget as budget_mod
from xaibench.budget import Budget, calibrate


@pytest.fixture
def fresh_calibrations(monkeypatch):
    monkeypatch.setattr(budget_mod, "_CHOSEN", {})


def _budget(tmp_path=None, seed=0):
    adapter = make_tiny_vit(seed=seed)
    return Budget(adapter.model, (32, 32), torch.device("cpu"), cache_dir=tmp_path)


def test_calibration_is_stored_and_reused(tmp_path, fresh_calibrations, monkeypatch):
    first = _budget(tmp_path)
    rows = first.rows()
    assert first.calibration["source"] == "measured"
    assert 1 <= rows <= first.ceiling()
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["rows"] == rows and stored["key"]["threads"] == torch.get_num_threads()

    # another process (empty in-process memo) on the same machine: the stored size, no measurement
    monkeypatch.setattr(budget_mod, "_CHOSEN", {})
    monkeypatch.setattr(budget_mod, "calibrate", lambda *a, **k: pytest.fail("measured again"))
    stored["rows"] = 48  # whatever was stored wins over a new measurement
    files[0].write_text(json.dumps(stored))
    second = _budget(tmp_path)
    assert second.rows() == 48 and second.calibration["source"] == "cache"
    # within one process, a second adapter of the same model agrees without reading the disk
    files[0].unlink()
    assert _budget(tmp_path).rows() == 48


def test_calibration_key_separates_models_threads_and_ceilings(tmp_path, fresh_calibrations):
    a, b = _budget(tmp_path, seed=0), _budget(tmp_path, seed=1)
    assert a.calibration_key()["weights"] != b.calibration_key()["weights"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        key1 = a.calibration_key()
        a.rows()
        torch.set_num_threads(2)
        key2 = a.calibration_key()
        a.rows()
    finally:
        torch.set_num_threads(before)
    assert key1["threads"] == 1 and key2["threads"] == 2
    assert len(list(tmp_path.glob("*.json"))) == 2
    a.megabytes = 1e-3  # a ceiling of 1 row caps whatever was calibrated
    assert a.ceiling() == 1 and a.rows() == 1


def test_override_and_backward_passes_skip_calibration(fresh_calibrations, monkeypatch):
    monkeypatch.setattr(budget_mod, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    b = _budget()
    assert b.rows(backward=True) == b.ceiling(backward=True)
    b.forward_rows = 7
    assert b.rows() == 7 and b.describe() == {"rows": 7, "source": "override"}
    b.forward_rows, b.calibrate = None, False
    assert b.rows() == b.ceiling()
    adapter = make_tiny_vit()
    adapter.chunk_size = 3
    assert adapter.chunk_size == 3 and adapter.budget.rows() == 3


def test_calibration_choice_on_a_simulated_device(monkeypatch):
    """A fake clock: per-input cost falls until 64 inputs (overheads amortised), then rises (the
    activations leave the caches). The choice is the smallest size within 5 % of the best."""
    clock = {"t": 0.0}
    per_input = {16: 1.0, 32: 0.8, 64: 0.7, 128: 0.72, 256: 1.2, 512: 2.0}
    monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: clock["t"])

    def forward(n):
        clock["t"] += n * per_input.get(n, 1.0) * 1e-4

    chosen, timings, _ = calibrate(forward, ceiling=4096, device=torch.device("cpu"), seconds=10.0)
    assert chosen == 64 and 128 in timings  # 128 (0.72) is within 5 % of 64 (0.7): the smaller wins
    assert 512 not in timings  # the sweep stopped once throughput fell below 85 % of the best
    # a pause of the process during one pass is timed again instead of ending the sweep
    stalls = {32: 1}

    def pausing(n):
        forward(n)
        if stalls.get(n):
            stalls[n] -= 1
            clock["t"] += 1.0

    chosen, timings, _ = calibrate(pausing, ceiling=4096, device=torch.device("cpu"), seconds=10.0)
    assert chosen == 64 and 256 in timings and stalls[32] == 0
    # the time allowed bounds the sweep: warm-up, 16 and 32 fit in 8 ms of simulated passes, 64 does not
    chosen, timings, _ = calibrate(forward, ceiling=4096, device=torch.device("cpu"), seconds=8e-3)
    assert sorted(timings) == [16, 32] and chosen == 32
    chosen, _, _ = calibrate(forward, ceiling=40, device=torch.device("cpu"), seconds=10.0)
    assert chosen == 32
    chosen, _, _ = calibrate(forward, ceiling=8, device=torch.device("cpu"), seconds=10.0)
    assert chosen == 8


def test_calibration_leaves_a_training_model_untouched(fresh_calibrations):
    cnn = make_tiny_cnn()
    cnn.model.train()
    cnn.model.bn1.eval()  # a deliberately frozen layer stays frozen
    state = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    cnn.budget.rows()
    assert cnn.model.training and not cnn.model.bn1.training
    for k, v in cnn.model.state_dict().items():
        assert torch.equal(v, state[k]), k  # no batch-norm statistics updated


def test_an_unusable_cache_directory_costs_only_the_storage(tmp_path, fresh_calibrations, caplog):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    b = _budget(blocked)
    assert 1 <= b.rows() <= b.ceiling() and b.calibration["source"] == "measured"
    assert "cannot store the pass-size calibration" in caplog.text
