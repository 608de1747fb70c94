"""Data-parallel training under ``torchrun`` (PyTorch DDP), one process per GPU or CPU worker.

``torchrun --nproc_per_node=N -m napari_glimpse train celnet ...`` starts N copies of the same
command; torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address).
:func:`process_group` reads them: with one process (a plain run, the GUI) nothing changes; with
more it joins the process group (NCCL on CUDA, Gloo on CPU), and the training loop

* puts each process on ``cuda:LOCAL_RANK`` when the device is CUDA,
* splits every global batch of ``batch_size`` patches between the ranks (rank ``r`` takes
  patches ``r, r + N, ...`` of the batch), so the effective batch and learning-rate schedule
  do not depend on N and every patch is used once per epoch across the ranks,
* averages gradients through :class:`torch.nn.parallel.DistributedDataParallel` (patch
  batches, equal shares), or, for a trainer whose unit is a slide or a tree level (uneven
  shares, a rank with nothing to do in a step), sums them itself with
  :meth:`DistContext.sync_grads`, so that N ranks take the same steps as one process,
* validates and writes checkpoints on rank 0 only (the other ranks never touch ``out``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DistContext", "from_env", "process_group", "is_main_process", "item_steps"]


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
        t = self._on_backend(torch.tensor(values, dtype=torch.float64))
        torch.distributed.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def _on_backend(self, t: torch.Tensor) -> torch.Tensor:
        return t.cuda() if torch.distributed.get_backend() == "nccl" and not t.is_cuda else t

    def sync_grads(self, model: torch.nn.Module) -> None:
        """Sum the gradients of ``model`` over the ranks (no-op with one process).

        Each rank backpropagates its share of a step's losses, each scaled by ``1 / (items in
        the whole step)``: the sum is then the gradient one process would have for the step. A
        parameter with a gradient on some rank only (a rank with no item, or a tree level that
        another rank owns) gets the others' gradient; one with a gradient on no rank keeps None,
        so the optimiser skips it as it would in one process.
        """
        if not self.enabled:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        have = self._on_backend(torch.tensor([p.grad is not None for p in params], dtype=torch.int32))
        torch.distributed.all_reduce(have)
        live = [p for p, h in zip(params, have.tolist(), strict=True) if h]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_kind: dict = {}
        for p in live:
            by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in by_kind.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            on = self._on_backend(flat)
            torch.distributed.all_reduce(on)
            flat = on.to(flat.device)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast_module(self, model: torch.nn.Module, src: int = 0) -> None:
        """Give every rank rank ``src``'s parameters and buffers (no-op with one process)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                on = self._on_backend(t.data)
                torch.distributed.broadcast(on, src)
                if on is not t.data:
                    t.data.copy_(on)

    def check_in_step(self, model: torch.nn.Module) -> None:
        """Raise RuntimeError unless every rank holds the same weights (one checksum per rank)."""
        if not self.enabled:
            return
        with torch.no_grad():
            total = sum(float(p.double().sum()) for p in model.parameters())
        spread = self._on_backend(torch.tensor([total, -total], dtype=torch.float64))
        torch.distributed.all_reduce(spread, op=torch.distributed.ReduceOp.MAX)
        hi, lo = float(spread[0]), -float(spread[1])
        if hi - lo > 1e-9 * (1.0 + abs(hi)):
            raise RuntimeError(f"the torchrun ranks' weights have diverged (checksums {lo!r} to {hi!r}): "
                               "a training step took different gradients on different ranks")

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average the floating-point buffers (batch-norm running statistics) over the ranks."""
        if not self.enabled:
            return
        with torch.no_grad():
            for b in model.buffers():
                if b.is_floating_point():
                    on = self._on_backend(b.data.clone())
                    torch.distributed.all_reduce(on)
                    b.data.copy_(on.to(b.device) / self.world_size)


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

    Yields the context and the device this rank trains on. The group is joined on first use and
    left when the process exits.
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
    if not torch.distributed.is_initialized():
        # joined once per process and left at exit: a second training in the same process (a
        # notebook, a script training several models) reuses it, since rejoining the same
        # rendezvous after leaving fails on Gloo
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    yield ctx, device


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def item_steps(ctx: DistContext, n: int, per_step: int, model: torch.nn.Module, optimizer, seed: int,
               epoch: int) -> Iterator[tuple[int, int, np.random.Generator]]:
    """Optimiser steps of ``per_step`` items (slides) out of ``n``, shared between the ranks.

    Yields ``(j, size, rng)`` for each of this rank's items of a step: ``j`` the item's place in
    the epoch, ``size`` the number of items in the whole step (scale the item's loss by
    ``1 / size`` before ``backward``) and ``rng`` its random generator, seeded from
    ``(seed, epoch, j)``, which also seeds torch (dropout, sampling noise): an item draws the
    same numbers on any number of ranks. Gradients are zeroed before each step, summed over the
    ranks after it and the optimiser steps, so N ranks take one process's steps.
    """
    for start in range(0, n, per_step):
        size = min(per_step, n - start)
        optimizer.zero_grad(set_to_none=True)
        for j in ctx.shard(range(start, start + size)):
            rng = np.random.default_rng([seed, epoch, j])
            torch.manual_seed(int(rng.integers(2**62)))
            yield j, size, rng
        ctx.sync_grads(model)
        optimizer.step()
