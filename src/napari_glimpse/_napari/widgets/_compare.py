"""Dock widget "Compare": several methods on one slide layer (whole slide or current view),
in the background with progress and cancel; one table; each method's layers shown or hidden
together; the HTML report saved on request."""

from __future__ import annotations

import contextlib
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, Select

from ...calls import call_text
from ...errors import GlimpseError
from ...layers import META_SLIDE, META_SLIDE_OBJECT, result_to_layers
from . import _methods
from ._common import (
    DEVICES,
    META_RUN,
    WorkerControls,
    notify_error,
    replace_layers,
    slide_layers,
    slide_mpp,
    start_generator,
)
from ._inference import VIEW, WHOLE, view_box

#: The table's columns (and the row key each shows).
TABLE_COLUMNS = ("show", "method", "score", "call", "seconds", "patches", "pixels", "device", "agrees")


def _run_key(method: str, slide_path: str) -> str:
    return f"compare:{method}:{slide_path}"


class CompareWidget(WorkerControls, Container):
    """Run several methods on a slide and compare them in one table."""

    def __init__(self, napari_viewer=None, models: _methods.ModelCache | None = None):
        from qtpy.QtWidgets import QTableWidget

        super().__init__(labels=True)
        from ...compare import default_methods

        self.viewer = viewer = napari_viewer
        self.models = models or _methods.ModelCache()
        self.worker = None
        self.comparison = None
        self._was_visible: dict[str, dict[int, bool]] = {}
        self.slide = ComboBox(label="slide", choices=self._slide_choices)
        names = _methods.method_names()
        self.methods = Select(label="methods", choices=names,
                              value=[m for m in default_methods() if m in names])
        self.region = ComboBox(label="region", choices=[WHOLE, VIEW], value=WHOLE)
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.run_button = PushButton(text="Compare")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self.report_dir = FileEdit(label="report folder", mode="d")
        self.report_button = PushButton(text="Save report", enabled=False)
        self.extend([self.slide, self.methods, self.region, self.device, self.run_button,
                     self.cancel_button, self.progress, self.status, self.report_dir, self.report_button])
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table.setMinimumHeight(160)
        self.native.layout().addWidget(self.table)
        self.table.itemChanged.connect(self._on_item)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.report_button.changed.connect(self.save_report)
        self.native.destroyed.connect(self._quit_quietly)
        if viewer is not None:
            viewer.layers.events.inserted.connect(self.reset_choices)
            viewer.layers.events.removed.connect(self.reset_choices)

    def _slide_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in slide_layers(self.viewer)]

    # ------------------------------------------------------------------------ run

    def run(self, _=None):
        """Start the comparison in a worker thread; returns the worker (None on bad input)."""
        if self.worker is not None:
            return self.worker
        layer = self.slide.value
        try:
            if layer is None:
                raise ValueError("choose a slide layer (open a slide with napari-glimpse)")
            methods = list(self.methods.value)
            if not methods:
                raise ValueError("choose at least one method")
            region = None
            if self.region.value == VIEW:
                level = getattr(layer, "data_level", 0) if layer.multiscale else 0
                ds = layer.downsample_factors[level] if layer.multiscale else 1.0
                dims = layer.metadata.get("dimensions") or layer.data[0].shape[1::-1]
                region = view_box(layer.corner_pixels, ds, dims)
        except (ValueError, LookupError) as exc:
            notify_error(exc)
            return None
        device = None if self.device.value == "auto" else self.device.value
        slide_path = layer.metadata[META_SLIDE]
        opened = layer.metadata.get(META_SLIDE_OBJECT)
        slide = opened if opened is not None and not getattr(opened, "_closed", False) else slide_path
        mpp = slide_mpp(layer)

        def make():
            from ...compare import compare

            models = {}
            for name in methods:  # loaded (once, cached) in the worker, not on the GUI thread
                spec = _methods.get_spec(name)
                with contextlib.suppress(GlimpseError):  # no shipped weights: compare() records it
                    models[name] = self.models.get(spec, None, device)
            return (yield from compare(slide, methods, region, device, models=models))

        def on_result(comp):
            self.comparison = comp
            self._was_visible.clear()
            for name, result in comp.results.items():
                replace_layers(self.viewer, result_to_layers(result, mpp=mpp), _run_key(name, slide_path),
                               method=name)
            self._fill_table(comp)
            failed = "; ".join(f"{m}: {e}" for m, e in comp.errors.items())
            self.status.value = f"{len(comp.results)} compared" + (f"; failed: {failed}" if failed else "")
            self.report_button.enabled = bool(comp.results)

        self._set_running(True)
        self.worker = start_generator(make, on_progress=self._on_progress, on_result=on_result,
                                      on_error=self._on_error, on_finished=self._on_finished,
                                      on_aborted=lambda: setattr(self.status, "value", "cancelled"))
        return self.worker

    def _on_progress(self, ev) -> None:
        self.progress.max = max(1, int(ev.total))
        self.progress.value = min(int(ev.done), self.progress.max)
        self.status.value = f"{ev.stage} {ev.done}/{ev.total} {ev.message}".strip()

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if running:
            self.progress.value = 0
            self.status.value = "starting"

    # ---------------------------------------------------------------------- table

    def rows(self) -> list[dict]:
        return [] if self.comparison is None else self.comparison.rows()

    def _fill_table(self, comp) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QTableWidgetItem

        rows = comp.rows()
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            show = QTableWidgetItem()
            show.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
            show.setCheckState(Qt.CheckState.Checked)
            show.setData(Qt.ItemDataRole.UserRole, r["method"])
            self.table.setItem(i, 0, show)
            agrees = ", ".join(f"{o} {v:.2f}" for o, v in r["agreement"].items() if v is not None)
            values = [r["method"], f"{r['slide_score']:.3f}" if r["slide_score"] is not None else "-",
                      call_text({"slide_score": r["slide_score"], "slide_call": r["slide_call"],
                                 "threshold": r["threshold"]}).rstrip(", ").split(" (")[0] or "-",
                      f"{r['seconds']:.1f}", str(r["patches_read"]), str(r["pixels_read"]),
                      str(r["device"]), agrees or "-"]
            for j, v in enumerate(values, start=1):
                item = QTableWidgetItem(v)
                item.setFlags(Qt.ItemFlag.ItemIsEnabled)
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        self.table.blockSignals(False)

    def _on_item(self, item) -> None:
        from qtpy.QtCore import Qt

        if item.column() != 0 or self.comparison is None:
            return
        self.show_method(item.data(Qt.ItemDataRole.UserRole), item.checkState() == Qt.CheckState.Checked)

    def method_layers(self, method: str) -> list:
        """The viewer's layers of ``method`` from this comparison."""
        if self.viewer is None or self.comparison is None:
            return []
        key = _run_key(method, self.comparison.slide)
        return [lyr for lyr in self.viewer.layers if (lyr.metadata or {}).get(META_RUN) == key]

    def show_method(self, method: str, visible: bool) -> None:
        """Hide all of ``method``'s layers together, or show them again as they were (a layer
        the method adds hidden, e.g. an attention stack, stays hidden)."""
        layers = self.method_layers(method)
        if not visible:
            self._was_visible[method] = {id(lyr): lyr.visible for lyr in layers}
            for lyr in layers:
                lyr.visible = False
        else:
            was = self._was_visible.pop(method, {})
            for lyr in layers:
                lyr.visible = was.get(id(lyr), True)

    def save_report(self, _=None):
        """Write the report (``report.html``, result folders, thumbnails) to the chosen folder."""
        from ...compare import save_comparison

        if self.comparison is None:
            return None
        try:
            path = save_comparison(self.comparison, self.report_dir.value)
        except (OSError, ValueError) as exc:
            notify_error(exc)
            return None
        self.status.value = f"report: {path}"
        return path
