"""One memory budget for every batched pass through the model.

The removal engine, and every method that batches samples (noisy copies, integration steps,
suppressed copies, masks, distractor blends), splits its inputs into passes of at most
:meth:`Budget.rows` inputs: ``rows()`` for forwards without gradients, ``rows(backward=True)``
for forward + backward passes, whose activations are all kept until the backward pass.

The per-input cost is measured once per model by one forward of a single input with hooks on
its leaf modules: a forward without gradients holds a few of the largest activations at a time
(counted as 8 × the largest leaf output), a backward pass keeps every leaf output plus its
gradient (2 × their sum, plus the forward's peak). The budget defaults to 1 GiB on the CPU and
a quarter of the free memory on a CUDA device; ``megabytes`` sets it, ``forward_rows`` (the
CLI's ``--chunk-size``) overrides the forward size directly.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn

DEFAULT_CPU_MB = 1024
MAX_ROWS = 4096
BYTES = 4


class Budget:
    def __init__(
        self,
        model: nn.Module,
        input_size: Tuple[int, int],
        device: torch.device,
        megabytes: Optional[float] = None,
        forward_rows: Optional[int] = None,
    ) -> None:
        self.model, self.input_size, self.device = model, tuple(input_size), torch.device(device)
        self.megabytes = float(megabytes) if megabytes else self._default_megabytes()
        self.forward_rows = forward_rows
        self._cost: Optional[Tuple[int, int]] = None

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
                with torch.no_grad():
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

    def rows(self, backward: bool = False) -> int:
        """Inputs per pass: at least 1, at most 4096 (``forward_rows`` when set, for forwards)."""
        if self.forward_rows and not backward:
            return int(self.forward_rows)
        fit = int(self.megabytes * 2**20 // self.bytes_per_input(backward))
        return max(1, min(MAX_ROWS, fit))

    def slices(self, n: int, backward: bool = False, per_row: int = 1) -> Iterator[slice]:
        """Consecutive slices of ``range(n)`` whose items, ``per_row`` inputs each, fit one pass."""
        step = max(1, self.rows(backward) // max(1, per_row))
        for s in range(0, n, step):
            yield slice(s, min(n, s + step))
