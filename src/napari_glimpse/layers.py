"""Slides, masks, annotations and inference results -> napari layer-data tuples. No Qt.

A layer-data tuple is ``(data, kwargs, layer_type)``: what an npe2 reader returns and what
``viewer._add_layer_from_data(*t)`` adds. Every scale / translate below comes from
:mod:`napari_glimpse.coords`, so all layers of one slide share one world: microns, with
level-0 pixel ``i`` centred at ``i * mpp`` (the slide's level-0 image has ``translate = 0``).

The inverse (:func:`shapes_to_level0`) is used by the GeoJSON writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import coords
from .results import InferenceResult, SlideBoxes, SlideLines, SlideMap, SlidePoints, is_lazy_array

LayerDataTuple = tuple[Any, dict[str, Any], str]

# Metadata keys every layer made here carries, so the writer and the widgets can get back
# to level-0 pixels and to the slide file without guessing.
META_MPP = "mpp"
META_SLIDE = "slide_path"
META_SLIDE_OBJECT = "slide"
META_KIND = "glimpse_kind"


def _mpp_meta(mpp: Sequence[float] | None) -> list[float] | None:
    return None if mpp is None else [float(mpp[0]), float(mpp[1])]


def _napari_has_layer_units() -> bool:
    """Whether napari layers take ``units`` (napari >= 0.6); True when napari is absent,
    since the tuples are then plain data. Reads the version only: importing napari is slow."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(p) for p in version("napari").split(".")[:2])
    except PackageNotFoundError:
        return True
    except ValueError:  # a development version string we cannot read: assume a new napari
        return True
    return (major, minor) >= (0, 6)


def _units(mpp: Sequence[float] | None, ndim: int) -> dict[str, Any]:
    """``{"units": ("um",) * ndim}`` when the layer is in microns.

    napari >= 0.6 takes the scale bar's unit from the layers and warns when they disagree,
    so every layer made here says it is in micrometres (and stays in pixels, the default,
    when the slide has no mpp). Set at construction: napari checks units on insertion.
    """
    if mpp is None or not _napari_has_layer_units():
        return {}
    return {"units": ("um",) * ndim}


def _pad_transform(scale, translate, ndim: int):
    """Leading non-spatial axes (a stack's channel slider) get scale 1, translate 0."""
    extra = ndim - 2
    return (1.0,) * extra + tuple(scale), (0.0,) * extra + tuple(translate)


# ----------------------------------------------------------------------------- slides


def slide_to_layer_data(slide, name: str | None = None) -> LayerDataTuple:
    """A slide as one lazy RGB image layer (multiscale when the file is a pyramid).

    Parameters
    ----------
    slide
        An open :class:`napari_glimpse.slides.Slide`. Its dask levels stay lazy: napari
        reads only the tiles on screen.
    name
        Layer name; the file name by default.

    Returns
    -------
    LayerDataTuple
        ``(levels, kwargs, "image")`` in microns (level-0 pixels when the slide has no mpp).
    """
    import os

    levels = slide.dask_levels()
    scale, translate = coords.level_transform(1.0, slide.mpp)
    metadata = {
        META_KIND: "slide",
        META_SLIDE: str(slide.path),
        META_SLIDE_OBJECT: slide,  # the open slide: runs read it instead of re-opening the file
        META_MPP: _mpp_meta(slide.mpp),
        "mpp_known": slide.mpp is not None,
        "format": slide.format,
        "dimensions": list(slide.dimensions),
        "downsamples": [float(level.downsample) for level in slide.levels],
        "magnification": slide.magnification,
    }
    kwargs = {
        "name": name or os.path.basename(str(slide.path)),
        "rgb": True,
        "multiscale": len(levels) > 1,
        "contrast_limits": (0, 255),
        "scale": scale,
        "translate": translate,
        "metadata": metadata,
        **_units(slide.mpp, len(scale)),
    }
    data = levels if len(levels) > 1 else levels[0]
    return data, kwargs, "image"


# ----------------------------------------------------------------------------- masks


def mask_to_layer_data(
    mask: np.ndarray,
    cell_size: float | Sequence[float],
    mpp: Sequence[float] | None = None,
    origin: Sequence[float] = (0.0, 0.0),
    name: str = "mask",
    opacity: float = 0.5,
    metadata: dict[str, Any] | None = None,
) -> LayerDataTuple:
    """A label / boolean mask over the slide as a napari Labels layer.

    Parameters
    ----------
    mask
        (rows, cols) array; bool or integer labels (0 = background).
    cell_size
        Level-0 pixels per mask pixel, one number or (sx, sy).
    mpp
        The slide's (x, y) um per level-0 pixel (None: level-0 pixels as units).
    origin
        Level-0 (x, y) of the top-left corner of mask pixel (0, 0).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (rows, cols), not shape {mask.shape}")
    data = mask.astype(np.uint8) if mask.dtype == bool else mask
    scale, translate = coords.grid_transform(cell_size, origin, mpp)
    meta = {
        META_KIND: "mask",
        META_MPP: _mpp_meta(mpp),
        "cell_size": cell_size if np.isscalar(cell_size) else list(cell_size),
        "origin": list(origin),
    }
    meta.update(metadata or {})
    kwargs = {
        "name": name,
        "scale": scale,
        "translate": translate,
        "opacity": opacity,
        "metadata": meta,
        **_units(mpp, len(scale)),
    }
    return data, kwargs, "labels"


# ----------------------------------------------------------------------------- annotations


def annotations_to_shapes_data(
    polygons: Iterable[np.ndarray],
    mpp: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    shape_types: Sequence[str] | None = None,
    name: str = "annotations",
    metadata: dict[str, Any] | None = None,
) -> LayerDataTuple:
    """Annotation outlines in level-0 (x, y) pixels as one napari Shapes layer in microns.

    Parameters
    ----------
    polygons
        One (N, 2) array of level-0 (x, y) vertices per annotation.
    mpp
        The slide's (x, y) um per level-0 pixel, None for level-0 pixels as units.
    names, classes
        Optional per-annotation name and class, kept as shape features (``name``,
        ``classification``) so that the GeoJSON writer can give them back.
    shape_types
        napari shape type per annotation ("polygon", "path", "rectangle", ...); "polygon"
        by default.
    """
    verts = [coords.points_to_world(np.asarray(p, dtype=float), mpp) for p in polygons]
    n = len(verts)
    types = list(shape_types) if shape_types is not None else ["polygon"] * n
    features = {
        "name": np.asarray(list(names) if names is not None else [""] * n, dtype=object),
        "classification": np.asarray(
            list(classes) if classes is not None else [""] * n, dtype=object
        ),
    }
    edge_um = 2.0 * min(coords.effective_mpp(mpp))
    meta = {META_KIND: "annotations", META_MPP: _mpp_meta(mpp)}
    meta.update(metadata or {})
    kwargs = {
        "name": name,
        "ndim": 2,
        "shape_type": types,
        "features": features,
        "edge_color": "lime",
        "face_color": "transparent",
        "edge_width": edge_um,
        "metadata": meta,
        **_units(mpp, 2),
    }
    return verts, kwargs, "shapes"


def layer_mpp(metadata: dict[str, Any] | None, scale: Sequence[float]) -> tuple[float, float]:
    """The (x, y) um/px to use for a layer: its ``mpp`` metadata, else its own scale.

    A Shapes layer drawn by hand in napari has no metadata, but napari gives a new layer the
    step of the layers already open, i.e. the slide's mpp; so its scale is the best guess.
    """
    mpp = (metadata or {}).get(META_MPP)
    if mpp is not None:
        return float(mpp[0]), float(mpp[1])
    return float(scale[-1]), float(scale[-2])


def shapes_to_level0(
    data: Sequence[np.ndarray],
    scale: Sequence[float],
    translate: Sequence[float],
    mpp: Sequence[float],
) -> list[np.ndarray]:
    """Shapes layer vertices (data coordinates) -> level-0 (x, y) pixel vertices.

    World = data * scale + translate (napari's layer transform, no rotation / shear);
    level-0 = :func:`coords.world_to_points` of the world coordinates.
    """
    scale = np.asarray(scale, dtype=float)[-2:]
    translate = np.asarray(translate, dtype=float)[-2:]
    out = []
    for v in data:
        world = np.asarray(v, dtype=float)[:, -2:] * scale + translate
        out.append(coords.world_to_points(world, mpp))
    return out


# ----------------------------------------------------------------------------- results


def map_to_layer_data(m: SlideMap, mpp: Sequence[float] | None = None) -> LayerDataTuple:
    """A :class:`SlideMap` as an image (heatmap, or a (C, rows, cols) stack) or labels layer
    (a zarr / dask label map of a whole slide stays lazy)."""
    lazy = m.kind == "labels" and is_lazy_array(m.data)
    data = m.data if lazy else np.asarray(m.data)
    scale, translate = coords.grid_transform(m.cell_size, m.origin, mpp)
    scale, translate = _pad_transform(scale, translate, data.ndim)
    meta = {
        META_KIND: "map",
        META_MPP: _mpp_meta(mpp),
        "cell_size": m.cell_size if np.isscalar(m.cell_size) else list(m.cell_size),
        "origin": list(m.origin),
    }
    meta.update(m.metadata)
    kwargs: dict[str, Any] = {
        "name": m.name,
        "scale": scale,
        "translate": translate,
        "opacity": m.opacity,
        "metadata": meta,
        "visible": bool(m.visible),
        **_units(mpp, len(scale)),
    }
    if m.kind == "labels":
        colours = m.metadata.get("class_colours")
        if colours:
            from napari.utils.colormaps import (
                DirectLabelColormap,  # napari: a dependency of the package
            )

            kwargs["colormap"] = DirectLabelColormap(color_dict={None: "transparent",
                                                                 **dict(enumerate(colours))})
        return (data if lazy else data.astype(np.int32, copy=False)), kwargs, "labels"
    kwargs["colormap"] = _fading_colormap(m.colormap) if data.ndim == 2 else m.colormap
    kwargs["blending"] = "translucent"
    if m.contrast_limits is not None:
        kwargs["contrast_limits"] = tuple(float(c) for c in m.contrast_limits)
    elif data.size:
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        kwargs["contrast_limits"] = (lo, hi if hi > lo else lo + 1.0)
    return data, kwargs, "image"


def _fading_colormap(name: str):
    """``name`` with its low end transparent, so a heatmap over a slide hides only where it is high.

    A plain colormap paints "nothing here" (0) in its darkest colour over the whole slide,
    which hides the tissue under a dark veil. Falls back to the name when napari's colormaps
    cannot be had (this module must work without a viewer).
    """
    try:
        from napari.utils.colormaps import Colormap, ensure_colormap
    except ImportError:
        return name
    try:
        base = ensure_colormap(name)
    except (KeyError, ValueError, TypeError):
        return name
    n = 64
    ramp = np.linspace(0.0, 1.0, n)
    colors = base.map(ramp).copy()
    # alpha 0 at the bottom, opaque from a third of the range up
    colors[:, 3] = np.clip(ramp * 3.0, 0.0, 1.0)
    return Colormap(colors, controls=ramp, name=f"{base.name} (fading)")


def _features(properties: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: np.asarray(v).reshape(n, *np.shape(v)[1:]) for k, v in properties.items()}


def points_to_layer_data(p: SlidePoints, mpp: Sequence[float] | None = None) -> LayerDataTuple:
    """:class:`SlidePoints` (level-0 x, y) as a Points layer in microns."""
    world = coords.points_to_world(p.xy, mpp)
    # Rings, not discs: a peak marks where to look, it must not hide what is there.
    kwargs = {
        "name": p.name,
        "ndim": 2,
        "size": float(p.size_px) * min(coords.effective_mpp(mpp)),
        "face_color": "transparent",
        "border_color": p.face_color,
        "border_width": 0.12,
        "border_width_is_relative": True,
        "features": _features(p.properties, len(world)),
        "metadata": {META_KIND: "points", META_MPP: _mpp_meta(mpp), **p.metadata},
        **_units(mpp, 2),
    }
    if p.color_by and p.color_by in p.properties and len(world):
        kwargs.update(border_color=p.color_by, border_colormap="inferno", border_contrast_limits=(0.0, 1.0))
    return world, kwargs, "points"


def boxes_to_layer_data(b: SlideBoxes, mpp: Sequence[float] | None = None) -> LayerDataTuple:
    """:class:`SlideBoxes` (level-0 x0, y0, x1, y1) as a Shapes layer of rectangles."""
    rects = coords.boxes_to_world(b.boxes, mpp)
    kwargs: dict[str, Any] = {
        "name": b.name,
        "ndim": 2,
        "shape_type": "rectangle",
        "edge_color": b.edge_color,
        "face_color": "transparent",
        "edge_width": float(b.edge_width_px) * min(coords.effective_mpp(mpp)),
        "features": _features(b.properties, len(rects)),
        "metadata": {META_KIND: "boxes", META_MPP: _mpp_meta(mpp), **b.metadata},
        **_units(mpp, 2),
    }
    if b.text and b.text in b.properties:
        kwargs["text"] = {"string": "{" + b.text + ":.2f}", "color": "white", "size": 10}
    return rects, kwargs, "shapes"


def lines_to_layer_data(seg: SlideLines, mpp: Sequence[float] | None = None) -> LayerDataTuple:
    """:class:`SlideLines` segments (N, 2, 2) level-0 (x, y) as a Shapes layer of lines."""
    segments = np.asarray(seg.segments, dtype=float).reshape(-1, 2, 2)
    lines = [coords.points_to_world(s, mpp) for s in segments]
    kwargs = {
        "name": seg.name,
        "ndim": 2,
        "shape_type": "line",
        "edge_color": seg.edge_color,
        "edge_width": float(seg.edge_width_px) * min(coords.effective_mpp(mpp)),
        "features": _features(seg.properties, len(lines)),
        "metadata": {META_KIND: "lines", META_MPP: _mpp_meta(mpp), **seg.metadata},
        **_units(mpp, 2),
    }
    return lines, kwargs, "shapes"


def result_to_layers(
    result: InferenceResult, mpp: Sequence[float] | None = None
) -> list[LayerDataTuple]:
    """Every map, line, box and point set of an inference result as napari layer data.

    Parameters
    ----------
    result
        What a method returned (level-0 coordinates).
    mpp
        Override of ``result.mpp`` (the slide's um/px); give the slide layer's mpp so that the
        result lands on the slide as it is shown.

    Returns
    -------
    list of LayerDataTuple
        Maps first (bottom), then lines, boxes and points (top), so outlines stay visible.
    """
    mpp = mpp if mpp is not None else result.mpp
    out = [map_to_layer_data(m, mpp) for m in result.maps]
    out += [lines_to_layer_data(s, mpp) for s in result.lines]
    out += [boxes_to_layer_data(b, mpp) for b in result.boxes]
    out += [points_to_layer_data(p, mpp) for p in result.points]
    for _, kwargs, _ in out:
        kwargs["metadata"].setdefault("method", result.method)
        kwargs["metadata"].setdefault(META_SLIDE, result.slide_path)
    return out
