"""Running under ``torchrun``: ranks, the device of each rank, threads, and the few collectives.

``torchrun --nproc-per-node N [--nnodes M ...] -m xaibench run ...`` starts one process per
rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` set; :func:`setup`
then joins the process group (gloo on the CPU, nccl on CUDA, one GPU per rank). Without those
variables the run is one process of a world of one and nothing here communicates.

Threads: ranks that share a machine share its cores, and torch's intra-op threads slow down
badly when more threads than cores compete. Each rank therefore uses ``cores // ranks on the
machine`` threads (at least one), unless ``--threads`` says otherwise; torchrun's own default of
``OMP_NUM_THREADS=1`` is overridden by that choice.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    initialised: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialised:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """``obj`` of rank 0, on every rank."""
        if not self.initialised:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def main_first(self, main: Callable[[], T], others: Optional[Callable[[], T]] = None) -> T:
        """``main()`` on rank 0; once it succeeded, ``others()`` (default: ``main``) on the other
        ranks, which then find what rank 0 prepared (caches, downloads) instead of waiting on its
        locks or repeating its work. If rank 0 fails, every rank stops: with rank 0's one line
        (:class:`~xaibench.errors.UserError`) or naming rank 0's failure."""
        from .errors import UserError

        result, error = None, None
        if self.main:
            try:
                result = main()
            except BaseException as exc:  # every rank must hear of it, then rank 0 re-raises it
                error = exc
        failure = self.broadcast(None if error is None else (isinstance(error, UserError), str(error)))
        if error is not None:
            raise error
        if failure is not None:
            one_line, message = failure
            raise UserError(message) if one_line else RuntimeError(f"rank 0 failed: {message}")
        return result if self.main else (others or main)()

    def close(self) -> None:
        if self.initialised:
            torch.distributed.destroy_process_group()
            self.initialised = False


def from_env() -> Dist:
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(
        rank=int(env["RANK"]),
        world=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_world=int(env.get("LOCAL_WORLD_SIZE", "1")),
    )


def setup(device: str, threads: Optional[int] = None) -> tuple[Dist, str]:
    """Join the process group when started by torchrun; returns (dist, this rank's device)."""
    dist = from_env()
    cores = os.cpu_count() or 1
    wanted = threads or (max(1, cores // dist.local_world) if dist.world > 1 else None)
    if wanted:
        torch.set_num_threads(wanted)
    if dist.world == 1:
        return dist, device
    if device.startswith("cuda"):
        device = f"cuda:{dist.local_rank}"
        torch.cuda.set_device(device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=6))
    dist.initialised = True
    log.info(f"rank {dist.rank} of {dist.world} on {device} with {torch.get_num_threads()} threads")
    return dist, device


def rank_batches(n_images: int, batch_size: int, rank: int, world: int) -> List[int]:
    """The batch numbers rank ``rank`` scores: batch b goes to rank b mod ``world``. The batch is
    the unit of sharding because a batch's images are explained together (the run's scores may
    depend on the batch size at float rounding, so the batches are those of one process)."""
    return list(range(rank, -(-n_images // batch_size), world))


def sharding_advice(n_images: int, batch_size: int, world: int) -> Optional[str]:
    """One line when the busiest rank scores over a quarter more images than it would with the
    images dealt out one by one (the run takes as long as that rank), with a batch size that
    spreads them evenly."""
    if world < 2 or n_images == 0:
        return None

    def images(b: int) -> List[int]:  # images per rank with batches of b
        return [
            sum(min(b, n_images - i * b) for i in rank_batches(n_images, b, r, world)) for r in range(world)
        ]

    counts = images(batch_size)
    if max(counts) <= 1.25 * -(-n_images // world):
        return None
    per_rank = -(-n_images // (world * batch_size))  # batches per rank at the suggested size
    better = -(-n_images // (world * per_rank))
    return (
        f"{n_images} images in batches of {batch_size} give the {world} ranks {counts} images: "
        f"the run lasts as long as the busiest rank; --batch-size {better} gives them {images(better)}"
    )


def rank_order(parts: Sequence[T], trained: Callable[[T], bool], rank: int, world: int) -> List[T]:
    """The order in which rank ``rank`` goes through ``parts``: under torchrun the parts that
    train an explainer come first, each rank starting at another one, so that the ranks train
    different explainers at once (each is trained by the first rank to reach it, under a lock;
    the others load it) instead of all waiting on the same one; a single process keeps ``parts``."""
    if world < 2:
        return list(parts)
    first = [p for p in parts if trained(p)]
    k = rank % len(first) if first else 0
    return first[k:] + first[:k] + [p for p in parts if not trained(p)]
