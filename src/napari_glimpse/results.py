"""What methods return: plain dataclasses in level-0 pixel coordinates, no napari, no Qt.

``napari_glimpse.layers`` turns them into napari layer data; ``napari_glimpse.runtime.io``
(or whichever module saves results) writes them as zarr / GeoJSON / summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def is_lazy_array(data) -> bool:
    """A zarr / dask array (on disk or lazy), not an in-memory numpy array: a whole-slide label
    map that is copied and shown block by block, never read whole."""
    return not isinstance(data, np.ndarray) and hasattr(data, "shape") and hasattr(data, "dtype")


@dataclass
class SlideMap:
    """A regular map over the slide: scalar heatmap (rows, cols), stack (C, rows, cols) or labels.

    Cell (0, 0) has its top-left corner at level-0 ``origin`` (x, y); each cell is
    ``cell_size`` level-0 pixels wide (one number, or (sx, sy)).
    """

    name: str
    data: np.ndarray
    cell_size: float | tuple[float, float]
    origin: tuple[float, float] = (0.0, 0.0)
    kind: str = "image"  # "image" (continuous) or "labels"
    colormap: str = "inferno"
    contrast_limits: tuple[float, float] | None = (0.0, 1.0)
    opacity: float = 0.6
    metadata: dict[str, Any] = field(default_factory=dict)
    visible: bool = True  # False: added hidden (e.g. Q maps, shown when their glimpse is picked)

    def __post_init__(self):
        if self.kind not in ("image", "labels"):
            raise ValueError(f"SlideMap.kind must be 'image' or 'labels', not {self.kind!r}")


@dataclass
class SlidePoints:
    """Points (N, 2) in level-0 (x, y) with per-point properties (e.g. ``score``)."""

    name: str
    xy: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    size_px: float = 64.0  # marker size in level-0 pixels
    face_color: str = "yellow"
    metadata: dict[str, Any] = field(default_factory=dict)
    color_by: str | None = None  # a property in [0, 1] to colour the rings by (inferno) instead of face_color


@dataclass
class SlideBoxes:
    """Axis-aligned boxes (N, 4) in level-0 (x0, y0, x1, y1) with per-box properties."""

    name: str
    boxes: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    edge_color: str | np.ndarray = "cyan"
    edge_width_px: float = 8.0
    text: str | None = None  # a property name to print on each box
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlideLines:
    """Line segments (N, 2, 2): [[x0, y0], [x1, y1]] in level-0 pixels (e.g. parent -> child)."""

    name: str
    segments: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    edge_color: str = "white"
    edge_width_px: float = 4.0
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferenceResult:
    """Everything one method saw on one slide (or a region of it)."""

    method: str
    slide_path: str
    slide_score: float | None
    maps: list[SlideMap] = field(default_factory=list)
    points: list[SlidePoints] = field(default_factory=list)
    boxes: list[SlideBoxes] = field(default_factory=list)
    lines: list[SlideLines] = field(default_factory=list)
    # seconds, patches_read, pixels_read, region, checkpoint, device, ...
    summary: dict[str, Any] = field(default_factory=dict)
    mpp: tuple[float, float] | None = None  # the slide's level-0 um/px, for display
