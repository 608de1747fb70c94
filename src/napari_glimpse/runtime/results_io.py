"""Save and load an :class:`~napari_glimpse.results.InferenceResult` as a folder.

Layout of ``out_dir``::

    summary.json      slide score, timings, counts, method, slide path, mpp, ...
    maps.zarr/        one zarr group; each SlideMap is one array whose attrs hold
                      name, cell_size, origin, kind, colormap, contrast_limits, ...
    points.geojson    FeatureCollection of Point features (x, y in level-0 pixels)
    boxes.geojson     FeatureCollection of Polygon features (axis-aligned rectangles)
    lines.geojson     FeatureCollection of LineString features (two vertices each)

GeoJSON coordinates are level-0 pixel coordinates, not longitude/latitude: the files are
for QuPath-style tools that read pixel GeoJSON. Each feature carries ``properties.layer``
(the layer name) and its per-feature properties; each collection carries a foreign member
``glimpse_layers`` with the per-layer style and property dtypes, so that empty layers and
dtypes survive the round trip.

The folder is written next to its final place under a temporary name and renamed into
place, so a crash never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GlimpseError
from ..results import InferenceResult, SlideBoxes, SlideLines, SlideMap, SlidePoints, is_lazy_array

FORMAT_VERSION = 1
_MAPS = "maps.zarr"
_SUMMARY = "summary.json"


def _jsonable(value: Any) -> Any:
    """Numpy scalars / arrays / tuples -> plain JSON values (NaN and inf as strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": strict JSON has no such numbers
    if isinstance(value, Path):
        return str(value)
    return value


def _dump_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def _pair(value) -> float | tuple[float, float]:
    return float(value) if np.isscalar(value) else tuple(float(v) for v in value)


# ----------------------------------------------------------------------------- maps


def _write_maps(maps: list[SlideMap], path: Path) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w")
    names = []
    for i, m in enumerate(maps):
        key = f"map_{i:03d}"  # map names may hold '/' or spaces; the name lives in attrs
        data = m.data if is_lazy_array(m.data) else np.ascontiguousarray(m.data)
        chunks = tuple(min(s, 1024) if d >= data.ndim - 2 else 1 for d, s in enumerate(data.shape))
        arr = group.create_array(key, shape=data.shape, dtype=data.dtype, chunks=chunks or None)
        if is_lazy_array(data):  # a zarr / dask label map of a whole slide: copied block by block
            _copy_blocks(data, arr)
        elif data.size:
            arr[...] = data
        arr.attrs.update(
            _jsonable(
                {
                    "name": m.name,
                    "cell_size": m.cell_size,
                    "origin": m.origin,
                    "kind": m.kind,
                    "colormap": m.colormap,
                    "contrast_limits": m.contrast_limits,
                    "opacity": m.opacity,
                    "metadata": m.metadata,
                    "visible": m.visible,
                }
            )
        )
        names.append(key)
    group.attrs.update({"maps": names, "format_version": FORMAT_VERSION})


def _copy_blocks(src, dst, block: int = 4096) -> None:
    """Copy a 2-D array-like into ``dst`` in ``block``-square pieces (bounded memory)."""
    rows, cols = src.shape[-2:]
    for r in range(0, rows, block):
        for c in range(0, cols, block):
            piece = np.asarray(src[..., r : r + block, c : c + block])
            if piece.any():
                dst[..., r : r + block, c : c + block] = piece


#: label maps above this many pixels stay on disk when a result is loaded
LAZY_PIXELS = 2**24


def _read_maps(path: Path) -> list[SlideMap]:
    import zarr

    if not path.exists():
        return []
    group = zarr.open_group(str(path), mode="r")
    out = []
    for key in group.attrs.get("maps", []):
        arr = group[key]
        a = dict(arr.attrs)
        cl = a.get("contrast_limits")
        out.append(
            SlideMap(
                name=a["name"],
                data=arr if a["kind"] == "labels" and arr.size > LAZY_PIXELS else np.asarray(arr[...]),
                cell_size=_pair(a["cell_size"]),
                origin=tuple(float(v) for v in a["origin"]),
                kind=a["kind"],
                colormap=a["colormap"],
                contrast_limits=None if cl is None else (float(cl[0]), float(cl[1])),
                opacity=float(a["opacity"]),
                metadata=dict(a.get("metadata", {})),
                visible=bool(a.get("visible", True)),
            )
        )
    return out


# ------------------------------------------------------------------------- vectors


def _geometry(kind: str, row: np.ndarray) -> dict:
    if kind == "points":
        return {"type": "Point", "coordinates": [float(row[0]), float(row[1])]}
    if kind == "boxes":
        x0, y0, x1, y1 = (float(v) for v in row)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        return {"type": "Polygon", "coordinates": [ring]}
    return {"type": "LineString", "coordinates": [[float(v) for v in p] for p in row]}


def _from_geometry(kind: str, geom: dict) -> list:
    c = geom["coordinates"]
    if kind == "points":
        return c
    if kind == "boxes":
        ring = np.asarray(c[0], dtype=float)
        return [ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()]
    return c


_STYLE = {
    "points": ("size_px", "face_color"),
    "boxes": ("edge_color", "edge_width_px", "text"),
    "lines": ("edge_color", "edge_width_px"),
}
_COORDS = {"points": "xy", "boxes": "boxes", "lines": "segments"}
_SHAPE = {"points": (2,), "boxes": (4,), "lines": (2, 2)}
_CLASS = {"points": SlidePoints, "boxes": SlideBoxes, "lines": SlideLines}


def _write_vectors(kind: str, layers: list, path: Path) -> None:
    features, meta = [], []
    for layer in layers:
        coords = np.asarray(getattr(layer, _COORDS[kind]), dtype=float).reshape(-1, *_SHAPE[kind])
        props = {k: np.asarray(v) for k, v in layer.properties.items()}
        style = {k: getattr(layer, k) for k in _STYLE[kind]}
        meta.append(
            {
                "name": layer.name,
                "count": len(coords),
                "coords_dtype": str(np.asarray(getattr(layer, _COORDS[kind])).dtype),
                "property_dtypes": {k: v.dtype.str for k, v in props.items()},
                "style": style,
                "metadata": layer.metadata,
            }
        )
        for i, row in enumerate(coords):
            p = {"layer": layer.name}
            p.update({k: v[i] for k, v in props.items()})
            features.append({"type": "Feature", "geometry": _geometry(kind, row), "properties": p})
    _dump_json({"type": "FeatureCollection", "glimpse_layers": meta, "features": features}, path)


def _read_vectors(kind: str, path: Path) -> list:
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    by_layer: dict[str, list] = {}
    for f in doc.get("features", []):
        by_layer.setdefault(f["properties"]["layer"], []).append(f)
    out = []
    for meta in doc.get("glimpse_layers", []):
        feats = by_layer.get(meta["name"], [])
        coords = np.asarray(
            [_from_geometry(kind, f["geometry"]) for f in feats], dtype=float
        ).reshape(-1, *_SHAPE[kind]).astype(meta.get("coords_dtype", "float64"))
        props = {
            k: np.asarray([f["properties"][k] for f in feats], dtype=np.dtype(dt))
            for k, dt in meta["property_dtypes"].items()
        }
        style = dict(meta["style"])
        if kind == "points":
            style["size_px"] = float(style["size_px"])
        out.append(
            _CLASS[kind](
                meta["name"], coords, properties=props, metadata=meta["metadata"], **style
            )
        )
    return out


# -------------------------------------------------------------------------- public


def summary_dict(result: InferenceResult) -> dict:
    """What ``summary.json`` holds: the result's summary plus its identifying fields."""
    out = {
        "format_version": FORMAT_VERSION,
        "method": result.method,
        "slide_path": result.slide_path,
        "slide_score": result.slide_score,
        "mpp": None if result.mpp is None else list(result.mpp),
    }
    out["summary"] = dict(result.summary)
    # The headline numbers every method has (runtime.run.SUMMARY_KEYS) also at top level,
    # where scripts and comparisons look first.
    for key in ("seconds", "patches_read", "pixels_read", "device", "checkpoint", "evidence", "region"):
        if key in result.summary:
            out[key] = result.summary[key]
    return out


def save_result(result: InferenceResult, out_dir: str | os.PathLike) -> Path:
    """Write ``result`` to ``out_dir`` (replaced if it exists) atomically.

    Parameters
    ----------
    result
        What a method returned.
    out_dir
        Destination folder; its parent is created if missing.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_maps(result.maps, tmp / _MAPS)
        _write_vectors("points", result.points, tmp / "points.geojson")
        _write_vectors("boxes", result.boxes, tmp / "boxes.geojson")
        _write_vectors("lines", result.lines, tmp / "lines.geojson")
        _dump_json(summary_dict(result), tmp / _SUMMARY)  # last: its presence marks completion
        old = None
        if out.exists():
            # os.replace cannot replace a non-empty folder: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_result(out_dir: str | os.PathLike) -> InferenceResult:
    """Read a folder written by :func:`save_result` (raises GlimpseError when it is not one)."""
    path = Path(out_dir)
    summary_path = path / _SUMMARY
    if not summary_path.is_file():
        raise GlimpseError("not an inference result folder (no summary.json)", path)
    try:
        doc = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise GlimpseError(f"summary.json is unreadable: {exc}", summary_path) from exc
    try:
        mpp = doc.get("mpp")
        return InferenceResult(
            method=doc["method"],
            slide_path=doc["slide_path"],
            slide_score=doc["slide_score"],
            maps=_read_maps(path / _MAPS),
            points=_read_vectors("points", path / "points.geojson"),
            boxes=_read_vectors("boxes", path / "boxes.geojson"),
            lines=_read_vectors("lines", path / "lines.geojson"),
            summary=doc.get("summary", {}),
            mpp=None if mpp is None else (float(mpp[0]), float(mpp[1])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GlimpseError(f"malformed inference result: {exc}", path) from exc
