"""DICOM whole-slide images (VL Whole Slide Microscopy) through wsidicom.

A DICOM slide is a set of files, one per pyramid level plus label / overview images. It opens
from the folder that holds them, or from any one of its files (the files beside it are
opened with it). Pixels are read tile by tile (wsidicom decodes only the frames a region
covers), levels missing from the set are computed on demand as for other single-level
files, and the dask levels read one chunk at a time.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from ..errors import SlideError
from ._pyramid import coarsened_levels, read_coarsened
from ._slide import Level, openslide_downsample, square_chunk

#: The bytes at offset 128 of a DICOM Part 10 file.
DICM = b"DICM"


def is_dicom_file(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == DICM
    except OSError:
        return False


def dicom_files(folder: str) -> list[str]:
    """The DICOM Part 10 files directly in ``folder``."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [p for p in (os.path.join(folder, n) for n in names) if os.path.isfile(p) and is_dicom_file(p)]


class DicomBackend:
    """A DICOM WSI file set read with wsidicom."""

    def __init__(self, path: str):
        from wsidicom import WsiDicom

        self.path = path
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        files = dicom_files(folder)
        if not files:
            raise SlideError("no DICOM files in the folder", path)
        try:
            self._wsi = WsiDicom.open(files)
        except Exception as exc:  # wsidicom raises its own types for non-WSI DICOM
            raise SlideError(f"not a DICOM whole-slide image ({type(exc).__name__}: {exc})", path) from exc
        self._lock = threading.Lock()  # wsidicom's file readers share file positions
        try:
            self._setup()
        except BaseException:
            self._wsi.close()
            raise

    def _setup(self) -> None:
        wsi = self._wsi
        stored = list(wsi.levels)
        if not stored:
            raise SlideError("the DICOM file set has no pyramid levels", self.path)
        w0, h0 = int(stored[0].size.width), int(stored[0].size.height)
        self._stored = stored
        self.levels = [Level(w0, h0, 1.0)] + [
            Level(int(lv.size.width), int(lv.size.height),
                  openslide_downsample(w0, h0, int(lv.size.width), int(lv.size.height)))
            for lv in stored[1:]]
        mpp = stored[0].mpp
        self.mpp = None if mpp is None else (float(mpp.width), float(mpp.height))
        self.format = "dicom"
        self.vendor = "dicom"
        self.magnification = None
        tile = stored[0].tile_size
        self._tile = (int(tile.height), int(tile.width))
        self.properties = {"glimpse.format": "dicom", "dicom.levels": len(stored),
                           "dicom.tile_size": f"{tile.width}x{tile.height}"}
        with contextlib.suppress(Exception):  # metadata is optional; pixels are what matter
            self.properties["dicom.study_instance_uid"] = str(wsi.uids.study_instance)
        self.associated = {}
        for name, reader, present in (("label", wsi.read_label, wsi.labels),
                                      ("macro", wsi.read_overview, wsi.overviews)):
            if present:
                self.associated[name] = self._associated_reader(reader)
        self._dask: dict[int, object] = {}
        self._synthetic = []
        if len(stored) == 1:  # one stored level: coarser ones computed on demand
            self._synthetic = coarsened_levels(self.dask_level(0), w0, h0)
            self.levels += [lv for lv, _ in self._synthetic]

    def _associated_reader(self, read):
        def get() -> np.ndarray:
            with self._lock:
                return np.asarray(read().convert("RGB"))

        return get

    def read_level(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        n = len(self._stored)
        if level >= n:  # a computed level: 2 x 2 means of level 0 under the region
            k = round(np.log2(self.levels[level].downsample))
            return read_coarsened(lambda a, b, c, d: self.read_level(0, a, b, c, d), k, x0, y0, x1, y1)
        with self._lock:
            im = self._wsi.read_region((x0, y0), self._stored[level].level, (x1 - x0, y1 - y0))
        return np.asarray(im.convert("RGB"))

    def dask_level(self, level: int):
        import dask.array as da

        n = len(self._stored)
        if level >= n:
            return self._synthetic[level - n][1]
        if level not in self._dask:
            lv = self.levels[level]
            side = square_chunk(*self._tile)
            rows = _chunks(lv.height, side)
            cols = _chunks(lv.width, side)

            def block(block_info=None):
                (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
                return self.read_level(level, x0, y0, x1, y1)

            self._dask[level] = da.map_blocks(block, chunks=(rows, cols, (3,)), dtype=np.uint8,
                                              meta=np.empty((0, 0, 0), np.uint8))
        return self._dask[level]

    def close(self) -> None:
        self._wsi.close()


def _chunks(n: int, side: int) -> tuple[int, ...]:
    return tuple(min(side, n - i) for i in range(0, n, side))
