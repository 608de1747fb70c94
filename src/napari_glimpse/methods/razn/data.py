"""Annotated images for RAZN: class discovery, label maps, and fields read at every zoom scale.

A folder holds slides or plain images with ``<stem>.mask.png|tif`` label images (values are
class indices; a mask of only 0 and 255 is binary) or polygons
(:func:`napari_glimpse.runtime.data.find_annotated`). Class names come from a ``classes.txt``
in the folder (one name per line, line k = value k), else they are the values. A field is
``tile_px * mpp`` um wide; zoom level i reads it at ``mpp / r**i`` (``tile_px * r**i`` px).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...annotations.masks import read_class_names
from ...errors import DatasetError
from ...runtime.data import AnnotatedImage, find_annotated
from ...runtime.regions import read_region_at

__all__ = ["AnnotatedSource", "open_sources", "find_classes", "discover", "read_field", "label_crop", "field_px",
           "level0_mpp", "tissue_tiles"]


def level0_mpp(slide, item: AnnotatedImage | None, finest_mpp: float, image_mpp: float | None = None) -> float:
    """um/px of the image's level 0: ``image_mpp`` if given, the file's own, else the finest scale."""
    if image_mpp is not None:
        return float(image_mpp)
    if item is not None and item.mpp is not None and not item.mpp_assumed:
        return float(item.mpp)
    if slide.mpp is not None:
        return float(np.mean(slide.mpp))
    return float(finest_mpp)


def field_px(config, mpp0: float) -> float:
    """The level-0 px edge of one x0 field."""
    return config.tile_px * config.mpp / mpp0


def _mask_values(item: AnnotatedImage, dims) -> set[int]:
    lab, _ = item.label_mask(dims, downsample=max(1.0, max(dims) / 1024))
    return set(np.unique(lab).tolist())


def find_classes(folder, items: list[AnnotatedImage], dims: list) -> tuple[tuple[str, ...], bool]:
    """(class names, whether the masks are binary 0 / 255) of the annotated images."""
    values: set[int] = set()
    for item, d in zip(items, dims, strict=True):
        values |= _mask_values(item, d)
    binary = values <= {0, 255} and 255 in values
    n = 2 if binary else max(max(values, default=1) + 1, 2)
    names = read_class_names(folder)
    if names is not None:
        if len(names) < n:
            raise DatasetError(f"classes.txt names {len(names)} classes, the masks hold values up to {n - 1}",
                               Path(folder) / "classes.txt")
        return tuple(names), binary
    return tuple(["background", "foreground"] if binary else [str(v) for v in range(n)]), binary


def discover(folder, image_mpp: float | None = None) -> tuple[list[AnnotatedImage], tuple[str, ...], bool]:
    """The annotated images of ``folder`` (:func:`find_annotated`), their class names and
    whether their masks are binary 0 / 255: one listing, one low-resolution read per mask."""
    from ...slides import open_slide

    items = find_annotated(folder, mpp=image_mpp)
    dims = []
    for it in items:
        with open_slide(it.path) as s:
            dims.append(s.dimensions)
    classes, binary = find_classes(folder, items, dims)
    return items, classes, binary


@dataclass
class AnnotatedSource:
    """One open annotated image: its slide, level-0 um/px, labels at the finest scale."""

    item: AnnotatedImage
    slide: object
    mpp0: float
    labels: np.ndarray  # class indices at the finest scale
    label_ds: float  # level-0 px per label px
    foreground: np.ndarray  # (K, 2) label-px (row, col) of classes other than 0, subsampled

    def close(self):
        self.slide.close()


def open_sources(items: list[AnnotatedImage], config, *, image_mpp: float | None = None, binary: bool = False,
                 n_classes: int | None = None) -> list[AnnotatedSource]:
    """The annotated images (of :func:`discover`), opened, with their labels at the finest scale.

    Raises
    ------
    DatasetError
        No images, or label values the model has no class for.
    """
    finest = config.mpp / config.zoom_rate ** config.zoom_levels
    out = []
    try:
        for item in items:
            slide = item.open()
            mpp0 = level0_mpp(slide, item, finest, image_mpp)
            ds = finest / mpp0
            labels, ds = item.label_mask(slide.dimensions, downsample=max(ds, 1e-6))
            if binary:
                labels = (labels > 0).astype(np.uint8)
            if n_classes is not None and labels.size and int(labels.max()) >= n_classes:
                raise DatasetError(f"label value {int(labels.max())}, but the model has {n_classes} classes",
                                   item.annotation or item.path)
            fg = np.argwhere(labels > 0)
            if len(fg) > 20000:
                fg = fg[np.random.default_rng(0).choice(len(fg), 20000, replace=False)]
            out.append(AnnotatedSource(item, slide, mpp0, labels, float(ds), fg))
    except BaseException:
        for s in out:
            s.close()
        raise
    if not out:
        raise DatasetError("no annotated images")
    return out


def read_field(source: AnnotatedSource, config, x0: float, y0: float, with_labels: bool = True):
    """The field with level-0 corner (x0, y0) at every zoom scale: images [(T r^i)^2 x 3 uint8]
    and, with labels, label crops of the same sizes (nearest, from the finest labels)."""
    r, m, t = config.zoom_rate, config.zoom_levels, config.tile_px
    fpx = field_px(config, source.mpp0)
    fine = label_crop(source, x0, y0, t * r ** m) if with_labels else None
    images, labels = [], []
    for i in range(m + 1):
        n = t * r ** i
        img, _ = read_region_at(source.slide, x0, y0, n, n, fpx / n)
        images.append(img)
        if with_labels:
            step = r ** (m - i)
            labels.append(fine[step // 2 :: step, step // 2 :: step] if step > 1 else fine)
    return images, labels


def label_crop(source: AnnotatedSource, x0: float, y0: float, n: int) -> np.ndarray:
    lab, ds = source.labels, source.label_ds
    c0, r0 = int(round(x0 / ds)), int(round(y0 / ds))
    out = np.zeros((n, n), np.uint8)
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + n, lab.shape[0]), min(c0 + n, lab.shape[1])
    if re > rs and ce > cs:
        out[rs - r0 : re - r0, cs - c0 : ce - c0] = lab[rs:re, cs:ce]
    return out


def tissue_tiles(slide, fpx: float) -> np.ndarray:
    """Level-0 corners (N, 2) of the x0 fields over tissue, on a grid from (0, 0)."""
    from ...slides.tissue import tissue_mask

    tm = tissue_mask(slide, "otsu", max_size=2048)
    w0, h0 = slide.dimensions
    cols, rows = int(np.ceil(w0 / fpx)), int(np.ceil(h0 / fpx))
    keep = [(c * fpx, r * fpx) for r in range(rows) for c in range(cols)
            if tm.fraction(c * fpx, r * fpx, min((c + 1) * fpx, w0), min((r + 1) * fpx, h0)) > 0.0]
    return np.array(keep, np.float64).reshape(-1, 2)


