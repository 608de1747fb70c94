"""An in-memory stand-in with the ``Slide`` interface, for inference tests (no file IO)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FakeLevel:
    width: int
    height: int
    downsample: float


class FakeSlide:
    """Level 0 is ``image``; coarser levels are block means. read_region has OpenSlide semantics."""

    def __init__(self, image: np.ndarray, mpp=(0.5, 0.5), downsamples=(1, 4), path="fake.tif"):
        self.path = path
        self.format = "tiff"
        self._images = []
        self.levels = []
        for d in downsamples:
            h, w = image.shape[0] // d, image.shape[1] // d
            img = image[: h * d, : w * d].reshape(h, d, w, d, 3).mean((1, 3)).astype(np.uint8)
            self._images.append(img)
            self.levels.append(FakeLevel(w, h, float(d)))
        self.mpp = None if mpp is None else tuple(mpp)
        self.reads = []  # (level, w, h) of every read, to check that nothing reads a whole level

    @property
    def dimensions(self):
        return self.levels[0].width, self.levels[0].height

    def best_level_for_mpp(self, target_mpp, tol=0.05):
        best = 0
        for i, lev in enumerate(self.levels):
            if self.mpp[0] * lev.downsample <= target_mpp * (1 + tol):
                best = i
        return best

    def read_region(self, location, level, size):
        d = self.levels[level].downsample
        img = self._images[level]
        w, h = size
        x, y = int(location[0] // d), int(location[1] // d)
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, img.shape[1]), min(y + h, img.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = img[y0:y1, x0:x1]
        self.reads.append((level, w, h))
        return out

    def best_level_for_downsample(self, downsample):
        best = 0
        for i, lev in enumerate(self.levels):
            if lev.downsample <= downsample:
                best = i
        return best

    def read_level_box(self, level, x, y, w, h):
        d = self.levels[level].downsample
        return self.read_region((int(x * d), int(y * d)), level, (w, h))

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class FakeTissue:
    mask: np.ndarray
    cell_size: float

    def fraction(self, x0, y0, x1, y1):
        s = self.cell_size
        sub = self.mask[int(y0 // s) : int(np.ceil(y1 / s)), int(x0 // s) : int(np.ceil(x1 / s))]
        return float(sub.mean()) if sub.size else 0.0
