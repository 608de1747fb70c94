"""QuPath-style GeoJSON annotations: read and write polygons with holes and classifications."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from ..errors import AnnotationError
from ._types import Annotation, atomic_write_text, finish, make_ring

__all__ = ["read_geojson", "write_geojson", "annotations_to_geojson"]

_AREA_TYPES = ("Polygon", "MultiPolygon", "GeometryCollection")


def read_geojson(
    path: str | os.PathLike,
    offset: tuple[float, float] | None = None,
    slide_dims: tuple[int, int] | None = None,
) -> list[Annotation]:
    """Read polygon annotations from a GeoJSON file (QuPath export or any FeatureCollection).

    Parameters
    ----------
    path : str or PathLike
        A FeatureCollection, a list of Features, a single Feature or a bare geometry.
    offset : (float, float) or None
        Added to every coordinate: the slide's ``openslide.bounds-x/y`` when the file was
        exported by QuPath from an MRXS or NDPI slide with a bounds offset.
    slide_dims : (int, int) or None
        Level-0 (width, height); when given, annotations entirely outside the slide raise
        AnnotationError (they are in another level's or an offset coordinate system).

    Returns
    -------
    list of Annotation
        One per polygon (a MultiPolygon gives several). Features without an area
        (points, lines) are skipped with a warning.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise AnnotationError("no such annotation file", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"not a readable GeoJSON file ({exc})", path) from None

    if isinstance(doc, list):
        features = doc
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and doc.get("type") in _AREA_TYPES:
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    else:
        raise AnnotationError(
            "not GeoJSON: expected a FeatureCollection, a Feature or a list of Features", path
        )
    if not isinstance(features, list):
        raise AnnotationError("'features' is not a list", path)

    out: list[Annotation] = []
    skipped: dict[str, int] = {}
    for i, feat in enumerate(features):
        if not isinstance(feat, dict) or not isinstance(feat.get("geometry"), dict | None):
            raise AnnotationError(f"feature {i} is not a GeoJSON Feature", path)
        props = feat.get("properties") or {}
        if not isinstance(props, dict):
            raise AnnotationError(f"feature {i}: 'properties' is not an object", path)
        label, color = _classification(props, path, i)
        name = props.get("name")
        for rings in _polygons(feat.get("geometry"), path, i, skipped):
            outer = make_ring(rings[0], path, f"feature {i}")
            holes = [make_ring(r, path, f"feature {i} (hole)") for r in rings[1:]]
            out.append(Annotation(outer, holes, label, color, name))
    if skipped:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        warnings.warn(f"{path}: skipped geometries without an area ({kinds})", stacklevel=2)
    return finish(out, path, offset, slide_dims)


def _classification(props: dict, path, i) -> tuple[str, tuple | None]:
    cls = props.get("classification")
    color = None
    if cls is None:
        label = "Unclassified"
    elif isinstance(cls, str):
        label = cls
    elif isinstance(cls, dict) and isinstance(cls.get("name"), str):
        label = cls["name"]
        if isinstance(cls.get("color"), list) and len(cls["color"]) == 3:
            color = tuple(int(v) for v in cls["color"])
        elif isinstance(cls.get("colorRGB"), int):  # older QuPath: packed (A)RGB integer
            v = cls["colorRGB"] & 0xFFFFFF
            color = (v >> 16 & 255, v >> 8 & 255, v & 255)
    else:
        raise AnnotationError(
            f"feature {i}: classification must be a name or an object with a 'name'", path
        )
    return label, color


def _polygons(geom, path, i, skipped) -> list[list]:
    if geom is None:
        skipped["empty"] = skipped.get("empty", 0) + 1
        return []
    kind = geom.get("type")
    if kind == "GeometryCollection":
        parts = []
        for g in geom.get("geometries") or []:
            parts.extend(_polygons(g, path, i, skipped))
        return parts
    coords = geom.get("coordinates")
    if kind == "Polygon":
        polys = [coords]
    elif kind == "MultiPolygon":
        polys = coords
    elif kind in ("Point", "MultiPoint", "LineString", "MultiLineString"):
        skipped[kind] = skipped.get(kind, 0) + 1
        return []
    else:
        raise AnnotationError(f"feature {i}: unknown geometry type {kind!r}", path)
    if not isinstance(polys, list) or not all(isinstance(p, list) and p for p in polys):
        raise AnnotationError(f"feature {i}: malformed {kind} coordinates", path)
    return polys


def _num(v: float):
    # integral coordinates (cell-aligned masks) are written as ints: smaller, exact files
    return int(v) if float(v).is_integer() else round(float(v), 3)


def _ring_json(ring: np.ndarray, offset) -> list:
    pts = [[_num(x - offset[0]), _num(y - offset[1])] for x, y in ring]
    return pts + [pts[0]]


def annotations_to_geojson(annotations: list[Annotation], offset=(0, 0)) -> dict:
    """The QuPath-style FeatureCollection of ``annotations`` (``offset`` subtracted)."""
    features = []
    for a in annotations:
        cls: dict = {"name": a.label}
        if a.color is not None:
            cls["color"] = list(a.color)
        props: dict = {"objectType": "annotation", "classification": cls}
        if a.name:
            props["name"] = a.name
        rings = [_ring_json(a.polygon, offset)] + [_ring_json(h, offset) for h in a.holes]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    path: str | os.PathLike,
    annotations: list[Annotation],
    offset: tuple[float, float] | None = None,
) -> str:
    """Write ``annotations`` as a QuPath-importable GeoJSON FeatureCollection, atomically.

    ``offset`` (the slide's bounds-x/y) is subtracted, the inverse of :func:`read_geojson`.
    """
    doc = annotations_to_geojson(annotations, offset or (0, 0))
    return atomic_write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")
