"""Shared fixtures. Keep them tiny and generic; each documents what it builds.

- ``pcam_patches``: the bundled PatchCamelyon patches (normal / tumour file lists).
- ``tiny_mosaic``: an 8 x 8-cell mosaic slide (96 px cells, 768 x 768 px, 0.5 um/px, levels
  at downsample 1, 4, 16, lossless) with ONE tumour patch at a known cell, and its truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

PATCHES = Path(__file__).resolve().parents[1] / "src" / "napari_glimpse" / "_sample_data" / "patches"


@pytest.fixture(scope="session", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory):
    """Feature grids the tests compute go to a temporary cache, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_GLIMPSE_CACHE", str(tmp_path_factory.mktemp("feature-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def pcam_patches() -> dict[int, list[Path]]:
    """{0: normal patch files, 1: tumour patch files}, sorted (bundled, CC0)."""
    return {c: sorted((PATCHES / str(c)).glob("*.jpg")) for c in (0, 1)}


@dataclass
class TinyMosaic:
    path: Path            # pyramidal tiled TIFF
    grid: tuple[int, int]  # (rows, cols) of cells
    cell: int             # level-0 px per cell
    mpp: tuple[float, float]
    tumour_cell: tuple[int, int]  # (row, col) of the single tumour patch
    truth: np.ndarray     # (rows, cols) uint8, 1 at the tumour cell
    image: np.ndarray     # level-0 pixels (small enough to keep)


@pytest.fixture(scope="session")
def tiny_mosaic(tmp_path_factory, pcam_patches) -> TinyMosaic:
    """8 x 8 cells of real PCam patches, one tumour at (2, 5); written with write_pyramid."""
    from PIL import Image

    from napari_glimpse.slides.writer import write_pyramid

    rows, cols, cell, tile = 8, 8, 96, 128
    tumour = (2, 5)
    image = np.zeros((rows * cell, cols * cell, 3), np.uint8)
    normals = iter(pcam_patches[0])
    for r in range(rows):
        for c in range(cols):
            f = pcam_patches[1][0] if (r, c) == tumour else next(normals)
            image[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = np.asarray(
                Image.open(f).convert("RGB"))
    truth = np.zeros((rows, cols), np.uint8)
    truth[tumour] = 1
    path = tmp_path_factory.mktemp("mosaic") / "tiny_mosaic.tif"
    h, w = image.shape[:2]
    tiles = (image[y:y + tile, x:x + tile] for y in range(0, h, tile) for x in range(0, w, tile))
    write_pyramid(path, w, h, tiles, (0.5, 0.5), tile_size=tile, compression="zlib")
    return TinyMosaic(path, (rows, cols), cell, (0.5, 0.5), tumour, truth, image)
