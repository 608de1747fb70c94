"""Data-parallel training under ``torchrun`` (PyTorch DDP), one process per GPU or CPU worker.

``torchrun --nproc_per_node=N -m napari_glimpse train celnet ...`` starts N copies of the same
command; torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address).
:func:`process_group` reads them: with one process (a plain run, the GUI) nothing changes; with
more it joins the process group (NCCL on CUDA, Gloo on CPU), and the training loop

* puts each process on ``cuda:LOCAL_RANK`` when the device is CUDA,
* splits every global batch of ``batch_size`` patches between the ranks (rank ``r`` takes
  patches ``r, r + N, ...`` of the batch), so the effective batch and learning-rate schedule
  do not depend on N and every patch is used once per epoch across the ranks,
* averages gradients through :class:`torch.nn.parallel.DistributedDataParallel`,
* validates and writes checkpoints on rank 0 only (the other ranks never touch ``out``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "from_env", "process_group", "is_main_process"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a torchrun job (rank 0 of 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices):
        """This rank's share of a global batch (every ``world_size``-th index from ``rank``)."""
        return indices[self.rank :: self.world_size]

    def all_reduce_sum(self, *values: float) -> list[float]:
        """Sum plain numbers over the ranks (identity with one process)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64)
        backend = torch.distributed.get_backend()
        if backend == "nccl":
            t = t.cuda()
        torch.distributed.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def from_env(environ=None) -> DistContext:
    """The torchrun variables of this process; rank 0 of 1 when they are absent."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"bad torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK): {exc}") from exc
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistContext(rank=rank, world_size=world, local_rank=local)


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 (the process that prints and writes)."""
    return from_env().is_main


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[DistContext, torch.device]]:
    """Join the torchrun process group for the duration (no-op for one process).

    Yields the context and the device this rank trains on. The group is left when the block
    ends, also when a cancelled training generator is closed.
    """
    ctx = from_env()
    if not ctx.enabled:
        yield ctx, device
        return
    if not torch.distributed.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    already = torch.distributed.is_initialized()
    if not already:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield ctx, device
    finally:
        if not already:
            torch.distributed.destroy_process_group()
