"""npe2 writer: Shapes layers -> QuPath-style GeoJSON in level-0 slide pixels.

Each shape's vertices go from the layer's data coordinates to napari world (the layer's
scale / translate), then to level-0 pixels with :func:`napari_glimpse.coords.world_to_points`
using the layer's ``mpp`` metadata (set by this plugin's readers), or the layer's own scale
for a layer drawn by hand (napari gives a new layer the step of the open slide).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from ..layers import layer_mpp, shapes_to_level0


def _feature(xy: np.ndarray, shape_type: str, props: dict[str, Any]) -> dict:
    pts = [[float(x), float(y)] for x, y in xy]
    if shape_type in ("path", "line"):
        geometry = {"type": "LineString", "coordinates": pts}
    else:
        if shape_type == "ellipse":
            pts = _ellipse_outline(np.asarray(xy))
        geometry = {"type": "Polygon", "coordinates": [pts + [pts[0]]]}
    properties: dict[str, Any] = {"objectType": "annotation"}
    name = props.get("name")
    if name:
        properties["name"] = str(name)
    cls = props.get("classification")
    if cls:
        properties["classification"] = {"name": str(cls)}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _ellipse_outline(corners: np.ndarray, n: int = 64) -> list[list[float]]:
    """napari stores an ellipse as its 4 bounding-box corners; GeoJSON needs an outline."""
    centre = corners.mean(axis=0)
    u = (corners[1] - corners[0]) / 2
    v = (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = centre + np.outer(np.cos(t), u) + np.outer(np.sin(t), v)
    return pts.tolist()


def shapes_to_geojson(data, attributes: dict[str, Any]) -> dict:
    """A Shapes layer's data + attributes -> a GeoJSON FeatureCollection (level-0 pixels)."""
    ndim = len(attributes.get("scale", (1.0, 1.0)))
    scale = attributes.get("scale", (1.0,) * ndim)
    translate = attributes.get("translate", (0.0,) * ndim)
    mpp = layer_mpp(attributes.get("metadata"), scale)
    types = attributes.get("shape_type", ["polygon"] * len(data))
    if isinstance(types, str):
        types = [types] * len(data)
    features_table = attributes.get("features")
    rows: list[dict[str, Any]] = [{} for _ in data]
    if features_table is not None and len(features_table):
        rows = [dict(r) for r in _records(features_table)]
    polys = shapes_to_level0(data, scale, translate, mpp)
    feats = [_feature(xy, t, r) for xy, t, r in zip(polys, types, rows, strict=True)]
    return {"type": "FeatureCollection", "features": feats}


def _records(table) -> list[dict]:
    if hasattr(table, "to_dict"):
        return table.to_dict("records")
    keys = list(table)
    n = len(table[keys[0]]) if keys else 0
    return [{k: table[k][i] for k in keys} for i in range(n)]


def write_shapes_geojson(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 multi-layer writer: every Shapes layer into one GeoJSON file (atomically)."""
    features: list[dict] = []
    for data, attributes, layer_type in layer_data:
        if layer_type != "shapes":
            continue
        collection = shapes_to_geojson(data, attributes)
        for f in collection["features"]:
            f["properties"].setdefault("layer", attributes.get("name", ""))
        features += collection["features"]
    if not path.lower().endswith(".geojson"):
        path = path + ".geojson"
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".glimpse-", suffix=".geojson", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"type": "FeatureCollection", "features": features}, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return [path]
