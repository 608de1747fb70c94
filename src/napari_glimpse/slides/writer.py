"""Streaming writer of pyramidal tiled TIFF slides (and lossless label masks).

The writer never holds a whole level: level 0 streams from an iterator of tiles straight
into the file, and every tile passing through is box-downsampled into a one-tile-high band
of the next level. A complete band is encoded tile by tile into a spool file beside the
output and cascades into the band of the level after it. Once level 0 is written, the
coarser levels are appended from the spool as pre-encoded tiles, so their pixels are never
decoded again. Memory is therefore a few band buffers (``tile_size`` rows of each coarser
level), whatever the slide size.

The pyramid is stored as successive pages (IFDs) of one TIFF, each tiled, with
ResolutionUnit CENTIMETER, which OpenSlide reads as a "generic tiled TIFF" (it ignores
SubIFDs there) and tifffile reads as one series whose ``levels`` are the pyramid (the
coarser pages are marked reduced-resolution).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

__all__ = ["write_pyramid", "write_mask", "pyramid_shapes"]

_COMPRESSIONS = {
    None: None,
    "none": None,
    "jpeg": "jpeg",
    "zlib": "zlib",
    "deflate": "zlib",
    "lzw": "lzw",
}
# Classic TIFF offsets are 32 bit; go BigTIFF well before the uncompressed size could need it.
_BIGTIFF_BYTES = 2**31


def pyramid_shapes(
    width: int, height: int, tile_size: int = 512, downsample: int = 4
) -> list[tuple[int, int]]:
    """Return the (width, height) of every pyramid level the writer produces, finest first.

    Levels are added, each ``downsample`` times smaller (rounded up), until a level fits
    in one tile.
    """
    shapes = [(int(width), int(height))]
    while shapes[-1][0] > tile_size or shapes[-1][1] > tile_size:
        w, h = shapes[-1]
        shapes.append((max(1, math.ceil(w / downsample)), max(1, math.ceil(h / downsample))))
    return shapes


@dataclass
class _Codec:
    compression: str | None
    quality: int
    channels: int

    def tifffile_kwargs(self) -> dict:
        kw: dict = {"photometric": "rgb" if self.channels == 3 else "minisblack"}
        if self.compression == "jpeg":
            kw.update(compression="jpeg", compressionargs={"level": self.quality})
            if self.channels == 3:
                kw["subsampling"] = (2, 2)
        elif self.compression == "zlib":
            kw.update(compression="zlib", compressionargs={"level": 6})
        elif self.compression == "lzw":
            kw.update(compression="lzw")
        return kw

    def encode(self, tile: np.ndarray) -> bytes:
        # Must match what tifffile itself writes for the same arguments (see
        # tifffile_kwargs): the coarser levels are handed to it pre-encoded.
        if self.compression == "jpeg":
            if self.channels == 3:
                return imagecodecs.jpeg8_encode(
                    tile,
                    level=self.quality,
                    colorspace="RGB",
                    outcolorspace="YCBCR",
                    subsampling=(2, 2),
                )
            return imagecodecs.jpeg8_encode(tile, level=self.quality)
        if self.compression == "zlib":
            return imagecodecs.deflate_encode(tile, level=6)
        if self.compression == "lzw":
            return imagecodecs.lzw_encode(tile)
        return np.ascontiguousarray(tile).tobytes()


class _LevelBuilder:
    """Accumulates the tiles of the finer level into a band of this level, spools and
    cascades every completed band."""

    def __init__(self, shape, finer_shape, factor, tile_size, codec, spool, resample, fill):
        self.width, self.height = shape
        self.finer_width, self.finer_height = finer_shape
        self.factor = factor
        self.tile = tile_size
        self.codec = codec
        self.spool = spool
        self.resample = resample
        self.fill = fill
        self.segments: list[tuple[int, int]] = []  # (offset, length) in the spool, row-major
        self.next: _LevelBuilder | None = None
        self.band_row = 0
        self.band = self._new_band()

    def _new_band(self) -> np.ndarray:
        rows = min(self.tile, self.height - self.band_row * self.tile)
        return np.full((rows, self.width, self.codec.channels), self.fill, np.uint8)

    def _reduce(self, tile: np.ndarray) -> np.ndarray:
        f = self.factor
        if self.resample == "nearest":
            return tile[::f, ::f]
        if tile.shape[2] == 1:
            img = Image.fromarray(tile[:, :, 0])
            return np.asarray(img.reduce(f))[:, :, None]
        return np.asarray(Image.fromarray(tile).reduce(f))

    def feed(self, tile: np.ndarray, x: int, y: int, last_in_row: bool) -> None:
        """Take a finer-level tile whose top-left is (x, y) in finer-level pixels."""
        small = self._reduce(tile)
        bx = x // self.factor
        by = y // self.factor - self.band_row * self.tile
        h = min(small.shape[0], self.band.shape[0] - by)
        w = min(small.shape[1], self.width - bx)
        self.band[by : by + h, bx : bx + w] = small[:h, :w]
        if last_in_row and (
            y + tile.shape[0] >= self.finer_height or (by + h) >= self.band.shape[0]
        ):
            self._flush()

    def _flush(self) -> None:
        t = self.tile
        band = self.band
        n_cols = math.ceil(self.width / t)
        y0 = self.band_row * t
        for c in range(n_cols):
            piece = band[:, c * t : (c + 1) * t]
            # Pre-encoded tiles must be full tiles; pad like tifffile would (edge pixels are
            # outside the image, the value does not matter to readers).
            full = np.full((t, t, band.shape[2]), self.fill, np.uint8)
            full[: piece.shape[0], : piece.shape[1]] = piece
            data = self.codec.encode(full if full.shape[2] > 1 else full[:, :, 0])
            self.segments.append((self.spool.tell(), len(data)))
            self.spool.write(data)
            if self.next is not None:
                self.next.feed(piece, c * t, y0, last_in_row=(c == n_cols - 1))
        self.band_row += 1
        if self.band_row * t < self.height:
            self.band = self._new_band()


def _check_tile(tile, expected_hw, channels, index) -> np.ndarray:
    arr = np.asarray(tile)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != channels:
        raise ValueError(
            f"tile {index}: expected uint8 tiles with {channels} channel(s), "
            f"got {arr.dtype} {arr.shape}"
        )
    eh, ew = expected_hw
    if arr.shape[0] < eh or arr.shape[1] < ew:
        raise ValueError(f"tile {index}: expected at least {eh} x {ew} px, got {arr.shape[:2]}")
    return arr[:eh, :ew]


def write_pyramid(
    path: str | os.PathLike,
    width: int,
    height: int,
    tiles: Iterable[np.ndarray],
    mpp: float | tuple[float, float] | None,
    tile_size: int = 512,
    compression: str | None = "jpeg",
    quality: int = 90,
    downsample: int = 4,
    channels: int = 3,
    resample: str = "mean",
    description: str = "napari-glimpse pyramidal tiled TIFF",
    bigtiff: bool | None = None,
) -> str:
    """Write a pyramidal tiled TIFF from a stream of level-0 tiles, with bounded memory.

    Parameters
    ----------
    path : str or PathLike
        Output file; written to a temporary file in the same folder, then renamed.
    width, height : int
        Level-0 size in pixels.
    tiles : iterable of ndarray
        Level-0 tiles in row-major order, ``ceil(height / tile_size)`` rows of
        ``ceil(width / tile_size)`` tiles; each (h, w, channels) (or (h, w) for one channel)
        uint8. Edge tiles may be cropped to the image or full size (the excess is ignored).
    mpp : float or (float, float) or None
        Level-0 microns per pixel (x, y), stored as resolution tags in pixels per cm.
    tile_size : int
        Tile edge in pixels, a multiple of 16.
    compression : {"jpeg", "zlib", "lzw", None}
        "jpeg" is lossy (YCbCr 4:2:0 for RGB); the others are lossless.
    quality : int
        JPEG quality (1-100).
    downsample : {2, 4}
        Size ratio between successive levels.
    channels : {1, 3}
        1 for label masks (stored as min-is-black greyscale), 3 for RGB.
    resample : {"mean", "nearest"}
        How coarser levels are made: box mean for images, nearest for label masks.
    description : str
        ImageDescription of the first page (must not start with a vendor's signature,
        e.g. "Aperio", or readers will take the file for that vendor's format).
    bigtiff : bool or None
        Force BigTIFF on or off; by default on when level 0 uncompressed exceeds 2 GiB.

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width} x {height}")
    if tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16, got {tile_size}")
    if downsample not in (2, 4):
        raise ValueError(f"downsample must be 2 or 4, got {downsample}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if resample not in ("mean", "nearest"):
        raise ValueError(f"resample must be 'mean' or 'nearest', got {resample!r}")
    try:
        comp = _COMPRESSIONS[compression.lower() if isinstance(compression, str) else compression]
    except KeyError:
        raise ValueError(f"unknown compression {compression!r}") from None
    codec = _Codec(comp, int(quality), channels)
    fill = 255 if channels == 3 else 0
    if mpp is not None:
        mpp_x, mpp_y = (mpp, mpp) if np.isscalar(mpp) else mpp
    shapes = pyramid_shapes(width, height, tile_size, downsample)
    if bigtiff is None:
        bigtiff = width * height * channels > _BIGTIFF_BYTES

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    spool_fd, spool_path = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".spool", dir=folder
    )
    try:
        with os.fdopen(spool_fd, "w+b") as spool:
            builders = [
                _LevelBuilder(
                    shapes[i], shapes[i - 1], downsample, tile_size, codec, spool, resample, fill
                )
                for i in range(1, len(shapes))
            ]
            for a, b in zip(builders, builders[1:], strict=False):
                a.next = b
            first = builders[0] if builders else None
            n_rows, n_cols = math.ceil(height / tile_size), math.ceil(width / tile_size)

            def level0() -> Iterator[np.ndarray]:
                it = iter(tiles)
                for r in range(n_rows):
                    for c in range(n_cols):
                        try:
                            raw = next(it)
                        except StopIteration:
                            raise ValueError(
                                f"tiles ended after {r * n_cols + c} of {n_rows * n_cols} tiles"
                            ) from None
                        eh = min(tile_size, height - r * tile_size)
                        ew = min(tile_size, width - c * tile_size)
                        tile = _check_tile(raw, (eh, ew), channels, r * n_cols + c)
                        if first is not None:
                            first.feed(tile, c * tile_size, r * tile_size, c == n_cols - 1)
                        yield tile if channels > 1 else tile[:, :, 0]

            with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
                for level, (w, h) in enumerate(shapes):
                    shape = (h, w, 3) if channels == 3 else (h, w)
                    kw = codec.tifffile_kwargs()
                    if mpp is not None:
                        sx, sy = width / w, height / h
                        kw.update(
                            resolution=(1e4 / (mpp_x * sx), 1e4 / (mpp_y * sy)),
                            resolutionunit="CENTIMETER",
                        )
                    if level == 0:
                        data = level0()
                        kw["description"] = description
                    else:
                        data = _read_segments(spool, builders[level - 1].segments)
                        kw["subfiletype"] = 1  # reduced-resolution image
                    tw.write(
                        data,
                        shape=shape,
                        dtype=np.uint8,
                        tile=(tile_size, tile_size),
                        metadata=None,
                        **kw,
                    )
        _umask = os.umask(0)
        os.umask(_umask)
        os.chmod(tmp, 0o666 & ~_umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        for p in (tmp, spool_path):
            if os.path.exists(p):
                os.remove(p)
    return path


def _read_segments(spool, segments) -> Iterator[bytes]:
    for offset, length in segments:
        spool.seek(offset)
        yield spool.read(length)
    spool.seek(0, os.SEEK_END)


def write_mask(
    path: str | os.PathLike,
    width: int,
    height: int,
    tiles: Iterable[np.ndarray],
    mpp: float | tuple[float, float] | None,
    tile_size: int = 512,
    compression: str = "zlib",
    downsample: int = 4,
) -> str:
    """Write a lossless one-channel uint8 label mask as a pyramidal tiled TIFF.

    Coarser levels take the nearest level-0 value, so labels stay labels. See
    :func:`write_pyramid` for the parameters.
    """
    if compression not in ("zlib", "lzw", None):
        raise ValueError(f"a mask must be stored losslessly, not with {compression!r}")
    return write_pyramid(
        path,
        width,
        height,
        tiles,
        mpp,
        tile_size=tile_size,
        compression=compression,
        downsample=downsample,
        channels=1,
        resample="nearest",
        description="napari-glimpse label mask",
    )
