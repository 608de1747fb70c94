"""Export a result to the rest of the ecosystem: QuPath GeoJSON and OME-Zarr (NGFF 0.5).

- :func:`to_qupath` turns a result's vectors into one QuPath-importable FeatureCollection in
  level-0 pixel coordinates: boxes, lines and segmented regions (the components of a label
  map, with their holes) are ``annotation`` objects, evidence points ``detection`` objects;
  each has a ``classification`` (name and RGB colour) and ``measurements`` (its numeric
  properties: scores, probabilities, areas). The document is checked against the GeoJSON
  specification by ``geojson-pydantic`` before it is written.
- :func:`write_ome_zarr` writes each heat map, stack and label map as its own NGFF image
  (``<name>.ome.zarr``) with ``scale`` and ``translation`` in micrometres, so that
  napari-ome-zarr, or any NGFF viewer, overlays it on the slide where the plugin puts it
  (map cell ``i`` centred at world ``(origin + (i + 1/2) * cell - 1/2) * mpp``,
  :mod:`napari_glimpse.coords`). Label maps carry ``image-label`` with the class colours;
  maps over 1,024 cells a side get nearest-neighbour pyramid levels, copied block by block.

Both write to a temporary name and rename into place.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .annotations._types import atomic_write_text
from .errors import GlimpseError
from .results import InferenceResult, SlideMap, is_lazy_array

__all__ = ["to_qupath", "write_qupath_geojson", "write_ome_zarr", "export_result", "label_regions"]

#: Label maps are vectorised at most this many cells a side (larger ones are subsampled).
MAX_VECTOR_CELLS = 4096
#: At most this many regions per label map (the largest are kept).
MAX_REGIONS = 5000


def _rgb(colour, i: int = 0) -> list[int]:
    from matplotlib.colors import to_rgb

    c = colour
    if isinstance(c, np.ndarray) and c.ndim == 2:
        c = c[i]
    try:
        return [int(round(v * 255)) for v in to_rgb(tuple(c) if isinstance(c, np.ndarray) else c)]
    except ValueError:
        return [255, 255, 0]


def _measurements(props: dict, i: int) -> dict[str, float]:
    out = {}
    for k, v in props.items():
        v = np.asarray(v)
        if v.ndim == 1 and v.dtype.kind in "biuf":
            x = float(v[i])
            if math.isfinite(x):
                out[k] = x
    return out


def _feature(geometry: dict, object_type: str, name: str, cls: str, rgb: list[int],
             measurements: dict) -> dict:
    return {"type": "Feature", "geometry": geometry,
            "properties": {"objectType": object_type, "name": name,
                           "classification": {"name": cls, "color": rgb},
                           "measurements": measurements, "isLocked": False}}


def _ring(points: np.ndarray) -> list[list[float]]:
    ring = [[round(float(x), 2), round(float(y), 2)] for x, y in points]
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring


def label_regions(m: SlideMap) -> list[tuple[int, list[np.ndarray], int]]:
    """The connected regions of a label map: ``(class, [exterior, *holes], cells)``.

    Rings are level-0 (x, y) polygons along the cell borders' mid-lines. Class 0 (the
    background) is left out; a map over :data:`MAX_VECTOR_CELLS` a side is subsampled.
    """
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours

    data = m.data
    rows, cols = data.shape[-2:]
    step = max(1, math.ceil(max(rows, cols) / MAX_VECTOR_CELLS))
    labels = np.asarray(data[::step, ::step]) if step > 1 or is_lazy_array(data) else np.asarray(data)
    sx, sy = (m.cell_size, m.cell_size) if np.isscalar(m.cell_size) else m.cell_size
    sx, sy = float(sx) * step, float(sy) * step
    ox, oy = (float(v) for v in m.origin)
    out = []
    for cls in (int(c) for c in np.unique(labels) if c != 0):
        comps, n = ndimage.label(labels == cls)
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())[1:]
        keep = np.argsort(-sizes, kind="stable")[:MAX_REGIONS]
        boxes = ndimage.find_objects(comps)
        for k in keep:
            sl = boxes[k]
            mask = np.pad(comps[sl] == k + 1, 1)
            rings = []
            for c in find_contours(mask.astype(np.float32), 0.5):
                c = approximate_polygon(c, tolerance=0.25)
                if len(c) < 4:
                    continue
                r = c[:, 0] - 1 + sl[0].start
                q = c[:, 1] - 1 + sl[1].start
                rings.append(np.stack([ox + (q + 0.5) * sx, oy + (r + 0.5) * sy], axis=1))
            if not rings:
                continue
            areas = [abs(_area(r)) for r in rings]
            ext = int(np.argmax(areas))
            rings.insert(0, rings.pop(ext))
            out.append((cls, rings, int(sizes[k])))
    return out


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def to_qupath(result: InferenceResult) -> dict:
    """The result's boxes, lines, points and label regions as one QuPath FeatureCollection."""
    features = []
    for b in result.boxes:
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(b.boxes, float).reshape(-1, 4)):
            ring = _ring(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
            features.append(_feature({"type": "Polygon", "coordinates": [ring]}, "annotation",
                                     f"{b.name} {i}", b.name, _rgb(b.edge_color, i),
                                     _measurements(b.properties, i)))
    for ln in result.lines:
        for i, seg in enumerate(np.asarray(ln.segments, float).reshape(-1, 2, 2)):
            features.append(_feature({"type": "LineString", "coordinates": seg.round(2).tolist()},
                                     "annotation", f"{ln.name} {i}", ln.name, _rgb(ln.edge_color),
                                     _measurements(ln.properties, i)))
    for p in result.points:
        for i, (x, y) in enumerate(np.asarray(p.xy, float).reshape(-1, 2)):
            features.append(_feature({"type": "Point", "coordinates": [round(x, 2), round(y, 2)]},
                                     "detection", f"{p.name} {i}", p.name, _rgb(p.face_color),
                                     _measurements(p.properties, i)))
    mpp = result.mpp
    for m in result.maps:
        if m.kind != "labels":
            continue
        names = m.metadata.get("classes") or []
        colours = m.metadata.get("class_colours") or []
        cell_um2 = None
        if mpp is not None:
            sx, sy = (m.cell_size, m.cell_size) if np.isscalar(m.cell_size) else m.cell_size
            cell_um2 = float(sx) * float(sy) * mpp[0] * mpp[1]
        for cls, rings, cells in label_regions(m):
            name = names[cls] if cls < len(names) else f"class {cls}"
            rgb = _rgb(colours[cls]) if cls < len(colours) else _rgb("yellow")
            meas = {"label": float(cls), "cells": float(cells)}
            if cell_um2 is not None:
                meas["area_um2"] = round(cells * cell_um2, 3)
            features.append(_feature({"type": "Polygon", "coordinates": [_ring(r) for r in rings]},
                                     "annotation", f"{m.name}: {name}", name, rgb, meas))
    doc = {"type": "FeatureCollection", "features": features}
    _validate(doc)
    return doc


def _validate(doc: dict) -> None:
    """Check ``doc`` against the GeoJSON specification (RFC 7946) with geojson-pydantic."""
    from geojson_pydantic import FeatureCollection
    from pydantic import ValidationError

    try:
        FeatureCollection.model_validate(doc)
    except ValidationError as exc:  # a bug here, not bad input: say what broke
        raise RuntimeError(f"exported GeoJSON is not valid: {exc}") from exc


def write_qupath_geojson(result: InferenceResult, path: str | os.PathLike) -> Path:
    """Write :func:`to_qupath` of ``result`` to ``path`` (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(to_qupath(result)) + "\n")
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "map"


def _levels(shape: Sequence[int], largest: int = 1024) -> int:
    n, side = 1, max(shape[-2:])
    while side > largest:
        side = math.ceil(side / 2)
        n += 1
    return n


def _lattice_pad(m: SlideMap) -> tuple[int, int, tuple[float, float]]:
    """(rows, cols) of blank cells put before the map, so that a reader that drops the
    translation misplaces no cell by more than half a cell, and the origin that leaves."""
    sx, sy = (m.cell_size, m.cell_size) if np.isscalar(m.cell_size) else m.cell_size
    sx, sy = float(sx), float(sy)
    ox, oy = (float(v) for v in m.origin)
    # the centre of cell 0 sits (o + (s - 1) / 2) level-0 px from the corner: k cells, and a rest
    kx, ky = max(0, round((ox + (sx - 1) / 2) / sx)), max(0, round((oy + (sy - 1) / 2) / sy))
    return ky, kx, (ox - kx * sx, oy - ky * sy)


def _write_ngff(m: SlideMap, mpp, path: Path) -> None:
    """One map as an NGFF 0.5 image. The map is put on the slide's cell lattice (blank cells,
    never written, before a region's map) so that a reader which applies only the scale (as
    napari-ome-zarr 0.10 does) still places every cell within one cell of where it is."""
    import zarr

    from .coords import grid_transform

    data = m.data
    stack = data.ndim == 3
    pad_r, pad_c, origin = _lattice_pad(m)
    scale, translate = grid_transform(m.cell_size, origin, mpp)  # of the padded lattice's cell 0
    unit = "micrometer" if mpp is not None else None
    axes = ([{"name": "c", "type": "channel"}] if stack else []) + [
        {"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in ("y", "x")]
    lead = [1.0] if stack else []
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    datasets = []
    dims = ("c", "y", "x") if stack else ("y", "x")
    full = (*data.shape[:-2], pad_r + data.shape[-2], pad_c + data.shape[-1])
    for k in range(_levels(full)):
        f = 2 ** k
        shape = (*full[:-2], math.ceil(full[-2] / f), math.ceil(full[-1] / f))
        chunks = tuple(1 if d < data.ndim - 2 else min(s, 512) for d, s in enumerate(shape))
        dtype = np.int32 if m.kind == "labels" else data.dtype
        arr = group.create_array(f"s{k}", shape=shape, dtype=dtype, chunks=chunks, dimension_names=dims,
                                 fill_value=np.nan if np.dtype(dtype).kind == "f" else 0)
        # nearest neighbour: level k's cell j is level-0 cell j * f (of the padded lattice)
        r0, c0 = (-pad_r) % f, (-pad_c) % f  # the first map cell on level k's lattice
        block = 4096 * f
        for r in range(r0, data.shape[-2], block):
            for c in range(c0, data.shape[-1], block):
                piece = np.asarray(data[..., r:r + block:f, c:c + block:f])
                R, C = (pad_r + r) // f, (pad_c + c) // f
                arr[..., R:R + piece.shape[-2], C:C + piece.shape[-1]] = piece
        datasets.append({"path": f"s{k}", "coordinateTransformations": [
            {"type": "scale", "scale": lead + [scale[0] * f, scale[1] * f]},
            {"type": "translation", "translation": [0.0] * len(lead) + list(translate)}]})
    ome = {"version": "0.5", "multiscales": [{"name": m.name, "axes": axes, "datasets": datasets}]}
    if m.kind == "labels":
        colours = m.metadata.get("class_colours") or []
        ome["image-label"] = {"version": "0.5", "colors": [
            {"label-value": i, "rgba": _rgb(c) + [0 if i == 0 else 255]} for i, c in enumerate(colours)]}
        names = m.metadata.get("classes")
        if names:
            ome["image-label"]["properties"] = [{"label-value": i, "class": n} for i, n in enumerate(names)]
    group.attrs["ome"] = ome
    group.attrs["napari_glimpse"] = {"map": m.name, "cell_size": m.cell_size, "origin": list(m.origin),
                                     "kind": m.kind, "contrast_limits": m.contrast_limits,
                                     "lattice_pad_cells": [pad_r, pad_c]}


def write_ome_zarr(result: InferenceResult, out_dir: str | os.PathLike) -> list[Path]:
    """Each of the result's maps as ``out_dir/<name>.ome.zarr``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    used: set[str] = set()
    for m in result.maps:
        if m.data.ndim not in (2, 3) or 0 in m.data.shape:
            continue
        slug = _slug(m.name)
        while slug in used:
            slug += "_"
        used.add(slug)
        target = out_dir / f"{slug}.ome.zarr"
        tmp = Path(tempfile.mkdtemp(prefix=f".{slug}.tmp-", dir=out_dir))
        try:
            _write_ngff(m, result.mpp, tmp / "x")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp / "x", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        paths.append(target)
    return paths


def export_result(result: InferenceResult | str | os.PathLike, out_dir: str | os.PathLike,
                  geojson: bool = True, ome_zarr: bool = True) -> dict[str, list[str]]:
    """Export a result (or a saved result folder) to ``out_dir``: ``<method>.qupath.geojson``
    and the maps' ``*.ome.zarr``. Returns what was written, by format."""
    from .runtime.results_io import load_result

    if not isinstance(result, InferenceResult):
        result = load_result(result)
    if not (geojson or ome_zarr):
        raise GlimpseError("nothing to export: ask for --geojson, --ome-zarr or both")
    out_dir = Path(out_dir)
    written: dict[str, list[str]] = {"geojson": [], "ome_zarr": []}
    if geojson:
        written["geojson"].append(str(write_qupath_geojson(result, out_dir / f"{result.method}.qupath.geojson")))
    if ome_zarr:
        written["ome_zarr"] = [str(p) for p in write_ome_zarr(result, out_dir)]
    return written
