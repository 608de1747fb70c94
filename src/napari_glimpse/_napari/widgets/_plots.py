"""A tiny live line plot (QPainter): training loss and validation curves, no plotting library."""

from __future__ import annotations

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

COLOURS = ("#f0a030", "#40b0f0", "#60d060", "#e05080", "#c0c0c0")


class CurvePlot(QWidget):
    """Named series of (x, y) points, each scaled to its own [min, max] so that a loss near
    0.7 and an AUC near 0.9 share one small panel; the legend prints each series' last value.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def add_point(self, name: str, x: float, y: float) -> None:
        self.series.setdefault(name, []).append((float(x), float(y)))
        self.update()

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        legend_h = 14 * max(1, len(self.series))
        box = QRectF(4, 4, self.width() - 8, self.height() - 12 - legend_h)
        p.setPen(QPen(QColor("#808080"), 1))
        p.drawRect(box)
        xs = [x for pts in self.series.values() for x, _ in pts]
        if xs:
            x0, x1 = min(xs), max(xs)
            for k, (name, pts) in enumerate(self.series.items()):
                colour = QColor(COLOURS[k % len(COLOURS)])
                ys = [y for _, y in pts]
                y0, y1 = min(ys), max(ys)
                poly = QPolygonF([
                    QPointF(box.left() + (x - x0) / ((x1 - x0) or 1) * box.width(),
                            box.bottom() - (y - y0) / ((y1 - y0) or 1) * box.height())
                    for x, y in pts
                ])
                p.setPen(QPen(colour, 2))
                if len(pts) > 1:
                    p.drawPolyline(poly)
                else:
                    p.drawEllipse(poly[0], 2, 2)
                p.drawText(QRectF(6, box.bottom() + 4 + 14 * k, box.width(), 14),
                           Qt.AlignLeft, f"{name}: {pts[-1][1]:.3f}  [{y0:.3f}, {y1:.3f}]")
        else:
            p.drawText(box, Qt.AlignCenter, "curves appear once training starts")
        p.end()
