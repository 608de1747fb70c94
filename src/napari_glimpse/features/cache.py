"""A per-slide zarr cache of :class:`~napari_glimpse.features.FeatureGrid` s.

One zarr group per (slide file identity, encoder weights checksum, grid parameters), named
``<slide stem>-<key[:16]>.zarr``: arrays ``features`` (float16, chunked by rows),
``tissue`` and ``scores`` (absent without a score head), attributes ``key``, ``meta``,
``origin`` and ``cell_size``. A group is written under a temporary name and renamed when
complete; on read the stored key must equal the wanted one and the arrays must fit
together, otherwise the entry is recomputed. Changing the slide file (its size, mtime or
first / last MiB), the encoder's weights or any grid parameter changes the key, so a
stale entry is never reused. Reading a cached grid opens no slide.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..errors import SlideError
from ..runtime.events import Progress, run_to_end
from . import FeatureGrid
from .grid import iter_grid_features

__all__ = ["slide_identity", "cache_key", "default_cache_dir", "iter_cached_grid_features",
           "cached_grid_features"]

_MIB = 1 << 20
# Bumped when the stored layout or the grid geometry changes: old entries then miss.
_FORMAT = 1


def default_cache_dir() -> Path:
    """``$NAPARI_GLIMPSE_CACHE`` or ``~/.cache/napari-glimpse/features``."""
    env = os.environ.get("NAPARI_GLIMPSE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "napari-glimpse" / "features"


def slide_identity(path: str | os.PathLike) -> str:
    """sha256 (hex) of the resolved path, size, mtime_ns and the file's first and last MiB.

    Raises
    ------
    SlideError
        The file does not exist or cannot be read.
    """
    p = Path(path)
    try:
        resolved = p.resolve(strict=True)
        st = resolved.stat()
        h = hashlib.sha256(f"{resolved}|{st.st_size}|{st.st_mtime_ns}|".encode())
        with open(resolved, "rb") as fh:
            h.update(fh.read(_MIB))
            if st.st_size > _MIB:
                fh.seek(max(_MIB, st.st_size - _MIB))
                h.update(fh.read(_MIB))
    except FileNotFoundError:
        raise SlideError("no such file", path) from None
    except OSError as exc:
        raise SlideError(f"cannot read the file ({exc.strerror or exc})", path) from None
    return h.hexdigest()


def cache_key(slide_id: str, encoder_checksum: str, *, patch_px: int, mpp: float, tissue: str | None,
              tissue_min: float, region=None) -> str:
    """sha256 (hex) of everything a cached grid depends on."""
    parts = {"format": _FORMAT, "slide_id": slide_id, "encoder": encoder_checksum, "patch_px": int(patch_px),
             "mpp": float(mpp), "tissue": tissue, "tissue_min": float(tissue_min),
             "region": None if region is None else [float(v) for v in region]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read(path: Path, key: str, feature_dim: int) -> FeatureGrid | None:
    """The grid stored at ``path``, or None when it is missing, partial, corrupt or not ``key``'s."""
    import zarr

    if not (path / "zarr.json").is_file():
        return None
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        if attrs.get("key") != key:
            return None
        features = np.asarray(group["features"][...])
        tissue = np.asarray(group["tissue"][...]).astype(bool)
        scores = np.asarray(group["scores"][...]) if "scores" in group else None
        meta = dict(attrs["meta"])
        origin = tuple(float(v) for v in attrs["origin"])
        cell_size = float(attrs["cell_size"])
    except Exception:  # an unreadable entry is a miss; it is rewritten
        return None
    if (features.dtype != np.float16 or features.ndim != 3 or features.shape[:2] != tissue.shape
            or features.shape[2] != feature_dim or (scores is not None and scores.shape != tissue.shape)):
        return None
    return FeatureGrid(features, tissue, scores, origin, cell_size, meta)


def _write(grid: FeatureGrid, path: Path, key: str) -> None:
    """Write ``grid`` as a zarr group at ``path``: under a temporary name, then renamed."""
    import zarr

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        group = zarr.open_group(str(tmp), mode="w")
        m, n, k = grid.features.shape
        rows = max(1, min(m, (4 * _MIB) // max(1, n * k * 2)))  # about 4 MiB per chunk
        group.create_array("features", data=grid.features, chunks=(rows, max(n, 1), max(k, 1)))
        group.create_array("tissue", data=grid.tissue.astype(bool), chunks=(max(m, 1), max(n, 1)))
        if grid.scores is not None:
            group.create_array("scores", data=grid.scores.astype(np.float32), chunks=(max(m, 1), max(n, 1)))
        # attrs last: an entry without its key is never read
        group.attrs.update(key=key, meta=grid.meta, origin=list(grid.origin), cell_size=grid.cell_size)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)  # a corrupt or partial entry under the final name
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.exists():
                raise
            # another process stored the same key first; its entry is as good as ours
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def iter_cached_grid_features(slide_path: str | os.PathLike, encoder, *, cache=None,
                              **grid_kwargs) -> Generator[Progress, None, FeatureGrid]:
    """The slide's grid from the cache, else computed by :func:`.grid.iter_grid_features` and stored.

    Parameters
    ----------
    slide_path
        The slide file.
    encoder
        An :class:`~napari_glimpse.encoders.Encoder`.
    cache
        None: :func:`default_cache_dir`; False: no cache (always compute); a path: that folder.
    **grid_kwargs
        :func:`.grid.iter_grid_features` arguments (``patch_px``, ``mpp``, ``tissue``,
        ``tissue_min``, ``batch_size``, ``device``, ``region``); all but ``batch_size``
        and ``device`` are part of the key.

    Returns
    -------
    FeatureGrid
        ``meta["cached"]`` is True when it was read from the cache (``meta["seconds"]``
        is then the time the read took, ``meta["computed_seconds"]`` the original run's).
    """
    if cache is False:
        grid = yield from iter_grid_features(slide_path, encoder, **grid_kwargs)
        grid.meta["cached"] = False
        return grid
    started = time.perf_counter()
    folder = default_cache_dir() if cache is None else Path(cache)
    params = {"patch_px": int(grid_kwargs.get("patch_px") or encoder.patch_px),
              "mpp": float(grid_kwargs.get("mpp") or encoder.mpp),
              "tissue": grid_kwargs.get("tissue", "otsu"), "tissue_min": float(grid_kwargs.get("tissue_min", 0.25)),
              "region": grid_kwargs.get("region")}
    key = cache_key(slide_identity(slide_path), encoder.checksum, **params)
    path = folder / f"{Path(slide_path).stem}-{key[:16]}.zarr"
    yield Progress("cache", 0, 1, "reading the feature cache")
    grid = _read(path, key, encoder.feature_dim)
    if grid is not None:
        grid.meta.update(cached=True, computed_seconds=grid.meta.get("seconds"),
                         seconds=time.perf_counter() - started)
        yield Progress("cache", 1, 1, "cached")
        return grid
    grid = yield from iter_grid_features(slide_path, encoder, **grid_kwargs)
    _write(grid, path, key)
    grid.meta["cached"] = False
    return grid


def cached_grid_features(slide_path: str | os.PathLike, encoder, *, cache=None, **grid_kwargs) -> FeatureGrid:
    """:func:`iter_cached_grid_features` run to its end (same arguments)."""
    return run_to_end(iter_cached_grid_features(slide_path, encoder, cache=cache, **grid_kwargs))
