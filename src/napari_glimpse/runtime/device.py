"""Device choice, mixed precision, and out-of-memory fallback shared by training and inference."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

__all__ = ["resolve_device", "autocast", "is_oom", "run_in_chunks"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; any other name is checked and used.

    Raises
    ------
    ValueError
        When the named device does not exist here.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} requested but MPS is not available")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """float16 autocast on CUDA; a no-op elsewhere (CPU bfloat16 was not faster for CELNet)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU out-of-memory errors (worth retrying with a smaller batch)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_in_chunks(fn: Callable[[int, int], object], n: int, chunk: int, min_chunk: int = 1) -> tuple[list, int]:
    """Call ``fn(start, stop)`` over ``range(n)`` in chunks, halving the chunk on out-of-memory.

    A chunk that runs out of memory is retried with half the size (down to ``min_chunk``); the
    smaller size is kept for the rest. Training uses it for gradient accumulation over
    micro-batches, inference for batches of tiles.

    Returns
    -------
    results : list
        ``fn``'s return values in order.
    chunk : int
        The chunk size that finally worked (callers keep it for the next call).
    """
    results, start = [], 0
    chunk = max(int(chunk), 1)
    while start < n:
        stop = min(start + chunk, n)
        try:
            results.append(fn(start, stop))
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not is_oom(exc) or chunk <= min_chunk:
                raise
            chunk = max(chunk // 2, min_chunk)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
    return results, chunk
