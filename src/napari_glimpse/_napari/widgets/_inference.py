"""Dock widget "Run model": a registered method over a slide layer, the whole slide, the
current view or a drawn rectangle; results come back as layers that a re-run replaces."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton

from ... import coords
from ...calls import call_text
from ...layers import META_SLIDE, META_SLIDE_OBJECT, result_to_layers, shapes_to_level0
from . import _methods
from ._common import (
    DEVICES,
    RecentCheckpoints,
    WorkerControls,
    layers_of_type,
    notify_error,
    replace_layers,
    slide_layers,
    slide_mpp,
    start_generator,
)
from ._form import ConfigForm

WHOLE, VIEW, RECTANGLE = "whole slide", "current view", "rectangle (Shapes layer)"
DEFAULT = "<default>"  # checkpoint choice: the method's bundled checkpoint

Box = tuple[int, int, int, int]


def view_box(corner_pixels: np.ndarray, downsample: float | Sequence[float],
             dimensions: Sequence[int]) -> Box:
    """The slide layer's on-screen corner pixels -> level-0 box (x0, y0, x1, y1), clipped.

    ``corner_pixels`` is napari's (2, ndim) [top-left, bottom-right] in (row, col) of the
    level being drawn (``downsample`` level-0 px per level px); both corners are included.
    """
    (r0, c0), (r1, c1) = np.asarray(corner_pixels, dtype=float)[:, -2:]
    ds = np.broadcast_to(np.asarray(downsample, dtype=float), (2,))[-2:]
    w, h = dimensions
    x0, y0 = max(0, math.floor(c0 * ds[-1])), max(0, math.floor(r0 * ds[-2]))
    x1, y1 = min(w, math.ceil((c1 + 1) * ds[-1])), min(h, math.ceil((r1 + 1) * ds[-2]))
    return int(x0), int(y0), int(x1), int(y1)


def shapes_box(vertices: Sequence[np.ndarray], scale, translate, mpp,
               dimensions: Sequence[int]) -> Box:
    """Bounding level-0 box (x0, y0, x1, y1) of Shapes vertices, clipped to the slide."""
    pts = np.concatenate(shapes_to_level0(vertices, scale, translate, coords.effective_mpp(mpp)))
    w, h = dimensions
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    return max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1))


class InferenceWidget(WorkerControls, Container):
    """Run a model on a slide layer; progress, cancel, and result layers in the viewer."""

    def __init__(self, napari_viewer=None, recent: RecentCheckpoints | None = None,
                 models: _methods.ModelCache | None = None):
        super().__init__(labels=True)
        self.models = models or _methods.ModelCache()
        self.viewer = viewer = napari_viewer
        self.recent = recent or RecentCheckpoints.for_file()
        self.worker = None
        self._picked: list[str] = []  # checkpoint files chosen with the file box

        self.slide = ComboBox(label="slide", choices=self._slide_choices,
                              tooltip="an image layer showing a slide opened by napari-glimpse")
        self.method = ComboBox(label="method", choices=_methods.method_names())
        self.checkpoint = ComboBox(label="checkpoint", choices=self._checkpoint_choices,
                                   tooltip="bundled, recently trained, or a file")
        self.checkpoint_file = FileEdit(label="checkpoint file", mode="r",
                                        filter="*.safetensors *.pt *.pth")
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.region = ComboBox(label="region", choices=[WHOLE, VIEW, RECTANGLE], value=WHOLE)
        self.shapes = ComboBox(label="rectangle layer", choices=self._shapes_choices,
                               visible=False)
        self.params = ConfigForm(label="parameters", labels=True)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self.extend([self.slide, self.method, self.checkpoint, self.checkpoint_file, self.device,
                     self.region, self.shapes, self.params, self.run_button, self.cancel_button,
                     self.progress, self.status])

        self.method.changed.connect(self._on_method)
        self.region.changed.connect(lambda v: setattr(self.shapes, "visible", v == RECTANGLE))
        self.checkpoint_file.changed.connect(self._on_file_picked)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.recent.changed.connect(self.checkpoint.reset_choices)
        self.checkpoint.changed.connect(self._on_checkpoint)
        # A closed dock (or viewer) must not leave a model running in the background.
        self.native.destroyed.connect(self._quit_quietly)
        if viewer is not None:
            # napari resets a dock widget's choices when layers change; a docked widget does
            # too, but a widget made in code and not docked would not see new slides.
            viewer.layers.events.inserted.connect(self.reset_choices)
            viewer.layers.events.removed.connect(self.reset_choices)
        self._on_method(self.method.value)

    # ------------------------------------------------------------------ choices

    def _slide_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in slide_layers(self.viewer)]

    def _shapes_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in layers_of_type(self.viewer, "Shapes")]

    def _checkpoint_choices(self, _widget=None) -> list[tuple[str, str]]:
        method = self.method.value if hasattr(self, "method") else None
        out: list[tuple[str, str]] = []
        if method:
            for i, (key, path) in enumerate(_methods.shipped_checkpoints(_methods.get_spec(method))):
                out.append((f"bundled: {key}", DEFAULT if i == 0 else path))
        seen = set()
        for path in self._picked + [e["path"] for e in self.recent.entries(method)]:
            if path not in seen:
                seen.add(path)
                out.append((_short(path), path))
        return out

    def _on_method(self, name) -> None:
        spec = _methods.get_spec(name) if name else None
        cls, include = _methods.inference_fields(spec) if spec else (None, None)
        self.params.set_config(cls, include)
        self.checkpoint.reset_choices()
        if spec is not None and not self.checkpoint.choices:
            self.status.value = "no checkpoint yet: train one or choose a file"
        self._on_checkpoint(self.checkpoint.value)

    def _on_checkpoint(self, value) -> None:
        """Show the chosen checkpoint's own settings (e.g. CELM a, b and threshold chosen on
        validation data) in the parameter fields of the same names."""
        from ...errors import GlimpseError
        from ...runtime.checkpoint import read_header

        if not value or not self.method.value:
            return
        path = _methods.get_spec(self.method.value).default_checkpoint() if value == DEFAULT else value
        if not path:
            return
        try:
            config = read_header(path)["config"]  # the header only: no weights on the GUI thread
        except GlimpseError as exc:
            self.status.value = f"checkpoint: {exc}"  # Run reports it as an error
            return
        self.params.set_values(config)

    def _on_file_picked(self, path) -> None:
        path = str(path)
        if not os.path.isfile(path):
            return
        path = os.path.abspath(path)
        if path not in self._picked:
            self._picked.insert(0, path)
        self.checkpoint.reset_choices()
        self.checkpoint.value = path
        self.status.value = ""

    # ------------------------------------------------------------------- region

    def region_box(self, layer) -> Box | None:
        """The level-0 box to process for the chosen region mode (None: whole slide)."""
        dims = layer.metadata.get("dimensions") or layer.data[0].shape[1::-1]
        if self.region.value == VIEW:
            level = getattr(layer, "data_level", 0) if layer.multiscale else 0
            ds = layer.downsample_factors[level] if layer.multiscale else 1.0
            if not np.any(layer.corner_pixels[1]):
                raise ValueError("the slide has not been drawn yet: no current view")
            return view_box(layer.corner_pixels, ds, dims)
        if self.region.value == RECTANGLE:
            shapes = self.shapes.value
            if shapes is None or not len(shapes.data):
                raise ValueError("draw a rectangle in a Shapes layer and choose that layer")
            chosen = sorted(shapes.selected_data) or [len(shapes.data) - 1]
            box = shapes_box([shapes.data[i] for i in chosen], shapes.scale, shapes.translate,
                             slide_mpp(layer), dims)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"the rectangle {box} does not overlap the slide")
            return box
        return None

    # ---------------------------------------------------------------------- run

    def run(self, _=None):
        """Start inference in a worker thread; returns the worker (None when inputs are bad)."""
        if self.worker is not None:
            return self.worker
        layer = self.slide.value
        try:
            if layer is None:
                raise ValueError("choose a slide layer (open a slide with napari-glimpse)")
            if not self.method.value:
                raise ValueError("no method is registered")
            spec = _methods.get_spec(self.method.value)
            region = self.region_box(layer)
            params = self.params.values()
        except (ValueError, LookupError) as exc:
            notify_error(exc)
            return None
        checkpoint = self.checkpoint.value
        checkpoint = None if checkpoint in (None, DEFAULT) else checkpoint
        device = None if self.device.value == "auto" else self.device.value
        slide_path = layer.metadata[META_SLIDE]
        opened = layer.metadata.get(META_SLIDE_OBJECT)
        slide = opened if opened is not None and not getattr(opened, "_closed", False) else slide_path
        mpp = slide_mpp(layer)
        run_key = f"{spec.name}:{slide_path}"

        def make():
            # in the worker: a first run loads the model, later runs reuse it
            model = self.models.get(spec, checkpoint, device)
            return (yield from _methods.infer_generator(spec, slide, model, region=region, params=params))

        def on_result(result):
            replace_layers(self.viewer, result_to_layers(result, mpp=mpp), run_key,
                           method=spec.name)
            if checkpoint is not None:  # a file that worked is worth offering next time
                self.recent.add(checkpoint, spec.name)
            s = result.summary or {}
            self.status.value = f"done: {call_text(s)}{s.get('seconds', 0):.1f} s"

        self._set_running(True, f"{spec.name} on {layer.name}")
        self.worker = start_generator(make, on_progress=self._on_progress, on_result=on_result,
                                      on_error=self._on_error, on_finished=self._on_finished,
                                      on_aborted=lambda: setattr(self.status, "value", "cancelled"))
        return self.worker

    def _on_progress(self, ev) -> None:
        self.progress.max = max(1, int(ev.total))
        self.progress.value = min(int(ev.done), self.progress.max)
        self.status.value = f"{ev.stage} {ev.done}/{ev.total} {ev.message}".strip()
        if self._pbar is not None:
            self._pbar.total = max(1, int(ev.total))
            self._pbar.n = int(ev.done)
            self._pbar.refresh()

    def _set_running(self, running: bool, what: str = "") -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if running:
            from napari.utils import progress

            self.progress.value = 0
            self.status.value = f"starting {what}"
            self._pbar = progress(total=0, desc=what)
        elif getattr(self, "_pbar", None) is not None:
            self._pbar.close()
            self._pbar = None

    _pbar = None


def _short(path: str, keep: int = 2) -> str:
    parts = os.path.normpath(path).split(os.sep)
    return os.sep.join(parts[-keep:]) if len(parts) > keep else path
