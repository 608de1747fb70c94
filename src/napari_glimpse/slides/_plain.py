"""Plain images (PNG, JPEG, ...) decoded whole with Pillow; coarser levels made lazily."""

from __future__ import annotations

import numpy as np

from ..errors import SlideError
from ._pyramid import read_coarsened
from ._slide import MAX_PLAIN_PIXELS, MIN_CHUNK, Level


class PlainBackend:
    """A small single-resolution image held in memory (these formats cannot be read in tiles)."""

    def __init__(self, path: str):
        from PIL import Image, UnidentifiedImageError

        self.path = path
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PLAIN_PIXELS:
                    raise SlideError(
                        f"{im.format} image of {w} x {h} px is too large to decode whole; "
                        "convert it to a tiled pyramidal TIFF",
                        path,
                    )
                fmt = im.format or "image"
                dpi = im.info.get("dpi")
                # Pillow's bomb check would refuse large-but-allowed images with a warning
                # turned error; our own limit above is what applies.
                Image.MAX_IMAGE_PIXELS = (
                    None
                    if Image.MAX_IMAGE_PIXELS is None
                    else max(Image.MAX_IMAGE_PIXELS, MAX_PLAIN_PIXELS)
                )
                im.load()
                px = np.asarray(im.convert("RGB"))
        except SlideError:
            raise
        except UnidentifiedImageError as exc:
            raise SlideError("not an image or slide format that can be read", path) from exc
        except OSError as exc:
            raise SlideError(f"cannot decode the image ({exc})", path) from exc
        self._px = px
        self.format = "image"
        self.vendor = fmt.lower()
        self.magnification = None
        self.mpp = None
        if dpi and all(float(d) > 0 for d in dpi[:2]):
            self.mpp = (25400.0 / float(dpi[0]), 25400.0 / float(dpi[1]))
        self.properties = {"glimpse.format": self.format, "image.format": fmt}
        self.associated = {}
        import dask.array as da

        from ._pyramid import coarsened_levels

        base = da.from_array(px, chunks=(MIN_CHUNK, MIN_CHUNK, 3))
        synthetic = coarsened_levels(base, w, h)
        self.levels = [Level(w, h, 1.0)] + [lv for lv, _ in synthetic]
        self._arrays = [base] + [a for _, a in synthetic]

    def read_level(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        if level == 0:
            return self._px[y0:y1, x0:x1]
        k = round(np.log2(self.levels[level].downsample))
        return read_coarsened(lambda a, b, c, d: self._px[b:d, a:c], k, x0, y0, x1, y1)

    def dask_level(self, level: int):
        return self._arrays[level]

    def close(self) -> None:
        self._px = None
