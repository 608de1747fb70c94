"""The one way a method reads slide pixels: a level-0 box at a wanted scale, and the tensor.

Level choice (:func:`choose_level`)
    A read wants ``downsample`` level-0 pixels per output pixel. With ``zoom = downsample /
    level.downsample`` (level pixels per output pixel), the level used is the coarsest one
    with ``zoom >= 1 - LEVEL_TOLERANCE``: never more than 5 % coarser than wanted, so a
    level is only ever shrunk, never enlarged (except level 0 when the slide itself is
    coarser than wanted: it is then enlarged).

Resize
    When ``|zoom - 1| <= LEVEL_TOLERANCE`` the level is read as it is: its pixels *are* the
    output pixels, each ``level.downsample`` level-0 px (at most 5 % off ``downsample``).
    Models are trained with more scale jitter than that between scanners, and reading the
    4x-finer level instead costs 16x the pixels (a 40x slide at 0.25 um/px read at
    0.972 um/px: its 4x level is 2.9 % off). Otherwise the level is read and resized with
    PIL's bilinear filter (antialiased when shrinking) to the wanted scale.

Edges
    Only the output pixels wholly inside the slide are read; the rest are white, as glass
    is. An edge pixel is therefore never a blend of tissue and white.

On a pyramid whose levels are exact multiples of the working scale (the mosaics, slides
whose mpp is the model's) the rule reads exactly the level a method needs, unresized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["LEVEL_TOLERANCE", "LevelChoice", "choose_level", "read_region_at", "to_tensor"]

# Relative scale difference within which a level is read as is (see the module docstring).
LEVEL_TOLERANCE = 0.05


@dataclass(frozen=True)
class LevelChoice:
    """The pyramid level a read at ``downsample`` uses.

    Attributes
    ----------
    level : int
        Pyramid level index.
    level_downsample : float
        That level's level-0 px per px.
    zoom : float
        Level pixels per output pixel; exactly 1.0 when the level is read as it is.
    downsample : float
        Level-0 px per output pixel as delivered: the level's own when read as it is, else
        the wanted one.
    """

    level: int
    level_downsample: float
    zoom: float
    downsample: float


def choose_level(slide, downsample: float) -> LevelChoice:
    """The level and resize factor for output pixels of ``downsample`` level-0 px.

    Parameters
    ----------
    slide
        An open :class:`~napari_glimpse.slides.Slide` (anything with ``levels[i].downsample``).
    downsample
        Wanted level-0 pixels per output pixel (> 0).
    """
    best, best_ds = 0, float(slide.levels[0].downsample)
    for i, lv in enumerate(slide.levels):
        lds = float(lv.downsample)
        if downsample / lds >= 1.0 - LEVEL_TOLERANCE and lds > best_ds:
            best, best_ds = i, lds
    zoom = downsample / best_ds
    if abs(zoom - 1.0) <= LEVEL_TOLERANCE:
        return LevelChoice(best, best_ds, 1.0, best_ds)
    return LevelChoice(best, best_ds, zoom, float(downsample))


def read_region_at(slide, x0: float, y0: float, width: int, height: int,
                   downsample: float) -> tuple[np.ndarray, int]:
    """``width`` x ``height`` output pixels of ``downsample`` level-0 px each, corner at (x0, y0).

    Parameters
    ----------
    slide
        An open :class:`~napari_glimpse.slides.Slide`.
    x0, y0
        Level-0 top-left corner of the box (may be negative or past the slide).
    width, height
        Output size in pixels.
    downsample
        Level-0 pixels per output pixel; the level and resize follow :func:`choose_level`.

    Returns
    -------
    image : np.ndarray
        ``(height, width, 3)`` uint8 RGB, white where the box leaves the slide.
    pixels_read : int
        Level pixels read from the slide (0 when the box misses it).
    """
    choice = choose_level(slide, downsample)
    lds, ds = choice.level_downsample, choice.downsample
    w0, h0 = slide.dimensions
    # The output pixels wholly inside the slide.
    ox0, oy0 = max(0, math.ceil(-x0 / ds)), max(0, math.ceil(-y0 / ds))
    ox1, oy1 = min(width, math.floor((w0 - x0) / ds)), min(height, math.floor((h0 - y0) / ds))
    out = np.full((height, width, 3), 255, np.uint8)
    if ox1 <= ox0 or oy1 <= oy0:
        return out, 0
    ow, oh = ox1 - ox0, oy1 - oy0
    lw, lh = max(1, round(ow * ds / lds)), max(1, round(oh * ds / lds))
    loc = (int(round(x0 + ox0 * ds)), int(round(y0 + oy0 * ds)))
    img = np.asarray(slide.read_region(loc, choice.level, (lw, lh)))[..., :3]
    if (lw, lh) != (ow, oh):
        from PIL import Image

        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((ow, oh), Image.BILINEAR))
    out[oy0:oy1, ox0:ox1] = img
    return out, lw * lh


def to_tensor(images: np.ndarray, device=None):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1] on ``device`` (default: stays on the CPU).

    The uint8 pixels travel to the device (a quarter of the bytes of float32) and are
    converted there. The result is a permuted view, so its memory is channels-last, which
    convolutions on the GPU run faster on. The networks normalise their inputs themselves.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images))
    if device is not None:
        x = x.to(device)
    return x.permute(0, 3, 1, 2).float().div_(255)
