"""Between polygons and label masks: rasterise at any pyramid level, trace back to polygons.

Rasterising samples pixel centres (a mask pixel (i, j) at downsample ``d`` is inside when
the level-0 point ((j + 0.5) d, (i + 0.5) d) is), so a polygon on cell edges gives exactly
the cells, and tracing those cells gives back the polygon: the round trip is exact for
axis-aligned cell masks.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import AnnotationError
from ._types import TUMOR_COLOR, Annotation, _signed_area

__all__ = [
    "polygons_to_mask",
    "mask_to_polygons",
    "read_label_mask",
    "tumour_pixels",
    "read_class_names",
    "LabelMask",
    "mask_downsample",
]


def mask_shape(slide_dims: tuple[int, int], downsample: float) -> tuple[int, int]:
    """(rows, cols) of a mask of a (w, h) slide at ``downsample`` (rounded up)."""
    w, h = slide_dims
    return max(1, math.ceil(h / downsample - 1e-9)), max(1, math.ceil(w / downsample - 1e-9))


def _fill_rings(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of closed rings (mask-pixel coordinates) sampled at pixel centres.

    Not ``skimage.draw.polygon``: it also fills pixels whose centre lies on an edge, so two
    polygons sharing an edge would both claim those pixels; the half-open rule here gives
    each pixel to one of them.
    """
    rows, cols = shape
    out = np.zeros(shape, bool)
    p0 = np.concatenate(rings)
    p1 = np.concatenate([np.roll(r, -1, axis=0) for r in rings])
    keep = p0[:, 1] != p1[:, 1]  # horizontal edges cross no centre row
    p0, p1 = p0[keep], p1[keep]
    if len(p0) == 0:
        return out
    ylo = np.minimum(p0[:, 1], p1[:, 1])
    yhi = np.maximum(p0[:, 1], p1[:, 1])
    # rows whose centre y = i + 0.5 lies in [ylo, yhi): half-open so shared vertices count once
    i0 = np.clip(np.ceil(ylo - 0.5), 0, rows).astype(np.int64)
    i1 = np.clip(np.ceil(yhi - 0.5), 0, rows).astype(np.int64)
    n = i1 - i0
    if n.sum() == 0:
        return out
    edge = np.repeat(np.arange(len(p0)), n)
    row = np.repeat(i0, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    yc = row + 0.5
    a, b = p0[edge], p1[edge]
    x = a[:, 0] + (yc - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    order = np.lexsort((x, row))
    row, x = row[order], x[order]
    # closed rings cross every row an even number of times: consecutive pairs are spans
    r, xs, xe = row[0::2], x[0::2], x[1::2]
    cs = np.clip(np.ceil(xs - 0.5), 0, cols).astype(np.int64)
    ce = np.clip(np.ceil(xe - 0.5), 0, cols).astype(np.int64)
    diff = np.zeros((rows, cols + 1), np.int32)
    np.add.at(diff, (r, cs), 1)
    np.add.at(diff, (r, ce), -1)
    return np.cumsum(diff[:, :cols], axis=1) > 0


def polygons_to_mask(
    annotations: list[Annotation],
    slide_dims: tuple[int, int],
    downsample: float = 1.0,
    labels: dict[str, int] | None = None,
    max_pixels: int = 2**30,
) -> np.ndarray:
    """Rasterise annotations at a pyramid level.

    Parameters
    ----------
    annotations : list of Annotation
        Level-0 polygons; holes are cut out, exclusion annotations ("Exclusion", "_2")
        are subtracted from everything else.
    slide_dims : (int, int)
        Level-0 (width, height).
    downsample : float
        Level-0 pixels per mask pixel; the mask is ``ceil(h / d) x ceil(w / d)``.
    labels : dict or None
        None: a bool mask of every non-exclusion annotation. A dict label -> value gives a
        uint8 label image (annotations with other labels are ignored; later ones win).
    max_pixels : int
        Refuse masks larger than this (a level-0 mask of a whole slide rarely fits).

    Returns
    -------
    ndarray
        (rows, cols) bool, or uint8 when ``labels`` is given.
    """
    shape = mask_shape(slide_dims, downsample)
    if shape[0] * shape[1] > max_pixels:
        raise ValueError(
            f"a {shape[1]} x {shape[0]} mask exceeds max_pixels={max_pixels}; "
            "rasterise at a larger downsample"
        )
    out = np.zeros(shape, np.uint8 if labels is not None else bool)
    exclusions = np.zeros(shape, bool)
    for a in annotations:
        rings = [a.polygon / downsample] + [h / downsample for h in a.holes]
        x0, y0 = np.floor(np.min([r.min(axis=0) for r in rings], axis=0)).astype(int)
        x1, y1 = np.ceil(np.max([r.max(axis=0) for r in rings], axis=0)).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, shape[1]), min(y1, shape[0])
        if x1 <= x0 or y1 <= y0:
            continue
        # fill only the annotation's bounding box
        local = _fill_rings([r - (x0, y0) for r in rings], (y1 - y0, x1 - x0))
        if a.is_exclusion:
            exclusions[y0:y1, x0:x1] |= local
        elif labels is None:
            out[y0:y1, x0:x1] |= local
        elif a.label in labels:
            out[y0:y1, x0:x1][local] = labels[a.label]
    out[exclusions] = 0
    return out


_TURN_RANK = {1: 0, 0: 1, 3: 2, 2: 3}  # right turn, straight, left turn, U-turn


def _trace(mask: np.ndarray) -> list[np.ndarray]:
    """Boundary rings of a bool mask, in pixel-corner coordinates.

    Each foreground pixel edge facing background is a directed edge with the foreground on
    its right (outer rings clockwise on screen, holes counter-clockwise). At a vertex where
    two regions touch only diagonally the walk turns right, keeping them apart
    (4-connectivity). Only corners are kept.
    """
    p = np.pad(mask, 1)
    fg = p[1:-1, 1:-1]
    # direction codes: 0 = +x, 1 = +y, 2 = -x, 3 = -y; start vertex (x, y) per edge
    starts = []
    for d, (nb, dx, dy) in enumerate(
        [
            (p[:-2, 1:-1], 0, 0),  # top edge, walked +x from the top-left corner
            (p[1:-1, 2:], 1, 0),  # right edge, walked +y from the top-right corner
            (p[2:, 1:-1], 1, 1),  # bottom edge, walked -x from the bottom-right corner
            (p[1:-1, :-2], 0, 1),  # left edge, walked -y from the bottom-left corner
        ]
    ):
        ys, xs = np.nonzero(fg & ~nb)
        starts.append((xs + dx, ys + dy, np.full(len(xs), d)))
    if not any(len(s[0]) for s in starts):
        return []
    sx = np.concatenate([s[0] for s in starts]).tolist()
    sy = np.concatenate([s[1] for s in starts]).tolist()
    sd = np.concatenate([s[2] for s in starts]).tolist()
    step = ((1, 0), (0, 1), (-1, 0), (0, -1))
    out_edges: dict[tuple[int, int], list[int]] = {}
    for k, v in enumerate(zip(sx, sy, strict=True)):
        out_edges.setdefault(v, []).append(k)
    used = [False] * len(sx)
    rings = []
    for k0 in range(len(sx)):
        if used[k0]:
            continue
        corners = []
        k = k0
        while True:
            used[k] = True
            d = sd[k]
            x, y = sx[k] + step[d][0], sy[k] + step[d][1]
            # the next edge is fixed by the turn rule alone (right, then straight, then
            # left), so every edge has one successor and rings are exact cycles
            k_next = min(out_edges[(x, y)], key=lambda e: _TURN_RANK[(sd[e] - d) % 4])
            if sd[k_next] != d:
                corners.append((x, y))
            if k_next == k0:
                break
            k = k_next
        rings.append(np.array(corners, np.float64))
    return rings


def mask_to_polygons(
    mask: np.ndarray,
    downsample: float = 1.0,
    labels: dict[int, str] | None = None,
    color: tuple[int, int, int] | None = TUMOR_COLOR,
) -> list[Annotation]:
    """Trace the regions of a mask into level-0 polygons with holes.

    Parameters
    ----------
    mask : ndarray
        (rows, cols) bool or integer label mask.
    downsample : float
        Level-0 pixels per mask pixel.
    labels : dict or None
        Label value -> class name. By default every non-zero value of a binary mask is
        "Tumor", and other values are named by their number.
    color : (int, int, int) or None
        Colour given to every annotation.

    Returns
    -------
    list of Annotation
        One per 4-connected region, outer ring clockwise on screen, holes inside.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    values = [v for v in np.unique(mask).tolist() if v]
    out: list[Annotation] = []
    for v in values:
        if labels is not None:
            if v not in labels:
                continue
            name = labels[v]
        else:
            name = "Tumor" if len(values) == 1 else str(v)
        fg = mask == v
        rings = _trace(fg)
        # each ring's first edge has a pixel of its region on its right: the 4-connected
        # component of that pixel tells which outer ring a hole belongs to
        comp, _ = ndimage.label(fg)
        owner = {}
        polys = []
        for r in rings:
            sx, sy = np.sign(r[1] - r[0])
            px, py = r[0] + 0.5 * np.array([sx, sy]) - 0.5 * np.array([sy, -sx])
            c = comp[int(py), int(px)]
            if _signed_area(r) > 0:
                owner[c] = len(polys)
                polys.append((r, []))
        for r in rings:
            if _signed_area(r) < 0:
                sx, sy = np.sign(r[1] - r[0])
                px, py = r[0] + 0.5 * np.array([sx, sy]) - 0.5 * np.array([sy, -sx])
                polys[owner[comp[int(py), int(px)]]][1].append(r)
        for outer, holes in polys:
            out.append(Annotation(outer * downsample, [h * downsample for h in holes], name, color))
    return out


@dataclass
class LabelMask:
    """A label mask image and its size ratio to the slide."""

    mask: np.ndarray
    downsample: float
    path: str


#: words that name a tumour class in a ``classes.txt`` (lower case, matched inside the name)
TUMOUR_WORDS = ("tumour", "tumor", "cancer", "metasta", "carcinoma", "malignant")


def read_class_names(folder: str | os.PathLike) -> list[str] | None:
    """The class names of the label masks in ``folder``: its ``classes.txt`` (line i names
    value i, blank lines skipped), or None without one."""
    names = Path(folder) / "classes.txt"
    if not names.is_file():
        return None
    return [line.strip() for line in names.read_text(encoding="utf-8").splitlines() if line.strip()]


def tumour_pixels(lm: LabelMask) -> np.ndarray:
    """Where a label mask marks tumour: its tumour class(es) when a ``classes.txt`` names the
    classes (a segmentation mask: glass, normal tissue, tumour, ...), else every non-zero pixel.

    Raises AnnotationError when ``classes.txt`` names no tumour class.
    """
    names = read_class_names(Path(lm.path).parent)
    if names is None:
        return np.asarray(lm.mask) > 0
    values = [i for i, n in enumerate(names) if any(w in n.lower() for w in TUMOUR_WORDS)]
    if not values:
        raise AnnotationError(f"classes.txt names no tumour class ({', '.join(names)}); name one 'tumour'",
                              str(Path(lm.path).with_name("classes.txt")))
    return np.isin(np.asarray(lm.mask), values)


def mask_downsample(mask_dims: tuple[int, int], slide_dims: tuple[int, int], path=None) -> float:
    """Infer level-0 pixels per mask pixel from the (w, h) of a mask and its slide.

    A whole-number ratio is preferred when the mask size is the slide size divided by it
    and rounded either way (pyramid levels round); otherwise the ratio of widths, which
    must agree with the ratio of heights within 2 %.
    """
    mw, mh = mask_dims
    sw, sh = slide_dims
    k = max(1, round(sw / mw))
    ok = {math.floor(sw / k), math.ceil(sw / k)}, {math.floor(sh / k), math.ceil(sh / k)}
    if mw in ok[0] and mh in ok[1]:
        return float(k)
    dx, dy = sw / mw, sh / mh
    if abs(dx - dy) / max(dx, dy) > 0.02:
        raise AnnotationError(
            f"the {mw} x {mh} mask does not have the shape of the {sw} x {sh} slide "
            f"(ratios {dx:.3f} across, {dy:.3f} down): is it the mask of another slide?",
            path,
        )
    return dx


def read_label_mask(
    path: str | os.PathLike,
    slide_dims: tuple[int, int] | None = None,
    max_pixels: int = 2**26,
) -> LabelMask:
    """Read a label mask image (TIFF, possibly pyramidal, or PNG) at a level that fits.

    Parameters
    ----------
    path : str or PathLike
        Mask image; RGB masks use their first channel.
    slide_dims : (int, int) or None
        Level-0 (width, height) of the slide; the downsample is inferred from the sizes.
        Without it the mask is taken as level 0 (downsample 1).
    max_pixels : int
        The finest pyramid level with at most this many pixels is read (a level-0 mask of
        a whole slide is never read whole).

    Returns
    -------
    LabelMask
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AnnotationError("no such mask file", path)
    arr = _read_mask_level(path, max_pixels)
    if arr.ndim == 3:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise AnnotationError(f"a mask must be a 2-D image, got shape {arr.shape}", path)
    ds = (
        1.0
        if slide_dims is None
        else mask_downsample((arr.shape[1], arr.shape[0]), slide_dims, path)
    )
    return LabelMask(arr, ds, path)


def _read_mask_level(path: str, max_pixels: int) -> np.ndarray:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] in (b"II", b"MM"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                levels = list(series.levels) or [series]
                if len(levels) == 1 and len(tf.pages) > 1:
                    # pyramid stored as plain pages
                    levels = [p for p in tf.pages if p.shape[:2] <= levels[0].shape[:2]]
                fits = [lv for lv in levels if lv.shape[0] * lv.shape[1] <= max_pixels]
                if not fits:
                    raise AnnotationError(
                        f"every level of the mask has more than {max_pixels} pixels; "
                        "store a pyramid or a downsampled mask",
                        path,
                    )
                return np.asarray(fits[0].asarray())
        except AnnotationError:
            raise
        except (tifffile.TiffFileError, ValueError, OSError) as exc:
            raise AnnotationError(f"not a readable TIFF mask ({exc})", path) from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise AnnotationError(
                    f"the {im.width} x {im.height} mask has more than {max_pixels} pixels", path
                )
            if im.mode not in ("L", "1", "P", "I", "I;16", "RGB", "RGBA"):
                im = im.convert("L")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise AnnotationError(f"not a readable mask image ({exc})", path) from None
