"""Tissue masks on a low-resolution level: Otsu on saturation, or MagNets' grey filter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SlideError

# MagNets' grey filter: a pixel is background when max(R,G,B) - min(R,G,B) < 15.
GREY_SPREAD = 15


@dataclass
class TissueMask:
    """A boolean tissue mask whose pixels are ``cell_size`` level-0 px wide, from (0, 0)."""

    mask: np.ndarray
    cell_size: float

    def fraction(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Fraction of mask cells inside the level-0 box (x0, y0, x1, y1) that are tissue.

        Cells are counted when their centre lies in the box; a box smaller than one cell
        takes the cell under its centre. Outside the slide counts as background.
        """
        rows, cols = self.mask.shape
        s = self.cell_size
        c0, c1 = int(np.ceil(x0 / s - 0.5)), int(np.ceil(x1 / s - 0.5))
        r0, r1 = int(np.ceil(y0 / s - 0.5)), int(np.ceil(y1 / s - 0.5))
        if c1 <= c0 or r1 <= r0:
            c0, r0 = int(((x0 + x1) / 2) // s), int(((y0 + y1) / 2) // s)
            c1, r1 = c0 + 1, r0 + 1
        total = (c1 - c0) * (r1 - r0)
        if total <= 0:
            return 0.0
        sub = self.mask[max(r0, 0) : max(min(r1, rows), 0), max(c0, 0) : max(min(c1, cols), 0)]
        return float(sub.sum()) / total


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (uint8-range): maximises the between-class variance.

    The histogram has ``bins`` fixed bins over 0..256 (not the data's range), so a threshold
    means the same saturation on every slide; the returned value is the upper edge of the
    best "low" class, i.e. ``values >= threshold`` is the high class. With fewer than two
    populated bins there is nothing to split: the threshold is above every value (0.0 for no
    values).
    """
    from skimage.filters import threshold_otsu

    values = np.asarray(values).ravel()
    if values.size == 0:
        return 0.0
    hist, edges = np.histogram(values, bins=bins, range=(0, 256))
    if np.count_nonzero(hist) < 2:
        return float(edges[np.flatnonzero(hist)[-1] + 1])
    centres = (edges[:-1] + edges[1:]) / 2
    # skimage returns the centre of the last bin of the low class; the high class starts at
    # that bin's upper edge.
    return float(threshold_otsu(hist=(hist, centres)) + (edges[1] - edges[0]) / 2)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0..255 (0 where the pixel is black)."""
    rgb = rgb.astype(np.float32)
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1) * 255.0, 0.0)


def tissue_mask(slide, method: str = "otsu", max_size: int = 2048) -> TissueMask:
    """Tissue mask of ``slide`` computed on a low-resolution level.

    Parameters
    ----------
    slide
        An open :class:`~napari_glimpse.slides.Slide`.
    method
        ``"otsu"`` (Otsu threshold on HSV saturation) or ``"grey"`` (MagNets' grey filter:
        background where max(R,G,B) - min(R,G,B) < 15).
    max_size
        The mask is at most this many pixels on its long side.

    Returns
    -------
    TissueMask
        ``mask`` (rows x cols bool) and ``cell_size`` (level-0 px per mask pixel).
    """
    if method not in ("otsu", "grey"):
        raise ValueError(f"unknown tissue method {method!r} (use 'otsu' or 'grey')")
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    rgb = slide.thumbnail(max_size)
    w0, h0 = slide.dimensions
    cell = max(w0 / rgb.shape[1], h0 / rgb.shape[0])
    if method == "grey":
        spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
        mask = spread >= GREY_SPREAD
    else:
        sat = saturation(rgb)
        thr = otsu_threshold(sat)
        # A blank slide has a flat saturation histogram; Otsu would split noise.
        mask = sat >= thr if sat.max() - sat.min() >= GREY_SPREAD else np.zeros(sat.shape, bool)
    if mask.ndim != 2:
        raise SlideError("thumbnail is not an RGB image", slide.path)
    return TissueMask(mask=mask, cell_size=float(cell))
