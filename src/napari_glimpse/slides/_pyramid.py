"""Coarser levels computed on demand for images that store only one resolution."""

from __future__ import annotations

import numpy as np

from ._slide import MIN_CHUNK, Level

# Stop adding levels once the coarsest fits in this many pixels on its long side.
COARSEST_SIDE = 1024


def _mean_uint8(block: np.ndarray, axis=None) -> np.ndarray:
    return np.round(np.mean(block, axis=axis)).astype(np.uint8)


def coarsened_levels(base, width: int, height: int) -> list[tuple[Level, object]]:
    """Levels 1.. made by 2 x 2 box means of the one stored level, lazily with dask.

    Each level is computed from the previous one, so reading a region of level k decodes
    the level-0 tiles under it (4**k of them per output tile): cheap for a small region,
    a full read of level 0 for a whole-slide thumbnail. Partial pixel rows/columns at the
    right/bottom edge are dropped (the level is ``floor(w / 2**k)`` wide).
    """
    import dask.array as da

    out: list[tuple[Level, object]] = []
    prev = base
    w, h = width, height
    factor = 1
    while max(w, h) > COARSEST_SIDE and min(w, h) >= 4:
        factor *= 2
        w, h = width // factor, height // factor
        arr = da.coarsen(_mean_uint8, prev, {0: 2, 1: 2}, trim_excess=True)
        arr = arr.rechunk((MIN_CHUNK, MIN_CHUNK, 3))
        out.append((Level(w, h, float(factor)), arr))
        prev = arr
    return out
