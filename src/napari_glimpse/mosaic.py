"""Synthetic whole slides with known tumour ground truth, tiled from real PCam patches.

A slide is a grid of 96 px cells (one PCam patch each, 0.972 um/px by default): blobby
tissue shapes on white glass, tissue cells filled with normal patches and, on positive
slides, contiguous tumour regions (grown by random breadth-first growth inside the tissue,
from single isolated cells to large regions) filled with tumour patches. Patches are
randomly flipped and rotated. Slides stream tile by tile through the pyramid writer, so a
100k x 100k px slide is written in bounded memory.

Per slide ``<name>``: ``<name>.tif`` (JPEG pyramid), ``<name>.mask.tif`` (lossless uint8
mask, 255 on tumour cells), ``<name>.geojson`` (tumour polygons, QuPath style) and
``<name>.cells.json`` (grid facts and the tumour cells); one ``labels.csv`` per folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .annotations import mask_to_polygons, write_geojson
from .annotations._types import atomic_write_text
from .errors import DatasetError
from .slides.writer import write_mask, write_pyramid

__all__ = [
    "MosaicSlide",
    "bundled_patches_dir",
    "load_patch_bank",
    "make_mosaics",
    "CELL_SIZE",
    "PCAM_MPP",
]

CELL_SIZE = 96
PCAM_MPP = 0.972
_TILE = 512
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def bundled_patches_dir() -> Path:
    """The small bank of real PCam patches shipped with the package (``0/`` and ``1/``)."""
    return Path(__file__).resolve().parent / "_sample_data" / "patches"


@dataclass
class MosaicSlide:
    """What :func:`make_mosaics` wrote for one slide."""

    name: str
    path: Path
    mask_path: Path
    geojson_path: Path
    cells_path: Path
    label: int
    dimensions: tuple[int, int]
    grid: tuple[int, int]
    tumour_cells: np.ndarray  # (n, 2) row, col of the lattice
    lattice_offset: tuple[int, int] = (0, 0)  # cell (r, c) starts at (c * 96 - x, r * 96 - y)
    tissue_cells: int = 0

    @property
    def tumour_fraction(self) -> float:
        """Tumour cells / tissue cells: the slide-level number of the regression task."""
        return len(self.tumour_cells) / self.tissue_cells if self.tissue_cells else 0.0


def load_patch_bank(
    patches_dir: str | os.PathLike, max_per_class: int = 1000, seed: int = 0
) -> dict[int, np.ndarray]:
    """Decode the patches of ``patches_dir/0`` and ``patches_dir/1`` into (n, 96, 96, 3) arrays.

    Classes with more than ``max_per_class`` files are subsampled (deterministically for
    ``seed``), which bounds memory for big folders such as the 10,000-per-class PCam split.
    """
    root = Path(patches_dir)
    bank = {}
    for cls in (0, 1):
        folder = root / str(cls)
        if not folder.is_dir():
            raise DatasetError(
                f"no class folder '{cls}/' (expected {cls}/ with "
                f"{'normal' if cls == 0 else 'tumour'} patches)",
                root,
            )
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise DatasetError("no patch images in the class folder", folder)
        if len(files) > max_per_class:
            pick = np.random.default_rng([seed, cls]).choice(
                len(files), max_per_class, replace=False
            )
            files = [files[i] for i in np.sort(pick)]
        arrays = []
        for f in files:
            try:
                with Image.open(f) as im:
                    a = np.asarray(im.convert("RGB"))
            except OSError as exc:
                raise DatasetError(f"cannot decode patch ({exc})", f) from None
            if a.shape[:2] != (CELL_SIZE, CELL_SIZE):
                a = np.asarray(Image.fromarray(a).resize((CELL_SIZE, CELL_SIZE), Image.BILINEAR))
            arrays.append(a)
        bank[cls] = np.stack(arrays)
    return bank


# ----------------------------------------------------------------------------- layout


def _tissue(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Blobby tissue pieces on the cell grid, one cell of glass kept around the border."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    field = np.zeros((rows, cols), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.3, 0.7) * rows, rng.uniform(0.3, 0.7) * cols
        ry, rx = rng.uniform(0.18, 0.4) * rows, rng.uniform(0.18, 0.4) * cols
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / rx
        v = (-dx * np.sin(t) + dy * np.cos(t)) / ry
        field = np.maximum(field, 1 - np.sqrt(u * u + v * v))
    # low-frequency noise makes the outlines lobed rather than elliptic
    coarse = rng.normal(size=(max(2, rows // 6 + 2), max(2, cols // 6 + 2))).astype(np.float32)
    noise = ndimage.zoom(coarse, (rows / coarse.shape[0], cols / coarse.shape[1]), order=1)
    field += 0.25 * noise[:rows, :cols]
    tissue = field > 0.25
    tissue[[0, -1], :] = False
    tissue[:, [0, -1]] = False
    if tissue.sum() < 1 and rows > 2 and cols > 2:
        tissue[rows // 2, cols // 2] = True
    return tissue


def _grow(
    rng: np.random.Generator, allowed: np.ndarray, size: int, taken: np.ndarray
) -> list[tuple[int, int]]:
    """A contiguous region of up to ``size`` cells grown by random frontier expansion."""
    free = np.argwhere(allowed & ~taken)
    if len(free) == 0:
        return []
    start = tuple(int(v) for v in free[rng.integers(len(free))])
    region = [start]
    taken[start] = True
    frontier = [start]
    rows, cols = allowed.shape
    while len(region) < size and frontier:
        k = int(rng.integers(len(frontier)))
        r, c = frontier[k]
        nbrs = [
            (r + dr, c + dc)
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
            if 0 <= r + dr < rows
            and 0 <= c + dc < cols
            and allowed[r + dr, c + dc]
            and not taken[r + dr, c + dc]
        ]
        if not nbrs:
            frontier[k] = frontier[-1]
            frontier.pop()
            continue
        cell = nbrs[int(rng.integers(len(nbrs)))]
        taken[cell] = True
        region.append(cell)
        frontier.append(cell)
    return region


def _tumour(rng, tissue: np.ndarray, tumour_fraction: float) -> np.ndarray:
    """Tumour regions of varied size: from isolated cells up to ``tumour_fraction`` of tissue."""
    taken = np.zeros_like(tissue)
    n_tissue = int(tissue.sum())
    budget = max(1, int(round(tumour_fraction * n_tissue)))
    for _ in range(int(rng.integers(1, 5))):
        # log-uniform sizes: single cells (isolated tumour cells) as likely as big regions
        size = int(round(math.exp(rng.uniform(0, math.log(budget + 1)))))
        _grow(rng, tissue, max(1, size), taken)
    return taken


# ----------------------------------------------------------------------------- rendering


def _cells_for(y0, y1, x0, x1, oy=0, ox=0):
    """The lattice cells that pixels [y0, y1) x [x0, x1) touch; cell (r, c) covers pixels from
    (c * CELL_SIZE - ox, r * CELL_SIZE - oy)."""
    return range((y0 + oy) // CELL_SIZE, (y1 - 1 + oy) // CELL_SIZE + 1), range(
        (x0 + ox) // CELL_SIZE, (x1 - 1 + ox) // CELL_SIZE + 1
    )


def _image_tiles(width, height, tissue, tumour, pick, turn, bank, glass, offset=(0, 0)) -> Iterator[np.ndarray]:
    ox, oy = offset
    rows_t, cols_t = math.ceil(height / _TILE), math.ceil(width / _TILE)
    n = glass.shape[0] - _TILE
    for tr in range(rows_t):
        for tc in range(cols_t):
            y0, x0 = tr * _TILE, tc * _TILE
            y1, x1 = min(y0 + _TILE, height), min(x0 + _TILE, width)
            # per-tile offset into the noise texture hides its period
            gy, gx = (tr * 7919 + tc * 104729) % n, (tr * 15485863 + tc * 611953) % n
            tile = glass[gy : gy + y1 - y0, gx : gx + x1 - x0].copy()
            cr, cc = _cells_for(y0, y1, x0, x1, oy, ox)
            for r in cr:
                if r >= tissue.shape[0]:
                    continue
                for c in cc:
                    if c >= tissue.shape[1] or not tissue[r, c]:
                        continue
                    cls = int(tumour[r, c])
                    patch = bank[cls][pick[r, c] % len(bank[cls])]
                    t = int(turn[r, c])
                    patch = np.rot90(patch[:, ::-1] if t & 4 else patch, t & 3)
                    py0, px0 = r * CELL_SIZE - oy, c * CELL_SIZE - ox
                    sy0, sx0 = max(py0, y0), max(px0, x0)
                    sy1, sx1 = min(py0 + CELL_SIZE, y1), min(px0 + CELL_SIZE, x1)
                    tile[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = patch[
                        sy0 - py0 : sy1 - py0, sx0 - px0 : sx1 - px0
                    ]
            yield tile


def _mask_tiles(width, height, tumour, offset=(0, 0), tissue=None) -> Iterator[np.ndarray]:
    """255 on tumour cells; with ``tissue``, class indices: 0 glass, 1 normal tissue, 2 tumour."""
    ox, oy = offset
    values = (tumour.astype(np.uint8) * 255 if tissue is None
              else tissue.astype(np.uint8) + (tumour & tissue).astype(np.uint8))
    rows_t, cols_t = math.ceil(height / _TILE), math.ceil(width / _TILE)
    zero = np.zeros((_TILE, _TILE), np.uint8)
    for tr in range(rows_t):
        for tc in range(cols_t):
            y0, x0 = tr * _TILE, tc * _TILE
            y1, x1 = min(y0 + _TILE, height), min(x0 + _TILE, width)
            cr, cc = _cells_for(y0, y1, x0, x1, oy, ox)
            block = values[cr.start : cr.stop, cc.start : cc.stop]
            if not block.any():
                yield zero[: y1 - y0, : x1 - x0]
                continue
            full = np.repeat(np.repeat(block, CELL_SIZE, 0), CELL_SIZE, 1)
            by, bx = y0 + oy - cr.start * CELL_SIZE, x0 + ox - cc.start * CELL_SIZE
            yield np.ascontiguousarray(full[by : by + y1 - y0, bx : bx + x1 - x0], dtype=np.uint8)


# ----------------------------------------------------------------------------- slides


def make_mosaics(
    patches_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    count: int = 1,
    grid: tuple[int, int] | None = None,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    positive_fraction: float = 0.5,
    tumour_fraction: float = 0.15,
    mpp: float = PCAM_MPP,
    name: str | None = None,
    quality: int = 90,
    max_patches_per_class: int = 1000,
    n_slides: int | None = None,
    lattice_offset: bool = False,
    mask_classes: bool = False,
) -> list[MosaicSlide]:
    """Write ``count`` mosaic slides with their tumour masks, polygons and labels.

    Parameters
    ----------
    patches_dir : str or PathLike
        Folder with ``0/`` (normal) and ``1/`` (tumour) 96 x 96 patches, e.g.
        :func:`bundled_patches_dir` or a PCam image folder.
    out_dir : str or PathLike
        Output folder (created).
    count : int
        Number of slides (``n_slides`` is an alias).
    grid : (rows, cols) or None
        Cells per slide; the slide is ``cols * 96`` x ``rows * 96`` px.
    size : (width, height) or None
        Alternatively the slide size in pixels (edge cells are cut).
    seed : int
        Everything (layout, patches, flips) follows from it: same seed, same files.
    positive_fraction : float
        Fraction of slides with tumour (rounded up, so one slide at 0.5 is positive).
    tumour_fraction : float
        Largest share of a positive slide's tissue cells that a tumour region may take.
    mpp : float
        Microns per pixel written to the slides (PCam patches are 10x, 0.972 um/px).
    name : str or None
        File stem; with several slides ``<name>_000``... Default ``mosaic_000``...
    quality : int
        JPEG quality of the slide tiles.
    max_patches_per_class : int
        At most this many patches per class are decoded (memory bound for big folders).
    lattice_offset : bool
        Start each slide's cell lattice at a random sub-cell offset (0-95 px in x and y, drawn
        per slide), as real slides never line up with a model's grid; the offset is in
        ``cells.json`` (``lattice_offset``: [x, y]), the mask and polygons follow it. Without
        it the slides are exactly those of earlier versions for the same seed.
    mask_classes : bool
        Write masks of class indices (0 glass, 1 normal tissue, 2 tumour) and a
        ``classes.txt`` naming them: a segmentation data set (RAZN). Default: 255 on tumour.

    Returns
    -------
    list of MosaicSlide
    """
    if n_slides is not None:
        count = n_slides
    if (grid is None) == (size is None):
        raise ValueError("give exactly one of grid=(rows, cols) or size=(width, height)")
    if grid is not None:
        rows, cols = (int(v) for v in grid)
        width, height = cols * CELL_SIZE, rows * CELL_SIZE
    else:
        width, height = (int(v) for v in size)
        rows, cols = math.ceil(height / CELL_SIZE), math.ceil(width / CELL_SIZE)
    if rows < 3 or cols < 3 or count < 1:
        raise ValueError(
            f"need count >= 1 and at least 3 x 3 cells, got {count} slides of {rows} x {cols} cells"
        )
    if not 0 <= positive_fraction <= 1 or not 0 < tumour_fraction <= 1:
        raise ValueError("positive_fraction must be in [0, 1] and tumour_fraction in (0, 1]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bank = load_patch_bank(patches_dir, max_patches_per_class, seed)
    n_pos = math.ceil(count * positive_fraction - 1e-9)
    positive = np.zeros(count, bool)
    positive[np.random.default_rng([seed, 1 << 20]).permutation(count)[:n_pos]] = True

    made = []
    for i in range(count):
        stem = (name if count == 1 else f"{name}_{i:03d}") if name else f"mosaic_{i:03d}"
        # its own generator, so slides without an offset stay those of earlier versions
        offset = tuple(int(v) for v in np.random.default_rng([seed, i, 7]).integers(0, CELL_SIZE, 2)) \
            if lattice_offset else (0, 0)
        made.append(
            _make_one(
                out,
                stem,
                bank,
                width,
                height,
                offset,
                int(positive[i]),
                np.random.default_rng([seed, i]),
                seed,
                tumour_fraction,
                mpp,
                quality,
                mask_classes,
            )
        )
    if mask_classes:
        atomic_write_text(out / "classes.txt", "glass\nnormal tissue\ntumour\n")
    _write_labels(out / "labels.csv", [(m.name, m.label) for m in made])
    _write_labels(out / "tumour_fraction.csv", [(m.name, f"{m.tumour_fraction:.6f}") for m in made])
    return made


def _write_labels(path: Path, rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide", "label"])
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _make_one(
    out, stem, bank, width, height, offset, label, rng, seed, tumour_fraction, mpp, quality, mask_classes=False
) -> MosaicSlide:
    ox, oy = offset
    rows, cols = math.ceil((height + oy) / CELL_SIZE), math.ceil((width + ox) / CELL_SIZE)
    tissue = _tissue(rng, rows, cols)
    tumour = _tumour(rng, tissue, tumour_fraction) if label else np.zeros_like(tissue)
    # cells cut by the slide edge are never tumour, so the mask and polygons stay exact (the
    # first row and column are glass already, so an offset cuts only glass at the top left)
    if (width + ox) % CELL_SIZE:
        tumour[:, -1] = False
        tissue[:, -1] = False
    if (height + oy) % CELL_SIZE:
        tumour[-1, :] = False
        tissue[-1, :] = False
    label = int(tumour.any())
    pick = rng.integers(0, 2**31 - 1, size=(rows, cols), dtype=np.int64)
    turn = rng.integers(0, 8, size=(rows, cols), dtype=np.uint8)
    grey = int(rng.integers(236, 245))
    glass = np.clip(grey + rng.normal(0, 2.0, size=(1024, 1024, 3)), 0, 255).astype(np.uint8)
    glass[..., 2] = np.clip(glass[..., 2].astype(int) + 2, 0, 255)  # a faint blue cast

    path = out / f"{stem}.tif"
    mask_path = out / f"{stem}.mask.tif"
    write_pyramid(
        path,
        width,
        height,
        _image_tiles(width, height, tissue, tumour, pick, turn, bank, glass, offset),
        mpp,
        quality=quality,
        description=f"napari-glimpse PCam mosaic {stem}",
    )
    write_mask(mask_path, width, height, _mask_tiles(width, height, tumour, offset, tissue if mask_classes else None), mpp)
    polygons = mask_to_polygons(tumour, CELL_SIZE)
    for a in polygons:
        a.polygon = a.polygon - (ox, oy)
        a.holes = [h - (ox, oy) for h in a.holes]
    geojson_path = out / f"{stem}.geojson"
    write_geojson(geojson_path, polygons)
    cells = np.argwhere(tumour)
    facts = {
        "slide": stem,
        "label": label,
        "seed": seed,
        "dimensions": [width, height],
        "grid": [rows, cols],
        "cell_size": CELL_SIZE,
        "lattice_offset": [ox, oy],
        "mpp": mpp,
        "tissue_cells": int(tissue.sum()),
        "tumour_cells": cells.tolist(),
    }
    cells_path = out / f"{stem}.cells.json"
    atomic_write_text(cells_path, json.dumps(facts, separators=(",", ":")) + "\n")
    return MosaicSlide(
        stem, path, mask_path, geojson_path, cells_path, label, (width, height), (rows, cols), cells,
        offset, int(tissue.sum()),
    )
