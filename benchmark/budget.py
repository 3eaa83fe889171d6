"""One budget for every batched pass through the model and every chunked buffer around it.

The removal engine, and every method that batches samples (noisy copies, integration steps,
suppressed copies, masks, distractor blends), splits its inputs into passes of at most
:meth:`Budget.rows` inputs: ``rows()`` for forwards without gradients, ``rows(backward=True)``
for forward + backward passes, whose activations are all kept until the backward pass.
Buffers built ahead of the passes (the metrics' keep-masks) are chunked with
:meth:`Budget.items`, from the same memory budget.

Memory is a ceiling. The per-input cost is measured once per model by one forward of a single
input with hooks on its leaf modules: a forward without gradients holds a few of the largest
activations at a time (counted as 8 × the largest leaf output), a backward pass keeps every
leaf output plus its gradient (2 × their sum, plus the forward's peak). The budget defaults to
1 GiB on the CPU and a quarter of the free memory on a CUDA device; ``megabytes`` sets it.

Throughput is the target. The fastest pass is often far below what memory allows: on a CPU,
passes whose activations stay in the caches run faster per input than huge ones (the tiny
default ViT at one thread: 967 inputs/s in passes of 16, 552/s in passes of 1,266, the memory
ceiling). So forward passes are sized by a short calibration on the actual device, model and
thread count (:func:`calibrate`: pass sizes doubling from 16 per CPU thread, within half a
second, each size keeping its fastest time so that interruptions by other processes count as
little as possible), capped by the memory ceiling. ``forward_rows`` (the CLI's
``--chunk-size``) overrides it.

Reproducibility. A forward's float32 results can depend on the pass size: kernels for other
shapes round differently (measured here on the default ViT before the engine guarded against
it: a pass of 1 input, or ``drop`` passes mixing rows of other lengths, moved probabilities by
up to 7e-8). The removal engine therefore computes each row the same way whatever the pass
(see :mod:`xaibench.engine`; bitwise identical here for every pass size), but that rests on
the kernels, which differ between machines, and timings are noisy, so a second calibration may
choose another size. The chosen size is therefore also stored, keyed by everything that
determines the speed (device name, model weights fingerprint, input size, thread count, torch
version, the ceiling searched, the calibration's version): in this process always, and on
disk when ``cache_dir`` is set (one small JSON file per key, written atomically under a file
lock, so that concurrent ranks agree). A second run and a resumed run on the same machine then
use the same pass size and give the same numbers.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

DEFAULT_CPU_MB = 1024
MAX_ROWS = 4096
BYTES = 4
#: time allowed to one calibration (the sweep stops, and the re-timing rounds end, within it)
CALIBRATION_SECONDS = 0.5
#: the smallest pass size calibration considers, per CPU thread (16 on a GPU): below it the
#: per-pass work outside the model (indexing, composing inputs, launching kernels) and, with
#: several threads, the synchronisation of the threads at every operation weigh on throughput
#: (on a shared CPU one descheduled thread stalls the others at each of them)
MIN_CALIBRATED_ROWS = 16
#: bump when :func:`calibrate` changes, so cached choices are made again
CALIBRATION_VERSION = 3

log = logging.getLogger(__name__)

_CHOSEN: Dict[str, dict] = {}  # this process's calibrations, by key digest


class Budget:
    def __init__(
        self,
        model: nn.Module,
        input_size: Tuple[int, int],
        device: torch.device,
        megabytes: Optional[float] = None,
        forward_rows: Optional[int] = None,
        cache_dir: Optional[str | os.PathLike] = None,
        calibrate: bool = True,
    ) -> None:
        self.model, self.input_size, self.device = model, tuple(input_size), torch.device(device)
        self.megabytes = float(megabytes) if megabytes else self._default_megabytes()
        self.forward_rows = forward_rows
        #: directory of stored calibrations (None: kept in this process only)
        self.cache_dir = cache_dir
        #: False: forward passes are as large as memory allows (no calibration)
        self.calibrate = calibrate
        #: the last calibration used: {"rows", "source" ("measured" or "cache"), "key", ...}
        self.calibration: Optional[dict] = None
        self._cost: Optional[Tuple[int, int]] = None
        self._fingerprint: Optional[str] = None
        self._chosen: Dict[tuple, int] = {}

    def _default_megabytes(self) -> float:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return free / 2**20 * 0.25
        return DEFAULT_CPU_MB

    def _measure(self) -> Tuple[int, int]:
        """(largest, total) elements of the leaf modules' outputs for one input."""
        if self._cost is None:
            largest, total = [0], [0]

            def hook(_module, _inputs, out):
                if torch.is_tensor(out):
                    largest[0] = max(largest[0], out.numel())
                    total[0] += out.numel()

            leaves = [m for m in self.model.modules() if not list(m.children())]
            handles = [m.register_forward_hook(hook) for m in leaves]
            try:
                with torch.no_grad(), _eval_mode(self.model):
                    self.model(torch.zeros(1, 3, *self.input_size, device=self.device))
            finally:
                for h in handles:
                    h.remove()
            floor = 3 * self.input_size[0] * self.input_size[1]
            self._cost = (max(largest[0], floor), max(total[0], floor))
        return self._cost

    def bytes_per_input(self, backward: bool = False) -> int:
        largest, total = self._measure()
        elements = 8 * largest + (2 * total if backward else 0)
        return BYTES * elements

    def ceiling(self, backward: bool = False) -> int:
        """The most inputs one pass may hold within the memory budget (1 to 4096)."""
        fit = int(self.megabytes * 2**20 // self.bytes_per_input(backward))
        return max(1, min(MAX_ROWS, fit))

    def rows(self, backward: bool = False) -> int:
        """Inputs per pass: ``forward_rows`` when set (forwards), else the calibrated size for
        forwards (at most the memory ceiling), and the memory ceiling for backward passes."""
        if backward:
            return self.ceiling(backward=True)
        if self.forward_rows:
            return int(self.forward_rows)
        if not self.calibrate:
            return self.ceiling()
        return self._calibrated()

    def items(self, bytes_each: int) -> int:
        """How many buffers of ``bytes_each`` bytes fit in the memory budget (at least 1)."""
        return max(1, int(self.megabytes * 2**20 // max(1, int(bytes_each))))

    def slices(self, n: int, backward: bool = False, per_row: int = 1) -> Iterator[slice]:
        """Consecutive slices of ``range(n)`` whose items, ``per_row`` inputs each, fit one pass."""
        step = max(1, self.rows(backward) // max(1, per_row))
        for s in range(0, n, step):
            yield slice(s, min(n, s + step))

    # ------------------------------------------------------------ calibration
    def calibration_key(self) -> dict:
        """Everything the calibrated pass size depends on (it is stored under this key)."""
        from .io import weights_fingerprint

        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        cpu = self.device.type == "cpu"
        return {
            "device": device_name(self.device),
            "weights": self._fingerprint,
            "input_size": list(self.input_size),
            "threads": torch.get_num_threads() if cpu else None,
            "torch": torch.__version__,
            "ceiling": self.ceiling(),
            "version": CALIBRATION_VERSION,
        }

    def _calibrated(self) -> int:
        memo = (torch.get_num_threads(), self.ceiling())
        if memo in self._chosen:
            return self._chosen[memo]
        from .io import lock, read_json, stable_hash, write_json

        key = self.calibration_key()
        digest = stable_hash(key, 16)
        record = _CHOSEN.get(digest)
        if record is None and self.cache_dir is not None:
            directory = Path(self.cache_dir)
            path = directory / f"{digest}.json"
            try:
                with lock(directory, "the pass-size calibration"):
                    if path.exists():
                        try:
                            record = {**read_json(path), "source": "cache"}
                        except (OSError, ValueError):
                            record = None  # unreadable: measure again and overwrite
                    usable = record is not None and isinstance(record.get("rows"), int) and record["rows"] > 0
                    if not usable or record.get("key") != key:
                        record = measure_calibration(self, key)
                        write_json(path, record)
            except OSError as exc:  # an unwritable cache costs reproducibility across runs, not the run
                log.warning(f"cannot store the pass-size calibration in {directory} ({exc}); kept in memory")
        if record is None:
            record = measure_calibration(self, key)
        _CHOSEN[digest] = record
        self.calibration = record
        rows = max(1, min(int(record["rows"]), key["ceiling"]))
        self._chosen[memo] = rows
        return rows

    def describe(self) -> dict:
        """What sized the forward passes (for a run's config.json)."""
        if self.forward_rows:
            return {"rows": int(self.forward_rows), "source": "override"}
        if not self.calibrate:
            return {"rows": self.ceiling(), "source": "memory"}
        rows = self.rows()
        return {"rows": rows, **{k: v for k, v in (self.calibration or {}).items() if k != "rows"}}


def measure_calibration(budget: Budget, key: dict) -> dict:
    """Calibrate ``budget``'s model on its device: the record stored under ``key``."""
    # a pass as the engine makes it: gather the images of a batch (distinct memory for every
    # input, as real inputs have), compose them with a fill, forward, softmax
    g = torch.Generator().manual_seed(0)
    images = torch.randn(32, 3, *budget.input_size, generator=g).to(budget.device)

    def forward(n: int) -> None:
        b = torch.arange(n, device=budget.device) % len(images)
        keep = (b % 2 == 0)[:, None, None, None]
        budget.model(torch.where(keep, images[b], 0.0)).float().softmax(-1)

    smallest = MIN_CALIBRATED_ROWS * (key["threads"] or 1)
    with torch.inference_mode(), _eval_mode(budget.model):
        rows, timings, seconds = calibrate(forward, key["ceiling"], budget.device, smallest=smallest)
    return {
        "rows": rows,
        "source": "measured",
        "key": key,
        "inputs_per_second": {str(n): round(n / t, 1) for n, t in sorted(timings.items())},
        "seconds": round(seconds, 3),
    }


def calibrate(
    forward: Callable[[int], None],
    ceiling: int,
    device: torch.device,
    seconds: float = CALIBRATION_SECONDS,
    smallest: int = MIN_CALIBRATED_ROWS,
) -> Tuple[int, Dict[int, float], float]:
    """The pass size to use, the fastest time measured for each size tried, and the time spent.

    After a warm-up pass of a quarter of the smallest size (it also starts the CPU thread
    pool), sizes ``smallest``, twice that, ... up to ``ceiling`` (or ``ceiling`` alone when it
    is smaller) are timed one pass each, in ascending order, while the next pass (predicted
    from the best throughput so far) fits in ``seconds``. A size slower than 85 % of the best
    is timed once more (a pause of the process looks the same as a slow size) and ends the
    sweep if it stays slow: past the peak, on CPUs, the activations stop fitting in the caches.
    The best sizes are then re-timed in turn while time remains, each keeping its fastest time.
    The choice is the smallest size within 5 % of the best throughput: past the peak throughput
    falls fast (a pass whose activations no longer fit in the caches), below it slowly (the
    work around the model per pass), so of two sizes that measure alike the smaller is the
    safer; the smallest size tried already amortises that work. The time spent is about
    ``seconds`` at most, or 1.25 passes of the smallest size when one pass takes longer (a
    ViT-S/16 at 224 px on one CPU thread: about 2 s). ``forward(n)`` runs one pass of ``n``
    inputs.
    """

    def timed(n: int) -> float:
        sync(device)
        t = time.perf_counter()
        forward(n)
        sync(device)
        return max(time.perf_counter() - t, 1e-9)

    def left() -> float:
        return seconds - (time.perf_counter() - start)

    start = time.perf_counter()
    sizes: List[int] = []
    n = smallest
    while n <= ceiling:
        sizes.append(n)
        n *= 2
    sizes = sizes or [ceiling]
    forward(max(1, sizes[0] // 4))  # warm-up: lazy initialisation, allocator, thread pool
    best: Dict[int, float] = {}
    for n in sizes:
        top = max((m / t for m, t in best.items()), default=None)
        if top is not None and n / top > left():
            break
        best[n] = timed(n)
        top = max(m / t for m, t in best.items())
        if n / best[n] < 0.85 * top:
            if n / top <= left():
                best[n] = min(best[n], timed(n))
            if n / best[n] < 0.85 * top:
                break
    for _ in range(3):
        ranked = sorted(best, key=lambda m: best[m] / m)[:3]
        if sum(best[m] for m in ranked) > left():
            break
        for m in ranked:
            best[m] = min(best[m], timed(m))
    top = max(m / t for m, t in best.items())
    chosen = min(m for m, t in best.items() if m / t >= 0.95 * top)
    return chosen, best, time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """A name for the hardware behind ``device`` (GPU model, or CPU model and core count)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(index)}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{device.type}:{model} ({os.cpu_count()} cores)"


class _eval_mode:
    """Every module in eval mode within the block (no batch-norm statistics updated, no dropout),
    each module's own flag restored afterwards (a model may be mid-training)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        return False
