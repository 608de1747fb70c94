"""The compressing path: patch features on a grid over a slide's tissue, cached per slide.

:class:`FeatureGrid` is what every feature-based method reads (grid attention today; MagNets
and RAZN through the same encoders). ``grid.grid_features`` computes one;
``cache.cached_grid_features`` reads it from, or stores it in, a zarr cache keyed by the slide
file's identity, the encoder's checksum and the grid parameters, so a stale cache is never
reused. ``napari-glimpse features`` fills such a cache from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FeatureGrid"]


@dataclass
class FeatureGrid:
    """Patch features of one slide on a regular grid, in level-0 pixel coordinates.

    Attributes
    ----------
    features : (M, N, K) float16
        Row-major grid (M rows top to bottom, N columns left to right); zero on background.
    tissue : (M, N) bool
        Cells that were encoded (enough tissue); the others are background, zero features.
    scores : (M, N) float32 or None
        The encoder's patch logits (NaN on background) when it has a score head.
    origin : (x, y)
        Level-0 position of cell (0, 0)'s top-left corner.
    cell_size : float
        Level-0 pixels per cell edge (patch_px * mpp / slide mpp).
    meta : dict
        ``slide``, ``slide_id``, ``encoder``, ``encoder_checksum``, ``patch_px``, ``mpp``,
        ``tissue``, ``tissue_min``, ``seconds``, ``patches_read``, ``pixels_read``.
    """

    features: np.ndarray
    tissue: np.ndarray
    scores: np.ndarray | None
    origin: tuple[float, float]
    cell_size: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.tissue.shape

    def cell_centres(self, cells: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) centres of (row, col) cells, (n, 2)."""
        cells = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
        x = self.origin[0] + (cells[:, 1] + 0.5) * self.cell_size
        y = self.origin[1] + (cells[:, 0] + 0.5) * self.cell_size
        return np.stack([x, y], 1)
