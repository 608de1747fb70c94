"""The RAZN dock: the area of every class in the newest RAZN segmentation (mm² and share of the
segmented tissue), and the zoom rate of its tiles."""

from __future__ import annotations

from qtpy.QtWidgets import QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

__all__ = ["AreaTable", "install", "segmentation_layer", "DOCK_NAME"]

DOCK_NAME = "RAZN class areas"
_DOCKS: dict[int, AreaTable] = {}


class AreaTable(QWidget):
    """Class, area (mm²) and share of the non-background area."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("no RAZN result")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "area (mm²)", "share of tissue"])
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.table)

    def set_areas(self, title: str, areas: dict[str, float]) -> None:
        self.title.setText(title)
        names = list(areas)
        tissue = sum(areas[n] for n in names[1:]) or 1.0
        self.table.setRowCount(len(names))
        for i, name in enumerate(names):
            share = "" if i == 0 else f"{100 * areas[name] / tissue:.1f} %"
            for j, text in enumerate((name, f"{areas[name]:.3f}", share)):
                self.table.setItem(i, j, QTableWidgetItem(text))

    def rows(self) -> list[tuple[str, str, str]]:
        return [tuple(self.table.item(i, j).text() for j in range(3)) for i in range(self.table.rowCount())]


def segmentation_layer(viewer):
    """The newest RAZN segmentation layer, or None."""
    for layer in reversed(list(viewer.layers)):
        if (layer.metadata or {}).get("razn_role") == "segmentation":
            return layer
    return None


def install(viewer) -> AreaTable | None:
    """Dock (once per viewer) the class-area table and show the newest RAZN result in it."""
    table = _DOCKS.get(id(viewer))
    if table is None:
        table = AreaTable()
        window = getattr(viewer, "window", None)
        if window is not None:
            window.add_dock_widget(table, name=DOCK_NAME, area="right")
        _DOCKS[id(viewer)] = table
        table.destroyed.connect(lambda *_: _DOCKS.pop(id(viewer), None))
    layer = segmentation_layer(viewer)
    if layer is not None:
        md = layer.metadata
        zr = md.get("zoom_rate")
        table.set_areas(f"{layer.name}" + (f" (zoom rate {zr:.2f})" if zr is not None else ""),
                        dict(md.get("class_area_mm2", {})))
    return table
