"""The :class:`Slide` object: a lazy pyramid with OpenSlide's ``read_region`` semantics."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SlideError

# Plausible microns per pixel for microscopy; outside this a resolution tag is almost
# always a default (72 dpi) or garbage, and trusting it would misplace every overlay.
MPP_RANGE = (0.05, 20.0)

# A plain image bigger than this is refused: it would have to be decoded whole.
MAX_PLAIN_PIXELS = 1 << 28

# Dask chunks handed to napari are at least this many pixels on a side.
MIN_CHUNK = 512


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and its downsample (level-0 px per level px)."""

    width: int
    height: int
    downsample: float


def openslide_downsample(w0: int, h0: int, w: int, h: int) -> float:
    """Level downsample as OpenSlide defines it: the mean of the x and y size ratios."""
    return (w0 / w + h0 / h) / 2.0


def checked_mpp(path: str, mpp: tuple[float, float] | None) -> tuple[float, float] | None:
    """``mpp`` if both values are plausible, else None with a warning naming the file."""
    if mpp is None:
        return None
    x, y = (float(v) for v in mpp)
    lo, hi = MPP_RANGE
    if not all(math.isfinite(v) and lo <= v <= hi for v in (x, y)):
        warnings.warn(
            f"{path}: implausible resolution {x:g} x {y:g} um/px (expected {lo:g}-{hi:g}); "
            "treating the pixel size as unknown",
            stacklevel=3,
        )
        return None
    return (x, y)


def square_chunk(tile_h: int, tile_w: int) -> int:
    """Side of the square dask chunk: the smallest multiple of the tile size >= MIN_CHUNK.

    Where the tile is not square (strips, 256 x 128 tiles) the larger of the two multiples
    is used for both axes so that napari gets square chunks.
    """
    th = max(1, int(tile_h))
    tw = max(1, int(tile_w))
    side_h = th * math.ceil(MIN_CHUNK / th)
    side_w = tw * math.ceil(MIN_CHUNK / tw)
    return max(side_h, side_w, MIN_CHUNK)


class Slide:
    """A whole-slide image opened lazily: metadata on open, tiles only when read.

    Use :func:`open_slide` to make one. Coordinates follow OpenSlide: ``location`` is in
    level-0 pixels (x, y), ``size`` is in pixels of the requested level.
    """

    def __init__(self, path: str, backend: Any):
        self.path = path
        self._backend = backend
        self.format: str = backend.format
        self.vendor: str | None = backend.vendor
        self.levels: list[Level] = list(backend.levels)
        self.mpp: tuple[float, float] | None = checked_mpp(path, backend.mpp)
        self.magnification: float | None = backend.magnification
        self.properties: dict[str, Any] = dict(backend.properties)
        self._closed = False

    # -- basics --------------------------------------------------------------------------
    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({self.path!r}, format={self.format!r}, {w}x{h}, levels={len(self.levels)})"

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle; further reads raise SlideError."""
        if not self._closed:
            self._closed = True
            self._backend.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return (self.levels[0].width, self.levels[0].height)

    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def associated(self) -> list[str]:
        """Names of the associated images (``label``, ``macro``, ``thumbnail`` ...)."""
        return sorted(self._backend.associated)

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image as (h, w, 3) uint8."""
        self._check_open()
        if name not in self._backend.associated:
            raise SlideError(
                f"no associated image {name!r} (has: {', '.join(self.associated) or 'none'})",
                self.path,
            )
        return self._guard(self._backend.associated[name])

    # -- level choice --------------------------------------------------------------------
    def level_mpp(self, level: int) -> tuple[float, float] | None:
        """(x, y) microns per pixel of ``level``, or None when the slide has no mpp."""
        if self.mpp is None:
            return None
        ds = self.levels[level].downsample
        return (self.mpp[0] * ds, self.mpp[1] * ds)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is below ``downsample`` (OpenSlide's rule)."""
        if downsample < self.levels[0].downsample:
            return 0
        for i, lv in enumerate(self.levels):
            if downsample < lv.downsample:
                return i - 1
        return len(self.levels) - 1

    def best_level_for_mpp(self, target_mpp: float, tol: float = 0.1) -> int:
        """The coarsest level whose mpp is at most ``target_mpp * (1 + tol)``: never coarser.

        Raises SlideError when the slide has no known pixel size.
        """
        if self.mpp is None:
            raise SlideError(
                f"the slide has no known pixel size, cannot pick a level for {target_mpp} um/px",
                self.path,
            )
        base = (self.mpp[0] + self.mpp[1]) / 2
        best = 0
        for i, lv in enumerate(self.levels):
            if base * lv.downsample <= target_mpp * (1 + tol):
                best = i
        return best

    # -- pixels --------------------------------------------------------------------------
    def read_region(
        self, location: tuple[int, int] = (0, 0), level: int = 0, size: tuple[int, int] = (1, 1)
    ) -> np.ndarray:
        """Pixels of a region as (h, w, 3) uint8, exactly as OpenSlide's ``read_region``.

        Parameters
        ----------
        location
            (x, y) of the top-left corner in level-0 pixels.
        level
            Pyramid level to read.
        size
            (w, h) in pixels of that level. Area outside the image is white (255).
        """
        self._check_open()
        if not 0 <= int(level) < len(self.levels):
            raise SlideError(f"level {level} does not exist (0..{len(self.levels) - 1})", self.path)
        w, h = (int(v) for v in size)
        if w < 0 or h < 0:
            raise SlideError(f"negative region size {size}", self.path)
        lv = self.levels[level]
        # OpenSlide divides the level-0 location by the downsample and, where that is not
        # a whole pixel, paints the level at the fractional offset with bilinear filtering
        # (cairo/pixman float math). A negative coordinate is clipped first: it becomes
        # a whole-pixel margin of trunc(-c / downsample) and reading starts at 0.
        lx, wx = _level_position(int(location[0]), lv.downsample)
        ly, wy = _level_position(int(location[1]), lv.downsample)
        if wx == 0 and wy == 0:
            return self._read_clipped(level, lx, ly, w, h)
        src = self._read_clipped(level, lx, ly, w + 1, h + 1)
        return _bilinear_like_pixman(src, wx, wy)

    def read_level_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels [x, x + w) x [y, y + h) of ``level`` in that level's own pixel coordinates,
        as (h, w, 3) uint8; area outside the level is white (no resampling, unlike
        :meth:`read_region` at a fractional level-0 location)."""
        self._check_open()
        if not 0 <= int(level) < len(self.levels):
            raise SlideError(f"level {level} does not exist (0..{len(self.levels) - 1})", self.path)
        if w < 0 or h < 0:
            raise SlideError(f"negative region size {(w, h)}", self.path)
        return self._read_clipped(int(level), int(x), int(y), int(w), int(h))

    def _read_clipped(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Level pixels [lx, lx + w) x [ly, ly + h); outside the level is white."""
        lv = self.levels[level]
        if lx >= 0 and ly >= 0 and lx + w <= lv.width and ly + h <= lv.height and w and h:
            return self._guard(self._backend.read_level, level, lx, ly, lx + w, ly + h)
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, lv.width), min(ly + h, lv.height)
        if x1 > x0 and y1 > y0:
            px = self._guard(self._backend.read_level, level, x0, y0, x1, y1)
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = px
        return out

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide, at most ``max_size`` px on its long side, as (h, w, 3) uint8."""
        from PIL import Image

        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_size
        level = self.best_level_for_downsample(max(scale, 1.0))
        lv = self.levels[level]
        px = self.read_region((0, 0), level, (lv.width, lv.height))
        tw = max(1, round(w0 / max(scale, 1.0)))
        th = max(1, round(h0 / max(scale, 1.0)))
        if (tw, th) != (lv.width, lv.height):
            px = np.asarray(Image.fromarray(px).resize((tw, th), Image.Resampling.BOX))
        return px

    def dask_levels(self) -> list:
        """Every level as a lazy dask array (h, w, 3) uint8 with square chunks >= 512 px."""
        self._check_open()
        return [self._backend.dask_level(i) for i in range(len(self.levels))]

    # -- internals -----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SlideError("the slide is closed", self.path)

    def _guard(self, fn, *args):
        # Codec and file errors surface at tile-read time; the caller sees one SlideError.
        try:
            return fn(*args)
        except SlideError as exc:
            if exc.path is None:  # raised deep in a backend that does not know the path
                raise SlideError(exc.problem, self.path) from exc
            raise
        except MemoryError as exc:
            raise SlideError(f"out of memory while reading pixels ({exc})", self.path) from exc
        except Exception as exc:  # tifffile / imagecodecs / OS errors of any type
            raise SlideError(f"cannot read pixels: {type(exc).__name__}: {exc}", self.path) from exc


def _bilinear_like_pixman(src: np.ndarray, wx: int, wy: int) -> np.ndarray:
    """Bilinear blend of ``src`` (h + 1, w + 1, 3) at 16.16 fractions, as pixman computes it.

    pixman's float path (which OpenSlide's cairo uses here): unorm8 -> float32 x / 255,
    the four weighted terms summed in float32, then back with floor(v * 256) - (u >> 8).
    Reproducing its arithmetic, not just the idea, makes the bytes equal OpenSlide's.
    """
    f32 = np.float32
    px = src.astype(f32) * f32(1.0 / 255.0)
    dx, dy, one = f32(wx) / f32(65536), f32(wy) / f32(65536), f32(1)
    acc = px[:-1, :-1] * ((one - dx) * (one - dy))
    acc += px[:-1, 1:] * (dx * (one - dy))
    acc += px[1:, :-1] * ((one - dx) * dy)
    acc += px[1:, 1:] * (dx * dy)
    np.clip(acc, f32(0), f32(1), out=acc)
    u = np.floor(acc * f32(256)).astype(np.int32)
    u -= u >> 8
    return u.astype(np.uint8)


def _level_position(c: int, downsample: float) -> tuple[int, int]:
    """(whole level pixel, 16.16 fixed-point fraction) of level-0 coordinate c."""
    if c < 0:
        return -int(-c / downsample), 0
    f = c / downsample
    whole = math.floor(f)
    frac = round((f - whole) * 65536)
    if frac == 65536:
        return whole + 1, 0
    return whole, frac


def open_slide(path: str | os.PathLike, mpp: float | tuple[float, float] | None = None) -> Slide:
    """Open a whole-slide image lazily (reads metadata only).

    Supports Aperio SVS, OME-TIFF, Hamamatsu NDPI, generic tiled / pyramidal TIFF and
    BigTIFF, DICOM whole-slide images (a folder of DICOM files, or one of its files; read
    with wsidicom), and plain images (PNG, JPEG, non-pyramidal TIFF) whose coarser levels are
    computed on demand.

    Parameters
    ----------
    path
        The slide or image file.
    mpp
        Microns per level-0 pixel (one value, or x and y) replacing the file's own; for
        plain images, whose resolution tag is rarely the microscope's.

    Raises
    ------
    SlideError
        The file is missing, not a slide, truncated or uses an unsupported compression.

    Notes
    -----
    A file with one stored resolution gets coarser levels (2 x 2 means, rounded level by
    level) computed on demand. ``read_region`` on such a level decodes the level-0 tiles
    under the region (``4**k`` level-0 pixels per output pixel at level k), and a whole
    thumbnail decodes all of level 0, streamed in blocks of about 64 MB. PNG / JPEG are
    decoded whole on open and refused above 2**28 pixels; a TIFF whose strips must be
    decoded whole is refused likewise. Strip-stored TIFFs read lazily, but each 512 px
    dask chunk re-decodes the full-width strips it crosses.

    ``read_region`` at a location that is not a whole pixel of the level reproduces
    OpenSlide's bilinear resampling to within a few grey levels (usually exactly); at
    whole-pixel positions (all level-0 reads) it is exact.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SlideError("no such file", path)
    if os.path.isdir(path):
        from ._dicom import dicom_files

        if not dicom_files(path):
            raise SlideError("is a directory, not a slide file (nor a folder of DICOM files)", path)
        magic = b""
    else:
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                magic = fh.read(132)
        except OSError as exc:
            raise SlideError(f"cannot read the file ({exc.strerror or exc})", path) from exc
        if size == 0:
            raise SlideError("the file is empty (0 bytes)", path)

    if not magic or magic[128:132] == b"DICM":
        from ._dicom import DicomBackend as backend_cls
    elif magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        from ._tiff import TiffBackend as backend_cls
    else:
        from ._plain import PlainBackend as backend_cls
    try:
        backend = backend_cls(path)
    except SlideError:
        raise
    except Exception as exc:  # any parser error means "not a readable slide"
        raise SlideError(f"not a readable slide ({type(exc).__name__}: {exc})", path) from exc
    slide = Slide(path, backend)
    if mpp is not None:
        xy = (float(mpp), float(mpp)) if np.isscalar(mpp) else tuple(float(v) for v in mpp)
        slide.mpp = checked_mpp(path, xy)
    return slide
