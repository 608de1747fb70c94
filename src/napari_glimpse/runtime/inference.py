"""Method-agnostic slide inference: working resolution, tiles over tissue, batches, progress.

A method that looks at a slide through square windows of ``patch`` working-resolution
pixels (the model's input) placed every ``stride`` pixels uses :class:`WindowGrid`: window
``(i, j)`` is centred on map cell ``(i, j)``, and the cells tile the region exactly, so a
cell's value is the prediction of the window centred on it. Windows are read in large
tiles (``tile_cells`` x ``tile_cells`` windows at a time, with the overlap they need) and
tiles without tissue are skipped; nothing ever reads a whole level 0.

Every long loop here is a generator that yields :class:`~napari_glimpse.runtime.events.Progress`
between batches and *returns* its result, so a GUI can wrap it in ``thread_worker`` and
cancel it by no longer iterating.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import SlideError
from .events import Progress
from .regions import choose_level, read_region_at

Region = tuple[int, int, int, int]  # level-0 (x0, y0, x1, y1), x1/y1 exclusive


# ------------------------------------------------------------------ working resolution


@dataclass(frozen=True)
class WorkingGrid:
    """How a level-0 region is read at a method's working resolution (um/px).

    ``zoom`` is level pixels per working pixel: 1 when the chosen level is (within a
    tolerance) at the working resolution, > 1 when it is finer and must be downscaled.
    """

    level: int
    level_downsample: float
    zoom: float
    region: Region
    mpp: float  # the working um/px (assumed when the slide has none)
    mpp_assumed: bool = False

    @property
    def downsample(self) -> float:
        """Level-0 pixels per working pixel."""
        return self.level_downsample * self.zoom

    @property
    def size(self) -> tuple[int, int]:
        """Region size (w, h) in working pixels."""
        x0, y0, x1, y1 = self.region
        return (
            max(1, round((x1 - x0) / self.downsample)),
            max(1, round((y1 - y0) / self.downsample)),
        )

    def to_level0(self, wx: float, wy: float) -> tuple[float, float]:
        """Working-pixel corner coordinate inside the region -> level-0 corner coordinate."""
        return (self.region[0] + wx * self.downsample, self.region[1] + wy * self.downsample)


def working_grid(slide, target_mpp: float, region: Sequence[float] | None = None) -> WorkingGrid:
    """The pyramid level and resize factor for ``target_mpp``, by :func:`.regions.choose_level`.

    A level within 5 % of the working resolution is read as it is, and the grid's
    ``downsample`` is then that level's: map cells and boxes are placed where its pixels lie.

    Parameters
    ----------
    slide
        An open :class:`~napari_glimpse.slides.Slide`.
    target_mpp
        The model's working resolution in um/px.
    region
        Level-0 box (x0, y0, x1, y1); default the whole slide. Clipped to the slide.
    """
    w0, h0 = slide.dimensions
    if region is None:
        region = (0, 0, w0, h0)
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(w0, x1), min(h0, y1)
    if x1 <= x0 or y1 <= y0:
        raise SlideError(f"region {tuple(region)} does not overlap the slide ({w0} x {h0})", slide.path)

    mpp = slide.mpp
    assumed = mpp is None
    if assumed:
        # No physical size: trust that level 0 is at the model's working resolution.
        warnings.warn(
            f"{slide.path}: slide has no mpp; assuming level 0 is {target_mpp} um/px",
            stacklevel=2,
        )
        level, level_ds, zoom = 0, 1.0, 1.0
    else:
        base = float(np.mean(mpp))
        choice = choose_level(slide, target_mpp / base)
        level, level_ds, zoom = choice.level, choice.level_downsample, choice.zoom
        if zoom < 1.0:
            # Even level 0 is coarser than the model wants: upsample rather than refuse.
            warnings.warn(
                f"{slide.path}: level 0 ({base:.3f} um/px) is coarser than the model's "
                f"{target_mpp} um/px; upsampling by {1 / zoom:.2f}",
                stacklevel=2,
            )
    return WorkingGrid(level, level_ds, zoom, (x0, y0, x1, y1), float(target_mpp), assumed)


def read_working(slide, grid: WorkingGrid, wx: int, wy: int, w: int, h: int) -> tuple[np.ndarray, int]:
    """Read a box of the region at working resolution (:func:`.regions.read_region_at`).

    ``(wx, wy)`` is the top-left in working pixels relative to the region's corner (may be
    negative or run past the slide: that part is white).

    Returns
    -------
    image, pixels_read
        ``(h, w, 3)`` uint8 and the number of level pixels read from the slide.
    """
    x, y = grid.to_level0(wx, wy)
    return read_region_at(slide, x, y, w, h, grid.downsample)


# ----------------------------------------------------------------------- window grid


@dataclass(frozen=True)
class WindowGrid:
    """Square windows of ``patch`` working px every ``stride`` px, each centred on a map cell.

    Window ``(i, j)`` (row i, column j) has its top-left at working ``(j * stride - offset,
    i * stride - offset)`` with ``offset = (patch - stride) // 2``. Map cell ``(i, j)``
    covers ``[j * stride + e, (j + 1) * stride + e)`` with ``e = (patch - stride) / 2 -
    offset`` (0 for even ``patch - stride``), i.e. it is centred on window ``(i, j)``'s
    centre. The map has a cell for every window whose centre lies inside the region (at
    least one), so it ends within half a cell of the region's right and bottom edges (edge
    windows read white past the slide).
    """

    grid: WorkingGrid
    patch: int
    stride: int

    @property
    def offset(self) -> int:
        return (self.patch - self.stride) // 2

    @property
    def shape(self) -> tuple[int, int]:
        """Map (rows, cols)."""
        w, h = self.grid.size
        e = (self.patch - self.stride) / 2 - self.offset
        # Cell j's centre is e + (j + 1/2) * stride; keep those strictly inside the region.
        return tuple(max(1, math.ceil((n - e) / self.stride - 0.5)) for n in (h, w))

    @property
    def cell_size(self) -> float:
        """Level-0 pixels per map cell."""
        return self.stride * self.grid.downsample

    @property
    def origin(self) -> tuple[float, float]:
        """Level-0 (x, y) of the corner of cell (0, 0)."""
        e = (self.patch - self.stride) / 2 - self.offset
        return self.grid.to_level0(e, e)

    def cell_centres(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) of the centres of cells (N,) x (N,) -> (N, 2)."""
        ox, oy = self.origin
        s = self.cell_size
        return np.stack([ox + (np.asarray(cols) + 0.5) * s, oy + (np.asarray(rows) + 0.5) * s], 1)


@dataclass(frozen=True)
class Tile:
    """A block of map cells ``[row0, row0 + rows) x [col0, col0 + cols)`` read in one piece."""

    row0: int
    col0: int
    rows: int
    cols: int


def tissue_on_cells(windows: WindowGrid, tissue) -> np.ndarray:
    """Bool (rows, cols): whether the tissue mask is on at each map cell's centre.

    ``tissue`` is a TissueMask (``.mask``, ``.cell_size``) or None (everything is tissue).
    """
    rows, cols = windows.shape
    if tissue is None:
        return np.ones((rows, cols), bool)
    mask = np.asarray(tissue.mask, bool)
    ox, oy = windows.origin
    s = windows.cell_size
    # A window sees (patch / stride) cells around its own: dilate so border tissue counts.
    reach = windows.patch / 2 * windows.grid.downsample
    xs = ox + (np.arange(cols) + 0.5) * s
    ys = oy + (np.arange(rows) + 0.5) * s
    out = np.zeros((rows, cols), bool)
    for dy in (-reach / 2, 0.0, reach / 2):
        for dx in (-reach / 2, 0.0, reach / 2):
            mc = np.clip(((xs + dx) / tissue.cell_size).astype(int), 0, mask.shape[1] - 1)
            mr = np.clip(((ys + dy) / tissue.cell_size).astype(int), 0, mask.shape[0] - 1)
            out |= mask[np.ix_(mr, mc)]
    return out


def plan_tiles(cells_on: np.ndarray, tile_cells: int) -> list[Tile]:
    """Tiles of ``tile_cells`` x ``tile_cells`` cells covering the map, keeping those with tissue."""
    rows, cols = cells_on.shape
    tiles = []
    for r in range(0, rows, tile_cells):
        for c in range(0, cols, tile_cells):
            if cells_on[r : r + tile_cells, c : c + tile_cells].any():
                tiles.append(Tile(r, c, min(tile_cells, rows - r), min(tile_cells, cols - c)))
    return tiles


def read_tile(slide, windows: WindowGrid, tile: Tile, tile_cells: int, context: int = 0):
    """Pixels under all windows of a tile, plus ``context`` px each side, as a fixed-size array.

    The read always spans ``tile_cells`` cells so that every tile of a slide has one shape
    and can be stacked into a batch; edge tiles read past the region (white past the slide).

    Returns
    -------
    image, pixels_read
        ``((tile_cells - 1) * stride + patch + 2 * context)`` square, uint8 RGB.
    """
    size = (tile_cells - 1) * windows.stride + windows.patch + 2 * context
    wx = tile.col0 * windows.stride - windows.offset - context
    wy = tile.row0 * windows.stride - windows.offset - context
    return read_working(slide, windows.grid, wx, wy, size, size)


# ------------------------------------------------------------------------- batching


@dataclass
class RunStats:
    """Counters every slide inference reports in its summary."""

    started: float = field(default_factory=time.perf_counter)
    patches_read: int = 0
    pixels_read: int = 0
    batches: int = 0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def progress(stage: str, done: int, total: int, message: str = "", **metrics):
    """A :class:`~napari_glimpse.runtime.events.Progress` event."""
    return Progress(stage=stage, done=done, total=total, message=message, metrics=dict(metrics))
