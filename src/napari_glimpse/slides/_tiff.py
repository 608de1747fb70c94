"""TIFF-family slides (SVS, OME-TIFF, NDPI, generic pyramidal TIFF, BigTIFF) via tifffile.

Pixels are decoded tile by tile: ``read_region`` reads and decodes only the tiles (or
strips) under the region, straight from the page's offsets with tifffile's codec, behind a
small LRU cache of decoded tiles; ``dask_level`` wraps tifffile's zarr store
(``series.aszarr(level=i)``) so napari pulls chunks on demand.
"""

from __future__ import annotations

import logging
import os
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict

import numpy as np

from ..errors import SlideError
from ._slide import MAX_PLAIN_PIXELS, Level, openslide_downsample, square_chunk

# Decoded tiles kept per slide; 64 MiB of 256 x 256 RGB tiles is about 340 tiles.
TILE_CACHE_BYTES = 64 << 20

_UNIT_TO_UM = {
    "pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6,
    "Å": 1e-4, "\u212b": 1e-4,
}  # fmt: skip


class _TileCache:
    """Thread-safe LRU of decoded tiles keyed by (level, tile index), bounded in bytes."""

    def __init__(self, max_bytes: int = TILE_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            tile = self._items.get(key)
            if tile is not None:
                self._items.move_to_end(key)
            return tile

    def put(self, key, tile: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


class _PageReader:
    """Reads regions of one contiguous-planar TIFF page by decoding only the tiles needed."""

    def __init__(self, key, page, read_bytes, cache: _TileCache):
        self.key = key
        self.page = page
        self.read_bytes = read_bytes  # (offset, count) -> bytes, safe from any thread
        self.cache = cache
        self.tile_h, self.tile_w = int(page.chunks[0]), int(page.chunks[1])
        self.n_y, self.n_x = int(page.chunked[0]), int(page.chunked[1])
        self.decodes = 0  # how many tiles were decoded (laziness is tested on it)
        # read once, here (the caller holds the file's lock): tifffile may load them lazily
        self.offsets = tuple(page.dataoffsets)
        self.counts = tuple(page.databytecounts)
        self._decodeargs = {
            "jpegtables": page.jpegtables,
            "jpegheader": page.jpegheader,
            "_fullsize": page.is_tiled,
        }

    def tile(self, ty: int, tx: int) -> np.ndarray:
        index = ty * self.n_x + tx
        cached = self.cache.get((self.key, index))
        if cached is not None:
            return cached
        offset = self.offsets[index]
        count = self.counts[index]
        if count == 0:  # a sparse tile: TIFF says it holds nothing
            tile = np.zeros((self.tile_h, self.tile_w, self.page.samplesperpixel), np.uint8)
        else:
            data = self.read_bytes(offset, count)
            if len(data) < count:
                raise SlideError(f"tile {index} lies past the end of the file (truncated?)")
            segment, _, _ = self.page.decode(data, index, **self._decodeargs)
            if segment is None:
                raise SlideError(f"tile {index} could not be decoded")
            tile = np.asarray(segment).reshape(segment.shape[-3:])
        self.decodes += 1
        self.cache.put((self.key, index), tile)
        return tile

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        out = np.empty((y1 - y0, x1 - x0, self.page.samplesperpixel), np.uint8)
        th, tw = self.tile_h, self.tile_w
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self.tile(ty, tx)
                ty0, tx0 = ty * th, tx * tw
                ya, yb = max(y0, ty0), min(y1, ty0 + tile.shape[0])
                xa, xb = max(x0, tx0), min(x1, tx0 + tile.shape[1])
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[
                    ya - ty0 : yb - ty0, xa - tx0 : xb - tx0
                ]
        return out


def _to_rgb(px: np.ndarray) -> np.ndarray:
    """(h, w[, s]) -> (h, w, 3): grey is repeated, alpha (opaque pixels assumed) dropped."""
    if px.ndim == 2:
        return np.repeat(px[..., None], 3, axis=2)
    if px.shape[2] == 1:
        return np.repeat(px, 3, axis=2)
    return np.ascontiguousarray(px[..., :3])


def _parse_ome(xml: str) -> dict:
    """mpp, magnification and image names from OME-XML (namespace-agnostic)."""
    info: dict = {"mpp": None, "magnification": None, "names": []}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return info
    local = {el: el.tag.rsplit("}", 1)[-1] for el in root.iter()}
    for el, tag in local.items():
        if tag == "Image":
            info["names"].append(el.get("Name", ""))
        elif tag == "Pixels" and info["mpp"] is None:
            vals = []
            for ax in ("X", "Y"):
                size = el.get(f"PhysicalSize{ax}")
                unit = el.get(f"PhysicalSize{ax}Unit", "µm")
                factor = _UNIT_TO_UM.get(unit)
                vals.append(None if size is None or factor is None else float(size) * factor)
            if None not in vals:
                info["mpp"] = tuple(vals)
        elif tag == "Objective" and info["magnification"] is None:
            mag = el.get("NominalMagnification")
            if mag is not None:
                info["magnification"] = float(mag)
    return info


def _resolution_mpp(page) -> tuple[float, float] | None:
    """mpp from XResolution / YResolution and ResolutionUnit (cm or inch only)."""
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if unit is None or xres is None or yres is None:
        return None
    per = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # um per inch / per cm
    if per is None:
        return None
    vals = []
    for tag in (xres, yres):
        num, den = tag.value
        if num == 0 or den == 0:
            return None
        vals.append(per * den / num)
    return (vals[0], vals[1])


class _Collect(logging.Handler):
    """Keeps the messages of log records (tifffile's warnings while parsing)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class TiffBackend:
    """Reads a TIFF-family slide; see the module docstring."""

    def __init__(self, path: str):
        import tifffile

        self.path = path
        # tifffile logs recoverable damage (a page offset past the end of the file) and
        # carries on with the pages it could read; collect those lines instead of letting
        # them reach the terminal, and refuse a file whose page chain is broken.
        log = logging.getLogger("tifffile")
        records = _Collect()
        level, propagate = log.level, log.propagate
        log.addHandler(records)
        log.setLevel(logging.WARNING)
        log.propagate = False
        self._tif = None
        self._fd = None
        try:
            self._tif = tifffile.TiffFile(path)
            # tiles are read from several threads (napari's chunk loading, MagNet's sibling
            # fields): tile bytes come by positional reads of a descriptor of our own, and
            # tifffile's own seeks take its lock (a no-op until set)
            self._tif.filehandle.set_lock(True)
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0)) if hasattr(os, "pread") else None
            self._setup()
            broken = [m for m in records.messages if "invalid page offset" in m]
            if broken:
                raise SlideError(f"truncated or damaged ({broken[0]})", path)
        except BaseException:
            if self._fd is not None:
                os.close(self._fd)
            if self._tif is not None:
                self._tif.close()
            raise
        finally:
            log.removeHandler(records)
            log.setLevel(level)
            log.propagate = propagate

    # -- metadata ------------------------------------------------------------------------
    def _setup(self) -> None:
        tif = self._tif
        if not tif.series:
            raise SlideError("the TIFF holds no readable image (truncated or damaged?)", self.path)
        self.properties: dict = {}
        self.mpp = None
        self.magnification = None
        first = tif.pages.first
        if tif.is_svs:
            self.format, self.vendor = "aperio-svs", "aperio"
            from tifffile.tifffile import svs_description_metadata

            meta = svs_description_metadata(first.description)
            self.properties.update({f"aperio.{k}": v for k, v in meta.items()})
            if "MPP" in meta:
                self.mpp = (float(meta["MPP"]), float(meta["MPP"]))
            if "AppMag" in meta:
                self.magnification = float(meta["AppMag"])
        elif tif.is_ndpi:
            self.format, self.vendor = "ndpi", "hamamatsu"
            tags = first.ndpi_tags or {}
            self.properties.update({f"hamamatsu.{k}": v for k, v in tags.items()})
            self.mpp = _resolution_mpp(first)
            if tags.get("Magnification"):
                self.magnification = float(tags["Magnification"])
        elif tif.is_ome:
            self.format, self.vendor = "ome-tiff", "ome"
            ome = _parse_ome(tif.ome_metadata or "")
            self.mpp = ome["mpp"] or _resolution_mpp(first)
            self.magnification = ome["magnification"]
        else:
            self.format, self.vendor = "tiff", "generic-tiff"
            self.mpp = _resolution_mpp(first)
        self.properties["glimpse.format"] = self.format

        base = tif.series[0]
        self._level_series = list(base.levels)
        used = {0}
        if len(self._level_series) == 1 and self.format == "tiff":
            # Pyramids written as plain following pages (no reduced-resolution flag).
            used |= self._following_levels(base)
        self._check_base(self._level_series[0])
        self.associated = {}
        for i, series in enumerate(tif.series):
            if i in used:
                continue
            name = (series.name or "").strip().lower() or f"image-{i}"
            if self.format == "aperio-svs" and name == "baseline":
                continue
            if self.format == "ome-tiff" and i > 0 and name.startswith("image-"):
                continue
            self.associated.setdefault(name, self._associated_reader(series))

        w0, h0 = self._yxs(self._level_series[0])[:2]
        self.levels = []
        for series in self._level_series:
            w, h = self._yxs(series)[:2]
            self.levels.append(Level(w, h, openslide_downsample(w0, h0, w, h)))
        self._cache = _TileCache()
        self._readers: dict[int, _PageReader | None] = {}
        self._dask: dict[int, object] = {}
        self._synthetic: list = []
        if len(self.levels) == 1:
            from ._pyramid import coarsened_levels

            self._synthetic = coarsened_levels(self.dask_level(0), w0, h0)
            self.levels += [lv for lv, _ in self._synthetic]

    def _following_levels(self, base) -> set[int]:
        w0, h0 = self._yxs(base)[:2]
        used = set()
        prev_w = w0
        for i, series in enumerate(self._tif.series[1:], start=1):
            page = series.keyframe
            if not page.is_tiled or series.dtype != base.dtype:
                continue
            if page.samplesperpixel != base.keyframe.samplesperpixel:
                continue
            w, h = self._yxs(series)[:2]
            if w >= prev_w or abs(w / h - w0 / h0) > 0.02 * (w0 / h0):
                continue
            self._level_series.append(series)
            used.add(i)
            prev_w = w
        return used

    def _yxs(self, series) -> tuple[int, int, int]:
        """(width, height, samples) of a series whose axes end in YX or YXS."""
        axes, shape = series.axes, series.shape
        if axes.endswith("YXS"):
            return shape[-2], shape[-3], shape[-1]
        if axes.endswith("YX"):
            lead = axes[-3] if len(axes) > 2 else ""
            samples = shape[-3] if lead in "SC" and lead else 1
            return shape[-1], shape[-2], samples
        raise SlideError(f"unsupported image layout (axes {axes!r})", self.path)

    def _check_base(self, series) -> None:
        import tifffile

        page = series.keyframe
        if series.dtype != np.uint8:
            raise SlideError(
                f"unsupported pixel type {series.dtype} (only 8-bit RGB / grey slides)", self.path
            )
        try:
            tifffile.TIFF.DECOMPRESSORS[page.compression]
        except KeyError:
            raise SlideError(
                f"unsupported compression {int(page.compression)} "
                f"({getattr(page.compression, 'name', 'unknown')})",
                self.path,
            ) from None
        except Exception as exc:  # codec present in tifffile's table but not importable
            raise SlideError(
                f"compression {page.compression!s} cannot be decoded here ({exc})", self.path
            ) from exc
        if not page.is_tiled and not page.is_ndpi:
            px = int(page.chunks[0]) * int(page.chunks[1])
            if px > MAX_PLAIN_PIXELS:
                raise SlideError(
                    f"stores {page.imagewidth} x {page.imagelength} px in strips of "
                    f"{px} px that must be decoded whole; convert it to a tiled pyramidal TIFF",
                    self.path,
                )
        size = os.path.getsize(self.path)
        for level in self._level_series:
            for lpage in level.pages:
                if lpage is None:
                    continue
                ends = np.asarray(lpage.dataoffsets, np.int64) + np.asarray(
                    lpage.databytecounts, np.int64
                )
                if ends.size and int(ends.max()) > size:
                    raise SlideError(
                        f"truncated: image data ends at byte {int(ends.max())} "
                        f"but the file has {size}",
                        self.path,
                    )

    def _associated_reader(self, series):
        def read() -> np.ndarray:
            return _to_rgb(np.asarray(series.asarray()))

        return read

    # -- pixels --------------------------------------------------------------------------
    def _reader(self, level: int) -> _PageReader | None:
        # tifffile loads a level's page (and its tile offsets) from the file on first use:
        # under the file's lock, or a tile read in another thread seeks the handle under it
        with self._tif.filehandle.lock:
            return self._reader_locked(level)

    def _reader_locked(self, level: int) -> _PageReader | None:
        if level not in self._readers:
            series = self._level_series[level]
            page = series.keyframe
            simple = (
                len(series.pages) == 1
                and series.pages[0] is not None
                and page.planarconfig == 1
                and page.imagedepth == 1
                and series.axes in ("YX", "YXS")
            )
            self._readers[level] = (
                _PageReader(level, series.pages[0], self._read_bytes, self._cache)
                if simple
                else None
            )
        return self._readers[level]

    def read_level(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        n_file = len(self._level_series)
        if level >= n_file:
            from ._pyramid import read_coarsened

            k = round(np.log2(self.levels[level].downsample))
            return read_coarsened(lambda *box: self.read_level(0, *box), k, x0, y0, x1, y1)
        reader = self._reader(level)
        if reader is not None:
            px = reader.read(x0, y0, x1, y1)
            return px if px.shape[2] == 3 else _to_rgb(px)
        return np.asarray(self.dask_level(level)[y0:y1, x0:x1].compute())

    def decoded_tiles(self) -> int:
        """Tiles decoded so far by ``read_level`` (for tests and benchmarks)."""
        return sum(r.decodes for r in self._readers.values() if r is not None)

    def dask_level(self, level: int):
        import dask.array as da
        import zarr

        n_file = len(self._level_series)
        if level >= n_file:
            return self._synthetic[level - n_file][1]
        if level in self._dask:
            return self._dask[level]
        series = self._level_series[level]
        page = series.keyframe
        z = zarr.open_array(self._level_store(level), mode="r")
        # Strips span the full width: only their height constrains the chunk (each chunk
        # column then re-decodes the strips it crosses, the price of a stripped file).
        tile_w = page.chunks[1] if page.is_tiled else page.chunks[0]
        side = square_chunk(page.chunks[0], tile_w)
        axes = series.axes
        # Extra leading axes (Z, T, ...) are read at index 0: slides have one plane.
        lead = len(axes) - (3 if axes.endswith(("YXS", "SYX", "CYX")) else 2)
        chunks = (1,) * lead + tuple(
            side if ax in "YX" else z.shape[lead + j] for j, ax in enumerate(axes[lead:])
        )
        arr = da.from_zarr(z, chunks=chunks)
        arr = arr[(0,) * lead]
        if axes.endswith(("SYX", "CYX")):
            arr = arr.transpose(1, 2, 0)
        elif not axes.endswith("YXS"):
            arr = arr[..., None]
        if arr.shape[2] == 1:
            arr = da.concatenate([arr] * 3, axis=2)
        elif arr.shape[2] > 3:
            arr = arr[..., :3]
        self._dask[level] = arr
        return arr

    def _level_store(self, level: int):
        base = self._tif.series[0]
        series = self._level_series[level]
        for i, lv in enumerate(base.levels):
            if lv is series:
                return base.aszarr(level=i)
        return series.aszarr()

    def _read_bytes(self, offset: int, count: int) -> bytes:
        """``count`` bytes at file ``offset``: a positional read (no shared file position, so
        threads need no lock), else seek + read under the handle's lock."""
        fh = self._tif.filehandle
        if self._fd is not None:
            return os.pread(self._fd, count, getattr(fh, "_offset", 0) + offset)
        with fh.lock:
            fh.seek(offset)
            return fh.read(count)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tif.close()
