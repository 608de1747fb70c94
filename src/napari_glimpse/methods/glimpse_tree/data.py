"""Training / evaluation folders: slides with annotations (GeoJSON, ASAP XML, masks) or labels.csv.

A folder holds slide files plus, per slide ``<stem>``, optionally ``<stem>.geojson`` /
``<stem>.json`` / ``<stem>.xml`` (tumour polygons) or ``<stem>.mask.tif`` / ``<stem>.mask.png``
(a label mask, non-zero = tumour), and optionally one ``labels.csv`` with columns
``slide,label`` (slide = stem or file name, label 0/1).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DatasetError

__all__ = ["SlideItem", "find_slides", "read_labels", "tumour_mask", "SLIDE_SUFFIXES"]

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide")
_ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")
_MASK_SUFFIXES = (".mask.tif", ".mask.tiff", ".mask.png", "_mask.tif", "_mask.png")


@dataclass
class SlideItem:
    """One slide of a folder with its label and its annotation file (if any)."""

    path: str
    stem: str
    label: int | None
    annotation: str | None  # polygons (GeoJSON / XML) or a mask image


def _stem(name: str) -> str:
    low = name.lower()
    for suf in (".ome.tiff", ".ome.tif"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return os.path.splitext(name)[0]


def read_labels(path: str | os.PathLike) -> dict[str, int]:
    """``labels.csv`` -> {slide stem: 0/1}."""
    path = Path(path)
    out = {}
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise DatasetError(f"cannot read labels ({exc.strerror})", path) from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["slide", "label"]:
        raise DatasetError("labels.csv must start with the header 'slide,label'", path)
    for i, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        try:
            label = int(row[1])
        except (IndexError, ValueError):
            raise DatasetError(f"line {i}: label must be 0 or 1, got {row[1:2]}", path) from None
        if label not in (0, 1):
            raise DatasetError(f"line {i}: label must be 0 or 1, got {label}", path)
        out[_stem(os.path.basename(row[0].strip()))] = label
    return out


def find_slides(folder: str | os.PathLike, need: str = "any") -> list[SlideItem]:
    """Slides of ``folder`` with labels and annotations.

    Parameters
    ----------
    need
        ``"labels"``: every slide needs a label (labels.csv, or derived from its annotation);
        ``"annotations"``: every slide needs pixel annotations, except slides labelled 0
        (negative slides need none); ``"any"``: whatever is there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError("no such folder", folder)
    names = sorted(os.listdir(folder))
    lower = {n.lower(): n for n in names}
    labels = read_labels(folder / lower["labels.csv"]) if "labels.csv" in lower else {}
    items = []
    for name in names:
        low = name.lower()
        if not low.endswith(SLIDE_SUFFIXES) or any(low.endswith(s) for s in _MASK_SUFFIXES) or ".mask." in low:
            continue
        stem = _stem(name)
        annotation = None
        for suf in _MASK_SUFFIXES + _ANNOTATION_SUFFIXES:
            cand = lower.get((stem + suf).lower())
            if cand and cand != name and not cand.lower().endswith(".cells.json"):
                annotation = str(folder / cand)
                break
        items.append(SlideItem(str(folder / name), stem, labels.get(stem), annotation))
    if not items:
        raise DatasetError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) in the folder", folder)
    missing = [i.stem for i in items if i.stem not in labels]
    if labels and missing and need == "labels":
        raise DatasetError(f"labels.csv has no label for {missing[:5]}", folder)
    if need == "labels" and not labels:
        raise DatasetError("no labels.csv (columns slide,label) in the folder", folder)
    if need == "annotations":
        bad = [i.stem for i in items if i.annotation is None and i.label != 0]
        if bad:
            raise DatasetError(f"supervised training needs tumour annotations (<stem>.geojson, .xml or "
                               f".mask.tif) or label 0 in labels.csv; missing for {bad[:5]}", folder)
    return items


def tumour_mask(item: SlideItem, slide_dims: tuple[int, int], downsample: float = 8.0):
    """(mask bool (rows, cols), level-0 px per mask px) of the slide's annotated tumour."""
    from ...annotations import polygons_to_mask, read_annotations, read_label_mask

    if item.annotation is None:
        shape = (int(np.ceil(slide_dims[1] / downsample)), int(np.ceil(slide_dims[0] / downsample)))
        return np.zeros(shape, bool), float(downsample)
    low = item.annotation.lower()
    if low.endswith((".tif", ".tiff", ".png")):
        lm = read_label_mask(item.annotation, slide_dims, max_pixels=max(2**20, int(np.prod(slide_dims) / 64)))
        return np.asarray(lm.mask) > 0, float(lm.downsample)
    anns = read_annotations(item.annotation, slide_dims=slide_dims)
    return polygons_to_mask(anns, slide_dims, downsample), float(downsample)


def mask_fraction(mask: np.ndarray, mask_ds: float, box) -> float:
    """Fraction of a level-0 box covered by the mask (outside the mask counts as 0)."""
    x0, y0, x1, y1 = (v / mask_ds for v in box)
    c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    c1, r1 = min(mask.shape[1], int(np.ceil(x1))), min(mask.shape[0], int(np.ceil(y1)))
    if c1 <= c0 or r1 <= r0:
        return 0.0
    return float(mask[r0:r1, c0:c1].sum()) / max((x1 - x0) * (y1 - y0), 1e-9)
