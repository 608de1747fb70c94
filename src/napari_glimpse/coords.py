"""Level-0 pixel coordinates -> napari world coordinates (um). The one place that does it.

Conventions (METHODS.md): results live in level-0 pixel coordinates of the slide, x to the
right, y down, origin at the *corner* of the top-left pixel. napari puts the *centre* of
data index i at ``i * scale + translate``; the slide's level-0 image is shown with
``scale = mpp`` and ``translate = 0``, so level-0 pixel i (which covers [i, i + 1)) has its
centre at world ``i * mpp``. Hence a level-0 corner coordinate x sits at world
``(x - 0.5) * mpp`` and a map whose cells are ``s`` level-0 px wide, starting at corner
``(x0, y0)``, gets ``scale = s * mpp`` and ``translate = (x0 + (s - 1) / 2) * mpp``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Mpp = tuple[float, float]  # (x, y) microns per level-0 pixel


def effective_mpp(mpp: Sequence[float] | None) -> Mpp:
    """The (x, y) um/px used for display; 1.0 (pixels as units) when the slide has none."""
    if mpp is None:
        return (1.0, 1.0)
    return (float(mpp[0]), float(mpp[1]))


def grid_transform(
    cell_size: float | Sequence[float],
    origin: Sequence[float] = (0.0, 0.0),
    mpp: Sequence[float] | None = None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """napari ``(scale, translate)`` in (row, col) order for a regular map on the slide.

    Parameters
    ----------
    cell_size
        Level-0 pixels per map cell, one number or (sx, sy).
    origin
        Level-0 (x, y) of the top-left corner of cell (0, 0).
    mpp
        Slide (x, y) microns per pixel, or None to show in level-0 pixels.
    """
    sx, sy = (cell_size, cell_size) if np.isscalar(cell_size) else cell_size
    mx, my = effective_mpp(mpp)
    x0, y0 = origin
    scale = (float(sy) * my, float(sx) * mx)
    translate = ((y0 + (sy - 1) / 2) * my, (x0 + (sx - 1) / 2) * mx)
    return scale, translate


def level_transform(downsample: float | Sequence[float], mpp: Sequence[float] | None = None):
    """``(scale, translate)`` for a whole pyramid level (a map starting at the slide's corner)."""
    return grid_transform(downsample, (0.0, 0.0), mpp)


def points_to_world(xy: np.ndarray, mpp: Sequence[float] | None = None) -> np.ndarray:
    """Level-0 corner coordinates (N, 2) as (x, y) -> napari world (N, 2) as (row, col) in um."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    mx, my = effective_mpp(mpp)
    return np.stack([(xy[:, 1] - 0.5) * my, (xy[:, 0] - 0.5) * mx], axis=1)


def world_to_points(rc: np.ndarray, mpp: Sequence[float] | None = None) -> np.ndarray:
    """Inverse of :func:`points_to_world`: napari (row, col) um -> level-0 (x, y)."""
    rc = np.asarray(rc, dtype=float).reshape(-1, 2)
    mx, my = effective_mpp(mpp)
    return np.stack([rc[:, 1] / mx + 0.5, rc[:, 0] / my + 0.5], axis=1)


def boxes_to_world(boxes: np.ndarray, mpp: Sequence[float] | None = None) -> list[np.ndarray]:
    """Level-0 boxes (N, 4) as (x0, y0, x1, y1) -> napari rectangle vertices, 4 x (row, col) each.

    The rectangle's edges lie on the pixel edges: the box covers pixels x0 .. x1 - 1.
    """
    out = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=float).reshape(-1, 4):
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        out.append(points_to_world(corners, mpp))
    return out
