"""ASAP XML annotations, the Camelyon16 format.

::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
          <Coordinates>
            <Coordinate Order="0" X="1234.5" Y="678.9" />

Camelyon16 groups "_0" and "_1" are tumour, "_2" marks non-tumour areas inside tumour
(subtracted). ASAP polygons have no holes, so holes are written as "_2" exclusions.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from ..errors import AnnotationError
from ._types import EXCLUSION_COLOR, TUMOR_COLOR, Annotation, atomic_write_text, finish, make_ring

__all__ = ["read_asap", "write_asap"]

_GROUP_TO_LABEL = {
    "_0": "Tumor",
    "_1": "Tumor",
    "tumor": "Tumor",
    "tumour": "Tumor",
    "metastases": "Tumor",
    "_2": "Exclusion",
    "exclusion": "Exclusion",
}
_LABEL_TO_GROUP = {"tumor": "_0", "exclusion": "_2"}
_AREA_TYPES = {"polygon", "spline", "rectangle"}


def read_asap(
    path: str | os.PathLike,
    offset: tuple[float, float] | None = None,
    slide_dims: tuple[int, int] | None = None,
) -> list[Annotation]:
    """Read ASAP / Camelyon16 XML annotations.

    Parameters
    ----------
    path : str or PathLike
        The XML file.
    offset : (float, float) or None
        Added to every coordinate (a slide bounds offset, see :func:`read_geojson`).
    slide_dims : (int, int) or None
        Level-0 (width, height) to check the annotations against.

    Returns
    -------
    list of Annotation
        Polygons, Splines (their control polygon) and Rectangles; groups "_0"/"_1"/"Tumor"
        read as label "Tumor", "_2"/"Exclusion" as "Exclusion", other groups by name.
        Dots and point sets (no area) are skipped.
    """
    path = os.fspath(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise AnnotationError("no such annotation file", path) from None
    except (OSError, ET.ParseError) as exc:
        raise AnnotationError(f"not a readable XML file ({exc})", path) from None
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(
            f"not ASAP XML: root element is <{root.tag}>, expected <ASAP_Annotations>", path
        )
    group_colors = {g.get("Name"): g.get("Color") for g in root.iter("Group")}
    out: list[Annotation] = []
    for i, ann in enumerate(root.iter("Annotation")):
        if (ann.get("Type") or "Polygon").lower() not in _AREA_TYPES:
            continue
        coords = []
        for c in ann.iter("Coordinate"):
            try:
                coords.append(
                    (float(c.get("Order", len(coords))), float(c.get("X")), float(c.get("Y")))
                )
            except (TypeError, ValueError):
                raise AnnotationError(
                    f"annotation {i} ({ann.get('Name')!r}): a Coordinate "
                    "lacks a numeric X, Y or Order",
                    path,
                ) from None
        coords.sort(key=lambda t: t[0])
        ring = make_ring(
            [(x, y) for _, x, y in coords], path, f"annotation {i} ({ann.get('Name')!r})"
        )
        group = ann.get("PartOfGroup") or "None"
        label = _GROUP_TO_LABEL.get(group.lower(), group)
        color = _hex(ann.get("Color") or group_colors.get(group))
        out.append(Annotation(ring, [], label, color, ann.get("Name")))
    return finish(out, path, offset, slide_dims)


def _hex(value: str | None) -> tuple[int, int, int] | None:
    if not value or not value.startswith("#") or len(value) != 7:
        return None
    try:
        return tuple(int(value[k : k + 2], 16) for k in (1, 3, 5))
    except ValueError:
        return None


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}"


def write_asap(
    path: str | os.PathLike,
    annotations: list[Annotation],
    offset: tuple[float, float] | None = None,
) -> str:
    """Write ``annotations`` as Camelyon16-style ASAP XML, atomically.

    "Tumor" is written as group "_0" and "Exclusion" as "_2"; holes become "_2" polygons.
    ``offset`` is subtracted from every coordinate.
    """
    ox, oy = offset or (0, 0)
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    groups: dict[str, tuple | None] = {}
    n = 0

    def add(ring: np.ndarray, group: str, color, name: str | None):
        nonlocal n
        el = ET.SubElement(
            anns,
            "Annotation",
            Name=name or f"Annotation {n}",
            Type="Polygon",
            PartOfGroup=group,
            Color=_color_hex(color),
        )
        cs = ET.SubElement(el, "Coordinates")
        for k, (x, y) in enumerate(ring):
            ET.SubElement(cs, "Coordinate", Order=str(k), X=_fmt(x - ox), Y=_fmt(y - oy))
        groups.setdefault(group, color)
        n += 1

    for a in annotations:
        group = _LABEL_TO_GROUP.get(a.label.lower(), a.label)
        default = EXCLUSION_COLOR if a.is_exclusion else TUMOR_COLOR
        add(a.polygon, group, a.color or default, a.name)
        for h in a.holes:
            add(h, "_2", EXCLUSION_COLOR, None)
    gs = ET.SubElement(root, "AnnotationGroups")
    for g, color in groups.items():
        el = ET.SubElement(gs, "Group", Name=g, PartOfGroup="None", Color=_color_hex(color))
        ET.SubElement(el, "Attributes")
    ET.indent(root, space="\t")
    text = '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
    return atomic_write_text(path, text)


def _color_hex(color) -> str:
    r, g, b = color or TUMOR_COLOR
    return f"#{r:02x}{g:02x}{b:02x}"
