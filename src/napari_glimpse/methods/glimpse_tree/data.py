"""The glimpse tree's data: binary slide labels, and the tumour mask its supervised leaves need.

Folders are read by :func:`napari_glimpse.runtime.data.find_slides`; the glimpse tree is a
tumour / normal classifier, so its labels must be 0 / 1, and non-zero annotation is tumour.
"""

from __future__ import annotations

import os

import numpy as np

from ...runtime.data import SLIDE_SUFFIXES, SlideItem
from ...runtime.data import find_slides as _find_slides

__all__ = ["SlideItem", "find_slides", "tumour_mask", "mask_fraction", "SLIDE_SUFFIXES"]


def find_slides(folder: str | os.PathLike, need: str = "any") -> list[SlideItem]:
    """:func:`napari_glimpse.runtime.data.find_slides` with labels that must be 0 or 1."""
    return _find_slides(folder, need, binary=True)


def tumour_mask(item: SlideItem, slide_dims: tuple[int, int], downsample: float = 8.0):
    """(mask bool (rows, cols), level-0 px per mask px) of the slide's annotated tumour."""
    from ...annotations import polygons_to_mask, read_annotations, read_label_mask, tumour_pixels

    if item.annotation is None:
        shape = (int(np.ceil(slide_dims[1] / downsample)), int(np.ceil(slide_dims[0] / downsample)))
        return np.zeros(shape, bool), float(downsample)
    low = item.annotation.lower()
    if low.endswith((".tif", ".tiff", ".png")):
        lm = read_label_mask(item.annotation, slide_dims, max_pixels=max(2**20, int(np.prod(slide_dims) / 64)))
        return tumour_pixels(lm), float(lm.downsample)  # a class mask (classes.txt): its tumour class only
    anns = read_annotations(item.annotation, slide_dims=slide_dims)
    return polygons_to_mask(anns, slide_dims, downsample), float(downsample)


def mask_fraction(mask: np.ndarray, mask_ds: float, box) -> float:
    """Fraction of a level-0 box covered by the mask (outside the mask counts as 0)."""
    x0, y0, x1, y1 = (v / mask_ds for v in box)
    c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    c1, r1 = min(mask.shape[1], int(np.ceil(x1))), min(mask.shape[0], int(np.ceil(y1)))
    if c1 <= c0 or r1 <= r0:
        return 0.0
    return float(mask[r0:r1, c0:c1].sum()) / max((x1 - x0) * (y1 - y0), 1e-9)
