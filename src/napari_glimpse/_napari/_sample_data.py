"""Sample data: the real CMU-1-Small-Region slide, and a PatchCamelyon mosaic with its truth.

The mosaic is built on first use from the bundled patch bank (deterministic seed) into the
user cache folder, ``$XDG_CACHE_HOME/napari-glimpse`` (``~/.cache/napari-glimpse``), or
``$NAPARI_GLIMPSE_CACHE`` when set; later calls reuse it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MOSAIC_GRID = (16, 16)  # cells (rows, cols) of 96 px: a 1536 x 1536 px slide
MOSAIC_SEED = 7
MOSAIC_TUMOUR_FRACTION = 0.15
_DATA = Path(__file__).resolve().parent.parent / "_sample_data"


def cmu1_path() -> Path:
    """The bundled CMU-1-Small-Region.svs (Aperio, 0.499 um/px; CC0, OpenSlide test data)."""
    return _DATA / "cmu-1-small-region.svs"


def cache_dir() -> Path:
    """Where generated sample data lives (created on demand)."""
    root = os.environ.get("NAPARI_GLIMPSE_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        root = os.path.join(xdg, "napari-glimpse")
    return Path(root)


def mosaic_dir() -> Path:
    rows, cols = MOSAIC_GRID
    return cache_dir() / f"sample-mosaic-{rows}x{cols}-seed{MOSAIC_SEED}"


def mosaic_slide_path() -> Path:
    return mosaic_dir() / "mosaic.tif"


def mosaic_mask_path() -> Path:
    return mosaic_dir() / "mosaic.mask.tif"


def ensure_mosaic() -> tuple[Path, Path]:
    """Build the sample mosaic (slide + ground-truth mask) unless it is already cached."""
    slide, mask = mosaic_slide_path(), mosaic_mask_path()
    if slide.is_file() and mask.is_file():
        return slide, mask
    from ..mosaic import bundled_patches_dir, make_mosaics

    mosaic_dir().mkdir(parents=True, exist_ok=True)
    rows, cols = MOSAIC_GRID
    made = make_mosaics(
        bundled_patches_dir(),
        mosaic_dir(),
        n_slides=1,
        grid=(rows, cols),
        tumour_fraction=MOSAIC_TUMOUR_FRACTION,
        seed=MOSAIC_SEED,
        name="mosaic",
    )
    del made
    return slide, mask


def mosaic_layer_data() -> tuple[list[tuple], dict[str, Any]]:
    """(slide layer, ground-truth labels layer) of the sample mosaic, and facts about it."""
    from ..layers import slide_to_layer_data
    from ..slides import open_slide
    from ._reader import load_mask_layer

    slide_path, mask_path = ensure_mosaic()
    slide = open_slide(slide_path)  # stays open: napari reads its tiles lazily
    mask = load_mask_layer(str(mask_path), name="ground truth (tumour)")
    info = {
        "slide": str(slide_path),
        "format": slide.format,
        "dimensions": list(slide.dimensions),
        "mpp": slide.mpp,
        "tumour_cells": int(mask[0].sum()),
    }
    return [slide_to_layer_data(slide, name="tumour mosaic"), mask], info


def cached_mosaic_results() -> list:
    """Inference results saved for the sample mosaic (``<cache>/<mosaic>/results/*``)."""
    from ..runtime.results_io import load_result

    root = mosaic_dir() / "results"
    if not root.is_dir():
        return []
    return [load_result(d) for d in sorted(root.iterdir()) if (d / "summary.json").is_file()]


# ----------------------------------------------------------------------------- npe2 commands


def cmu1_small_region() -> list[tuple]:
    """Sample data command: the CMU-1-Small-Region slide."""
    from ._reader import read_slide

    return read_slide(str(cmu1_path()))


def tumour_mosaic() -> list[tuple]:
    """Sample data command: the PCam mosaic slide and its ground-truth tumour mask."""
    return mosaic_layer_data()[0]
