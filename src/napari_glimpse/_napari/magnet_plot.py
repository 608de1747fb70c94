"""The MagNet explanation in the dock: running probability against patch order.

:func:`install` (the method's ``napari_hook``) docks one :class:`RunningPlot` per viewer and
points it at the newest MagNet leaves layer. Clicking a point (or pressing the arrow keys on
the plot) centres the viewer on that leaf and selects its box; clicking a leaf box in the
viewer marks its point. The plot reads everything from the leaves layer's features
(``order``, ``running``, ``rise``), so a result loaded from disk works the same way.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["RunningPlot", "install", "leaves_layer", "focus_leaf", "DOCK_NAME"]

DOCK_NAME = "MagNet running probability"
#: id(viewer) -> its plot (napari viewers take no new attributes)
_PLOTS: dict[int, RunningPlot] = {}


def leaves_layer(viewer):
    """The newest layer of MagNet leaves (boxes with a ``running`` feature), or None."""
    for layer in reversed(list(viewer.layers)):
        md = layer.metadata or {}
        feats = getattr(layer, "features", None)
        if md.get("magnet_role") == "boxes" and feats is not None and "running" in feats:
            return layer
    return None


def _box_world(layer, i: int) -> tuple[np.ndarray, np.ndarray]:
    verts = np.asarray(layer.data[i])[:, -2:]
    world = verts * np.asarray(layer.scale)[-2:] + np.asarray(layer.translate)[-2:]
    return world.min(0), world.max(0)  # (row, col) corners


def focus_leaf(viewer, layer, order: int) -> None:
    """Centre the camera on the leaf of GRU position ``order`` and select its box."""
    orders = np.asarray(layer.features["order"]).astype(int)
    hits = np.flatnonzero(orders == int(order))
    if not len(hits):
        return
    i = int(hits[0])
    lo, hi = _box_world(layer, i)
    viewer.camera.center = tuple((lo + hi) / 2)
    layer.selected_data = {i}
    viewer.layers.selection.active = layer


class RunningPlot(QWidget):
    """Probability (0-1) against patch order; the slide threshold dashed; the largest rise ringed.

    Signals
    -------
    picked(int)
        The patch order of a clicked point.
    """

    picked = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.running = np.zeros(0)
        self.prior = None
        self.threshold = None
        self.selected: int | None = None
        self.title = ""
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setFocusPolicy(Qt.ClickFocus)

    def set_curve(self, running, prior=None, threshold=None, title: str = "") -> None:
        self.running = np.asarray(running, float).ravel()
        self.prior, self.threshold, self.title = prior, threshold, title
        self.selected = None
        self.update()

    def _frame(self) -> QRectF:
        return QRectF(34, 18, max(self.width() - 44, 10), max(self.height() - 40, 10))

    def _xy(self, k: int, v: float) -> QPointF:
        box = self._frame()
        n = max(len(self.running) - 1, 1)
        return QPointF(box.left() + k / n * box.width(), box.bottom() - float(v) * box.height())

    def point_at(self, x: float, y: float, radius: float = 12.0) -> int | None:
        """The patch order of the point nearest (x, y) within ``radius`` px (x distance first)."""
        if not len(self.running):
            return None
        pts = np.array([[self._xy(k, v).x(), self._xy(k, v).y()] for k, v in enumerate(self.running)])
        d = np.abs(pts[:, 0] - x)
        k = int(np.argmin(d))
        return k if d[k] <= radius else None

    def mousePressEvent(self, event):  # noqa: N802 (Qt name)
        pos = event.position() if hasattr(event, "position") else event.pos()
        k = self.point_at(pos.x(), pos.y())
        if k is not None:
            self.select(k)

    def keyPressEvent(self, event):  # noqa: N802
        if not len(self.running):
            return
        step = {Qt.Key_Left: -1, Qt.Key_Right: 1}.get(event.key())
        if step is None:
            return super().keyPressEvent(event)
        k = 0 if self.selected is None else int(np.clip(self.selected + step, 0, len(self.running) - 1))
        self.select(k)

    def select(self, k: int) -> None:
        self.selected = int(k)
        self.update()
        self.picked.emit(int(k))

    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        box = self._frame()
        p.setPen(QPen(QColor("#808080"), 1))
        p.drawRect(box)
        for v in (0.0, 0.5, 1.0):
            p.drawText(QRectF(0, box.bottom() - v * box.height() - 7, 30, 14), Qt.AlignRight, f"{v:.1f}")
        p.drawText(QRectF(box.left(), 0, box.width(), 16), Qt.AlignLeft, self.title or "running probability")
        if not len(self.running):
            p.drawText(box, Qt.AlignCenter, "run a MagNet to see its running probability")
            p.end()
            return
        if self.threshold is not None:
            pen = QPen(QColor("#e05080"), 1)
            pen.setStyle(Qt.DashLine)
            p.setPen(pen)
            y = box.bottom() - float(self.threshold) * box.height()
            p.drawLine(QPointF(box.left(), y), QPointF(box.right(), y))
        pts = [self._xy(k, v) for k, v in enumerate(self.running)]
        p.setPen(QPen(QColor("#40b0f0"), 2))
        if len(pts) > 1:
            p.drawPolyline(QPolygonF(pts))
        before = np.concatenate([[self.prior if self.prior is not None else self.running[0]], self.running[:-1]])
        top = int(np.argmax(self.running - before))
        for k, pt in enumerate(pts):
            p.setPen(QPen(QColor("#ffd000" if k == top else "#40b0f0"), 2))
            p.drawEllipse(pt, 5 if k == top else 3, 5 if k == top else 3)
        if self.selected is not None and 0 <= self.selected < len(pts):
            p.setPen(QPen(QColor("#ffffff"), 2))
            p.drawEllipse(pts[self.selected], 8, 8)
            v = self.running[self.selected]
            p.drawText(QRectF(box.left() + 4, box.top() + 2, box.width(), 14), Qt.AlignLeft,
                       f"patch {self.selected + 1}: p = {v:.3f} (rise {v - before[self.selected]:+.3f})")
        p.drawText(QRectF(box.left(), box.bottom() + 2, box.width(), 16), Qt.AlignCenter, "patch order")
        p.end()


def install(viewer) -> RunningPlot | None:
    """Dock (once) the running-probability plot and show the newest MagNet result in it."""
    layer = leaves_layer(viewer)
    plot = _PLOTS.get(id(viewer))
    if plot is None:
        plot = RunningPlot()
        window = getattr(viewer, "window", None)
        if window is not None:  # a viewer model without a window (tests): the plot still works
            window.add_dock_widget(plot, name=DOCK_NAME, area="right")
        plot.picked.connect(lambda k: _on_pick(viewer, k))

        def on_click(viewer_, event):
            leaves = leaves_layer(viewer)
            if event.type != "mouse_press" or leaves is None or not leaves.visible:
                return
            r, c = float(event.position[-2]), float(event.position[-1])
            for i in range(len(leaves.data)):
                lo, hi = _box_world(leaves, i)
                if lo[0] <= r <= hi[0] and lo[1] <= c <= hi[1]:
                    plot.selected = int(leaves.features["order"][i])
                    plot.update()
                    return

        viewer.mouse_drag_callbacks.append(on_click)
        _PLOTS[id(viewer)] = plot
        plot.destroyed.connect(lambda *_: _PLOTS.pop(id(viewer), None))
    if layer is not None:
        feats = layer.features
        md = layer.metadata or {}
        plot.set_curve(np.asarray(feats["running"], float), md.get("prior"), md.get("slide_threshold"),
                       f"{layer.name}: running probability")
    return plot


def _on_pick(viewer, k: int) -> None:
    layer = leaves_layer(viewer)
    if layer is not None:
        focus_leaf(viewer, layer, k)
