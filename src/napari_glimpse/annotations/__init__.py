"""Annotations: QuPath GeoJSON, ASAP / Camelyon16 XML and label masks, in level-0 pixels.

Every reader returns a list of :class:`Annotation`; :func:`read_annotations` picks the
format from the file, and :func:`polygons_to_mask` / :func:`mask_to_polygons` convert
between polygons and masks at any pyramid level.
"""

from __future__ import annotations

import os

from ..errors import AnnotationError
from ._types import EXCLUSION_LABELS, Annotation, check_in_slide
from .asap import read_asap, write_asap
from .geojson import annotations_to_geojson, read_geojson, write_geojson
from .masks import (
    LabelMask,
    mask_downsample,
    mask_to_polygons,
    polygons_to_mask,
    read_label_mask,
    tumour_pixels,
)

__all__ = [
    "Annotation",
    "AnnotationError",
    "EXCLUSION_LABELS",
    "LabelMask",
    "annotations_to_geojson",
    "check_in_slide",
    "mask_downsample",
    "mask_to_polygons",
    "polygons_to_mask",
    "read_annotations",
    "read_asap",
    "read_geojson",
    "read_label_mask",
    "tumour_pixels",
    "write_annotations",
    "write_asap",
    "write_geojson",
]

_MASK_SUFFIXES = (".tif", ".tiff", ".png")


def read_annotations(
    path: str | os.PathLike,
    slide_dims: tuple[int, int] | None = None,
    offset: tuple[float, float] | None = None,
) -> list[Annotation]:
    """Read annotations of any supported kind, chosen by the file's suffix.

    ``.geojson``/``.json`` -> :func:`read_geojson`, ``.xml`` -> :func:`read_asap`,
    ``.tif``/``.tiff``/``.png`` -> a label mask traced into polygons (needs ``slide_dims``
    to place it; each non-zero value becomes a region).
    """
    path = os.fspath(path)
    low = path.lower()
    if low.endswith((".geojson", ".json")):
        return read_geojson(path, offset=offset, slide_dims=slide_dims)
    if low.endswith(".xml"):
        return read_asap(path, offset=offset, slide_dims=slide_dims)
    if low.endswith(_MASK_SUFFIXES):
        lm = read_label_mask(path, slide_dims)
        anns = mask_to_polygons(lm.mask, lm.downsample)
        if offset is not None and tuple(offset) != (0, 0):
            anns = [a.translated(*offset) for a in anns]
        return anns
    raise AnnotationError(
        "unknown annotation format: expected .geojson, .json, .xml "
        "(ASAP), or a .tif/.png label mask",
        path,
    )


def write_annotations(
    path: str | os.PathLike,
    annotations: list[Annotation],
    offset: tuple[float, float] | None = None,
) -> str:
    """Write annotations as GeoJSON (``.geojson``/``.json``) or ASAP XML (``.xml``)."""
    low = os.fspath(path).lower()
    if low.endswith((".geojson", ".json")):
        return write_geojson(path, annotations, offset)
    if low.endswith(".xml"):
        return write_asap(path, annotations, offset)
    raise AnnotationError("can write annotations only as .geojson/.json or .xml", path)
