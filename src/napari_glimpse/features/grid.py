"""Patch features on a grid of non-overlapping cells over a slide's tissue, streamed row by row.

Geometry
    A cell is ``patch_px`` pixels at ``mpp`` um/px, i.e. ``patch_px * mpp / slide_mpp``
    level-0 px. The read follows :func:`~napari_glimpse.runtime.regions.choose_level`: where
    a pyramid level is within 5 % of ``mpp`` it is read as it is and a cell is ``patch_px``
    of *its* pixels (``FeatureGrid.cell_size`` says how many level-0 px that is). The grid
    starts at the top-left of the tissue's bounding box (or of ``region``), snapped to a
    whole pixel of the level read, and has M x N cells covering the box.

Background
    A low-resolution tissue mask gives each cell's tissue fraction; cells below
    ``tissue_min`` are background: never read, zero features, NaN scores.

Memory
    Tissue cells are read one row at a time in runs of adjacent cells (at most
    ``_RUN_CELLS`` per read), so memory is one run's pixels, one batch and the (M, N, K)
    float16 output; nothing reads a whole level 0.

A slide without a pixel size has no physical cell size: it is refused unless ``mpp`` is
given, in which case level 0 is taken to be at ``mpp`` (cells are ``patch_px`` level-0 px).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator

import numpy as np

from ..errors import SlideError
from ..runtime.events import Progress, run_to_end
from ..runtime.regions import choose_level, read_region_at, to_tensor
from . import FeatureGrid

__all__ = ["iter_grid_features", "grid_features", "grid_geometry"]

# Adjacent tissue cells read in one piece (bounds one read's memory on wide slides).
_RUN_CELLS = 32


def grid_geometry(slide, patch_px: int, mpp: float, tissue_mask=None,
                  region=None) -> tuple[tuple[float, float], float, tuple[int, int], int]:
    """Where the grid lies: ``(origin, cell_size, (M, N), level)``.

    ``origin`` is the level-0 (x, y) of cell (0, 0)'s corner, ``cell_size`` level-0 px per
    cell, ``level`` the pyramid level read. The grid covers ``region`` (level-0 x0, y0, x1,
    y1), else the bounding box of ``tissue_mask`` (a :class:`~napari_glimpse.slides.tissue.TissueMask`),
    else the whole slide; (0, 0) cells when the mask has no tissue.
    """
    ds, level = _downsample(slide, patch_px, mpp)
    cell = patch_px * ds
    w0, h0 = slide.dimensions
    if region is not None:
        x0, y0, x1, y1 = (float(v) for v in region)
        if x1 <= max(x0, 0) or y1 <= max(y0, 0) or x0 >= w0 or y0 >= h0:
            raise SlideError(f"region {tuple(region)} does not overlap the slide ({w0} x {h0})", slide.path)
    elif tissue_mask is not None:
        rows, cols = np.nonzero(tissue_mask.mask)
        if rows.size == 0:
            return (0.0, 0.0), cell, (0, 0), level
        s = tissue_mask.cell_size
        x0, y0 = cols.min() * s, rows.min() * s
        x1, y1 = min((cols.max() + 1) * s, w0), min((rows.max() + 1) * s, h0)
    else:
        x0, y0, x1, y1 = 0.0, 0.0, float(w0), float(h0)
    # Snap to the level's pixels so every read starts on a whole level pixel.
    lds = float(slide.levels[level].downsample)
    ox, oy = math.floor(x0 / lds) * lds, math.floor(y0 / lds) * lds
    shape = (max(1, math.ceil((y1 - oy) / cell - 1e-9)), max(1, math.ceil((x1 - ox) / cell - 1e-9)))
    return (float(ox), float(oy)), float(cell), shape, level


def _downsample(slide, patch_px: int, mpp: float) -> tuple[float, int]:
    """Level-0 px per grid pixel (the level rule's) and the level read."""
    if slide.mpp is None:
        # Explicit mpp on a slide without one: level 0 is taken to be at it.
        return 1.0, 0
    choice = choose_level(slide, float(mpp) / float(np.mean(slide.mpp)))
    return choice.downsample, choice.level


def _tissue_fractions(tissue_mask, origin, cell, shape) -> np.ndarray:
    m, n = shape
    frac = np.ones(shape, np.float32)
    if tissue_mask is None:
        return frac
    ox, oy = origin
    for r in range(m):
        for c in range(n):
            x, y = ox + c * cell, oy + r * cell
            frac[r, c] = tissue_mask.fraction(x, y, x + cell, y + cell)
    return frac


def _runs(cols: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of adjacent column indices, each at most ``_RUN_CELLS`` long."""
    runs, start = [], None
    for i, c in enumerate(cols):
        if start is None:
            start, prev = c, c
        elif c != prev + 1 or c - start >= _RUN_CELLS:
            runs.append((start, prev + 1))
            start = c
        prev = c
        if i == len(cols) - 1:
            runs.append((start, prev + 1))
    return runs


def iter_grid_features(slide, encoder, *, patch_px: int | None = None, mpp: float | None = None,
                       tissue: str | None = "otsu", tissue_min: float = 0.25, batch_size: int = 128,
                       device="cpu", region=None) -> Generator[Progress, None, FeatureGrid]:
    """Encode every tissue cell of a grid over ``slide``; yields Progress, returns a FeatureGrid.

    Parameters
    ----------
    slide
        An open :class:`~napari_glimpse.slides.Slide` or a path (opened and closed here).
    encoder
        An :class:`~napari_glimpse.encoders.Encoder`; moved to ``device``.
    patch_px, mpp
        Cell edge in pixels and its um/px; default the encoder's. ``mpp`` is required for a
        slide without a pixel size (level 0 is then taken to be at it).
    tissue
        Tissue mask method (``"otsu"``, ``"grey"``; see :mod:`~napari_glimpse.slides.tissue`),
        or None: every cell is tissue.
    tissue_min
        Least tissue fraction of an encoded cell; below it a cell is background.
    batch_size
        Cells per encoder pass.
    device
        Torch device name (``"auto"`` picks CUDA when present).
    region
        Level-0 box (x0, y0, x1, y1) the grid covers instead of the tissue's bounding box.

    Raises
    ------
    SlideError
        The slide cannot be read, has no pixel size and ``mpp`` is None, or ``region`` misses it.
    """
    from ..slides import Slide, open_slide

    if not isinstance(slide, Slide):
        with open_slide(slide) as opened:
            return (yield from iter_grid_features(
                opened, encoder, patch_px=patch_px, mpp=mpp, tissue=tissue, tissue_min=tissue_min,
                batch_size=batch_size, device=device, region=region))
    import torch

    from ..runtime.device import autocast, resolve_device
    from ..slides.tissue import tissue_mask as compute_mask
    from .cache import slide_identity

    if slide.mpp is None and mpp is None:
        raise SlideError("the slide has no pixel size (mpp); give the grid's mpp to take level 0 "
                         "as being at it", slide.path)
    patch_px = int(patch_px or encoder.patch_px)
    mpp = float(mpp or encoder.mpp)
    if patch_px < 1 or mpp <= 0 or batch_size < 1:
        raise ValueError("patch_px, mpp and batch_size must be positive")
    started = time.perf_counter()
    yield Progress("tissue", 0, 1, "tissue mask")
    mask = compute_mask(slide, tissue) if tissue is not None else None
    origin, cell, (m, n), level = grid_geometry(slide, patch_px, mpp, mask, region)
    on = _tissue_fractions(mask, origin, cell, (m, n)) >= tissue_min if m else np.zeros((0, 0), bool)
    dev = resolve_device(device)
    encoder = encoder.to(dev).eval()
    k = encoder.feature_dim
    features = np.zeros((m, n, k), np.float16)
    scores = np.full((m, n), np.nan, np.float32) if encoder.has_scores else None
    total, done, pixels = int(on.sum()), 0, 0
    ds = cell / patch_px
    batch: list[np.ndarray] = []
    where: list[tuple[int, int]] = []

    def flush(count: int) -> None:
        x = to_tensor(np.stack(batch[:count]), dev)
        with torch.inference_mode(), autocast(dev):
            f, s = encoder.features_and_scores(x)
        rr, cc = np.array(where[:count]).T
        features[rr, cc] = f.float().cpu().numpy().astype(np.float16)
        if scores is not None:
            scores[rr, cc] = s.float().cpu().numpy()
        del batch[:count], where[:count]

    yield Progress("features", 0, total, f"grid {m} x {n}, {total} tissue cells")
    for r in range(m):
        for c0, c1 in _runs(np.flatnonzero(on[r])):
            img, px = read_region_at(slide, origin[0] + c0 * cell, origin[1] + r * cell,
                                     (c1 - c0) * patch_px, patch_px, ds)
            pixels += px
            for c in range(c0, c1):
                batch.append(img[:, (c - c0) * patch_px:(c - c0 + 1) * patch_px])
                where.append((r, c))
            while len(batch) >= batch_size:
                flush(batch_size)
                done += batch_size
                yield Progress("features", done, total, f"row {r + 1}/{m}")
    if batch:
        done += len(batch)
        flush(len(batch))
        yield Progress("features", done, total, f"row {m}/{m}")
    seconds = time.perf_counter() - started
    meta = {"slide": os.fspath(slide.path), "slide_id": slide_identity(slide.path), "encoder": encoder.name,
            "encoder_checksum": encoder.checksum, "patch_px": patch_px, "mpp": mpp, "tissue": tissue,
            "tissue_min": float(tissue_min), "region": None if region is None else [float(v) for v in region],
            "level": int(level), "seconds": seconds, "patches_read": total, "pixels_read": int(pixels)}
    return FeatureGrid(features, on, scores, origin, cell, meta)


def grid_features(slide, encoder, **kwargs) -> FeatureGrid:
    """:func:`iter_grid_features` run to its end (same arguments)."""
    return run_to_end(iter_grid_features(slide, encoder, **kwargs))
