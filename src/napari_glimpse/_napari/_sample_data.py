"""Sample data: the real CMU-1-Small-Region slide, and a PatchCamelyon mosaic with its truth.

The mosaic is built on first use from the bundled patch bank (deterministic seed) into the
user cache folder, ``$XDG_CACHE_HOME/napari-glimpse`` (``~/.cache/napari-glimpse``), or
``$NAPARI_GLIMPSE_CACHE`` when set; later calls reuse it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# 52 x 52 cells of 96 px (4,992 px, 4.85 mm at 0.972 um/px): one glimpse-tree region (4,864
# px) fits, so its hierarchy shows; seed 299 gives tumours of 1, 8 and 69 cells (an isolated
# tumour cell, a small and a large one) in about 900 tissue cells. Every shipped model runs on
# it in about a minute on two CPU cores (CELNet 45 s of it); `view` caches the results.
MOSAIC_GRID = (52, 52)
MOSAIC_SEED = 299
MOSAIC_TUMOUR_FRACTION = 0.1
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
    tf = round(MOSAIC_TUMOUR_FRACTION * 100)
    return cache_dir() / f"sample-mosaic-{rows}x{cols}-seed{MOSAIC_SEED}-t{tf}"


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
    import numpy as np

    from ..layers import slide_to_layer_data
    from ..slides import open_slide
    from ._reader import load_mask_layer

    slide_path, mask_path = ensure_mosaic()
    slide = open_slide(slide_path)  # stays open: napari reads its tiles lazily
    mask = load_mask_layer(str(mask_path), name="ground truth (tumour)")
    from napari.utils.colormaps import DirectLabelColormap

    mask[1]["colormap"] = DirectLabelColormap(color_dict={None: "transparent", 255: "lime"})
    info = {
        "slide": str(slide_path),
        "format": slide.format,
        "dimensions": list(slide.dimensions),
        "mpp": slide.mpp,
        # the mosaic's own record of its tumour cells (the mask holds 255 per tumour pixel)
        "tumour_cells": len(json.loads(slide_path.with_suffix(".cells.json").read_text())["tumour_cells"]),
        "tumour_pixels": int(np.count_nonzero(np.asarray(mask[0]))),
    }
    return [slide_to_layer_data(slide, name="tumour mosaic"), mask], info


def mosaic_results_dir() -> Path:
    """Where ``view`` caches the shipped models' results on the sample mosaic."""
    return mosaic_dir() / "results"


def mosaic_truth() -> tuple[Any, int | None]:
    """The sample mosaic's tumour mask (a LabelMask) and its slide label (labels.csv)."""
    import csv

    from ..annotations import read_label_mask
    from ..slides import open_slide

    slide_path, mask_path = ensure_mosaic()
    with open_slide(slide_path) as slide:
        mask = read_label_mask(mask_path, slide.dimensions, max_pixels=2**24)
    label = None
    labels = mosaic_dir() / "labels.csv"
    if labels.is_file():
        with open(labels, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("slide") == slide_path.stem:
                    label = int(row["label"])
    return mask, label


# ----------------------------------------------------------------------------- npe2 commands


def cmu1_small_region() -> list[tuple]:
    """Sample data command: the CMU-1-Small-Region slide."""
    from ._reader import read_slide

    return read_slide(str(cmu1_path()))


def tumour_mosaic() -> list[tuple]:
    """Sample data command: the PCam mosaic slide and its ground-truth tumour mask."""
    return mosaic_layer_data()[0]
