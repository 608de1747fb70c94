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


# Level-0 pixels decoded at once when reading a computed level (about 64 MB of RGB).
_BLOCK_PIXELS = 1 << 24


def read_coarsened(read0, k: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Pixels [x0, x1) x [y0, y1) of computed level ``k`` (downsample 2**k) from level 0.

    ``read0(x0, y0, x1, y1)`` returns level-0 pixels. The result equals the dask levels of
    :func:`coarsened_levels` (2 x 2 means rounded level by level), but only the level-0
    pixels under the region are decoded, in blocks of bounded size.
    """
    f = 1 << k
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    side = max(1, int(np.sqrt(_BLOCK_PIXELS)) // f)  # output block side in level-k px
    for by in range(y0, y1, side):
        for bx in range(x0, x1, side):
            ey, ex = min(by + side, y1), min(bx + side, x1)
            px = read0(bx * f, by * f, ex * f, ey * f)
            for _ in range(k):
                h, w = px.shape[0] // 2, px.shape[1] // 2
                px = _mean_uint8(px.reshape(h, 2, w, 2, 3), axis=(1, 3))
            out[by - y0 : ey - y0, bx - x0 : ex - x0] = px
    return out
