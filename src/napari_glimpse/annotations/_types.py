"""The in-memory annotation type shared by every format, and checks common to all readers."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from ..errors import AnnotationError

# Labels whose area is removed from the tumour area (Camelyon16's "_2" group and the names
# people give it in QuPath / ASAP).
EXCLUSION_LABELS = frozenset({"exclusion", "_2", "ignore", "ignore*"})
TUMOR_COLOR = (200, 0, 0)
EXCLUSION_COLOR = (0, 160, 0)


@dataclass
class Annotation:
    """One polygon region in level-0 pixel coordinates.

    Attributes
    ----------
    polygon : ndarray
        (N, 2) float64 x, y vertices of the outer ring (not repeated at the end), level-0
        pixels, origin at the top-left pixel's corner.
    holes : list of ndarray
        Inner rings, each (M, 2) like ``polygon``.
    label : str
        The class, e.g. "Tumor" or "Exclusion" (Camelyon16 groups "_0"/"_1" read as
        "Tumor", "_2" as "Exclusion").
    color : (int, int, int) or None
        Display colour (RGB 0-255).
    name : str or None
        The annotation's own name, when the file gives one.
    """

    polygon: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    label: str = "Tumor"
    color: tuple[int, int, int] | None = None
    name: str | None = None

    def __post_init__(self):
        self.polygon = _as_ring(self.polygon)
        self.holes = [_as_ring(h) for h in self.holes]
        if self.color is not None:
            self.color = tuple(int(v) for v in self.color)

    @property
    def is_exclusion(self) -> bool:
        """Whether this region is cut out of the others (Camelyon16 exclusion semantics)."""
        return self.label.lower() in EXCLUSION_LABELS

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the outer ring in level-0 pixels."""
        x0, y0 = self.polygon.min(axis=0)
        x1, y1 = self.polygon.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        """Area in level-0 pixels squared, holes subtracted."""
        return abs(_signed_area(self.polygon)) - sum(abs(_signed_area(h)) for h in self.holes)

    def translated(self, dx: float, dy: float) -> Annotation:
        """A copy moved by (dx, dy) level-0 pixels."""
        d = np.array([dx, dy], float)
        return Annotation(
            self.polygon + d, [h + d for h in self.holes], self.label, self.color, self.name
        )


def _as_ring(points) -> np.ndarray:
    ring = np.asarray(points, dtype=np.float64)
    if ring.ndim != 2 or ring.shape[1] != 2:
        raise ValueError(f"a polygon ring must be (N, 2) x, y points, got shape {ring.shape}")
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 3:
        raise ValueError(f"a polygon ring needs at least 3 points, got {len(ring)}")
    if not np.isfinite(ring).all():
        raise ValueError("a polygon ring has non-finite coordinates")
    return ring


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def make_ring(points, path, where: str) -> np.ndarray:
    """Validate a ring read from ``path``; bad rings raise AnnotationError naming ``where``."""
    try:
        return _as_ring(points)
    except (ValueError, TypeError) as exc:
        raise AnnotationError(f"{where}: {exc}", path) from None


def finish(annotations: list[Annotation], path, offset, slide_dims) -> list[Annotation]:
    """Apply the slide-bounds offset and check the annotations fall on the slide.

    ``offset`` is added on read: QuPath exports coordinates relative to
    ``openslide.bounds-x/y`` on MRXS and some NDPI slides (qupath/qupath#820).
    """
    if offset is not None and tuple(offset) != (0, 0):
        annotations = [a.translated(*offset) for a in annotations]
    if slide_dims is not None:
        check_in_slide(annotations, slide_dims, path)
    return annotations


def check_in_slide(annotations: list[Annotation], slide_dims, path=None) -> None:
    """Raise AnnotationError if any annotation lies entirely outside a (w, h) slide."""
    w, h = slide_dims
    outside = [
        a for a in annotations if (b := a.bounds)[2] <= 0 or b[3] <= 0 or b[0] >= w or b[1] >= h
    ]
    if outside:
        x0 = min(a.bounds[0] for a in outside)
        y0 = min(a.bounds[1] for a in outside)
        x1 = max(a.bounds[2] for a in outside)
        y1 = max(a.bounds[3] for a in outside)
        raise AnnotationError(
            f"{len(outside)} of {len(annotations)} annotations lie entirely outside the "
            f"{w} x {h} px slide (they span x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f}); "
            "they look like they are in other coordinates: another pyramid level, or "
            "shifted by the slide's bounds offset (openslide.bounds-x/y, pass offset=)",
            path,
        )


def atomic_write_text(path, text: str) -> str:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _umask = os.umask(0)
        os.umask(_umask)
        os.chmod(tmp, 0o666 & ~_umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
