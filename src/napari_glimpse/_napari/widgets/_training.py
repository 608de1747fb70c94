"""Dock widget "Train model": train (or resume) a registered method with live curves; the
checkpoint it writes joins the recent-checkpoints list the "Run model" widget offers.

The data fields come from the method's declared training inputs (patch folders, slide
annotations, a labels CSV, ...) and its own options from its config dataclass, so a new
method brings its panel with it.
"""

from __future__ import annotations

import os
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from . import _methods
from ._common import DEVICES, RecentCheckpoints, WorkerControls, notify_error, start_generator
from ._form import ConfigForm, _float_step
from ._plots import CurvePlot

# Progress metrics drawn as curves, each against its own count of reports: "loss" is the
# running training loss per batch, the others come once per epoch ("train_bce": the main
# output's BCE, comparable with "val_loss" when the objective adds companion losses).
CURVES = ("loss", "train_loss", "train_bce", "val_loss", "val_accuracy", "val_auc")
_FILE_MODES = {"patch_folder": "d", "folder": "d", "annotations": "d", "csv": "r", "file": "r"}
_FILE_FILTERS = {"csv": "*.csv"}


def data_widget(item: _methods.DataInput) -> FileEdit:
    """A file or folder box for one declared training input."""
    mode = _FILE_MODES.get(item.kind, "r")
    return FileEdit(name=item.name, label=item.label, mode=mode, tooltip=item.help or None,
                    filter=_FILE_FILTERS.get(item.kind))


def _is_set(path) -> bool:
    return bool(path) and str(path) not in ("", ".")


class TrainingWidget(WorkerControls, Container):
    """Train a model: data, epochs, learning rate, batch size, device, output, start from, resume."""

    def __init__(self, napari_viewer=None, recent: RecentCheckpoints | None = None):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.recent = recent or RecentCheckpoints.for_file()
        self.worker = None
        self.last_checkpoint: str | None = None

        names = [n for n in _methods.method_names() if getattr(_methods.get_spec(n), "train", None)]
        self.method = ComboBox(label="method", choices=names)
        self.data = Container(label="data", labels=True)
        self.epochs = SpinBox(label="epochs", min=1, max=10000, value=10)
        self.learning_rate = FloatSpinBox(label="learning rate", min=1e-7, max=10.0, value=1e-4,
                                          step=1e-5)
        self.batch_size = SpinBox(label="batch size", min=1, max=4096, value=64)
        self.method_options = ConfigForm(label="options", labels=True)
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.output = FileEdit(label="output checkpoint", mode="w", filter="*.safetensors",
                               tooltip="where the checkpoint is written (weights + JSON config)")
        self.init = FileEdit(label="start from", mode="r", filter="*.safetensors",
                             tooltip="optional: fine-tune from this checkpoint's weights (same method and "
                                     "architecture) with a fresh optimizer; leave empty to train from scratch")
        self.resume = CheckBox(label="resume", value=False,
                               tooltip="continue from the output checkpoint's saved state")
        self.start_button = PushButton(text="Start")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.resume_button = PushButton(text="Resume")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self.curves = CurvePlot()
        self.extend([self.method, self.data, self.epochs, self.learning_rate, self.batch_size,
                     self.method_options, self.device, self.output, self.init, self.resume, self.start_button,
                     self.cancel_button, self.resume_button, self.progress, self.status])
        self.native.layout().addWidget(self.curves)
        # A closed dock (or viewer) must not leave training running in the background.
        self.native.destroyed.connect(self._quit_quietly)

        self.method.changed.connect(self._on_method)
        self.start_button.changed.connect(lambda _=None: self.start())
        self.resume_button.changed.connect(lambda _=None: self.start(resume=True))
        self.cancel_button.changed.connect(self.cancel)
        self._on_method(self.method.value)

    def _on_method(self, name) -> None:
        """Rebuild the data fields and options for the method; take its default numbers."""
        self.data.clear()
        spec = _methods.get_spec(name) if name else None
        if spec is None:
            self.method_options.set_config(None)
            return
        for item in _methods.training_inputs(spec):
            self.data.append(data_widget(item))
        self.method_options.set_config(*_methods.training_form_source(spec))
        self.epochs.value = int(_methods.config_default(spec, "epochs", self.epochs.value))
        self.batch_size.value = int(_methods.config_default(spec, "batch_size", self.batch_size.value))
        lr = float(_methods.config_default(spec, "lr", self.learning_rate.value))
        self.learning_rate.step = _float_step(lr)
        self.learning_rate.value = lr

    def data_values(self) -> dict[str, str | None]:
        return {w.name: (str(w.value) if _is_set(w.value) else None) for w in self.data}

    def start(self, resume: bool | None = None):
        """Start (or resume) training in a worker thread; returns the worker or None."""
        if self.worker is not None:
            return self.worker
        resume = self.resume.value if resume is None else resume
        try:
            if not self.method.value:
                raise ValueError("no trainable method is registered")
            spec = _methods.get_spec(self.method.value)
            data = self.data_values()
            missing = [i.label for i in _methods.training_inputs(spec)
                       if i.required and not data.get(i.name)]
            if missing:
                raise ValueError(f"choose the {', '.join(missing)}")
            if not _is_set(self.output.value):
                raise ValueError("choose where to write the output checkpoint")
            out = os.path.abspath(str(self.output.value))
            init = os.path.abspath(str(self.init.value)) if _is_set(self.init.value) else None
            if init is not None and not os.path.isfile(init):
                raise ValueError(f"{init}: the 'start from' checkpoint does not exist")
            config = self._config(spec)
        except (ValueError, TypeError, LookupError) as exc:
            notify_error(exc)
            return None
        device = None if self.device.value == "auto" else self.device.value
        kwargs: dict[str, Any] = dict(
            data, config=config, out=out, device=device, resume=resume,
            epochs=self.epochs.value, lr=self.learning_rate.value,
            batch_size=self.batch_size.value,
        )
        if init is not None:
            kwargs["init"] = init

        def make():
            return _methods.train_generator(spec, **kwargs)

        def on_result(path):
            path = str(path or out)
            self.last_checkpoint = path
            self.recent.add(path, spec.name)
            self.status.value = f"saved {os.path.basename(path)}"

        self.curves.clear()
        self.progress.value = 0
        self.status.value = f"{'resuming' if resume else 'starting'} {spec.name}"
        self._set_running(True)
        self.worker = start_generator(make, on_progress=self._on_progress, on_result=on_result,
                                      on_error=self._on_error, on_finished=self._on_finished,
                                      on_aborted=lambda: setattr(self.status, "value", "cancelled"))
        return self.worker

    def _config(self, spec):
        """The method's config with the panel's numbers (validated by its ``__post_init__``)."""
        cls = getattr(spec, "config_cls", None)
        if cls is None:
            return None
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        values = {"epochs": self.epochs.value, "lr": self.learning_rate.value,
                  "learning_rate": self.learning_rate.value, "batch_size": self.batch_size.value,
                  **self.method_options.values()}
        return cls(**{k: v for k, v in values.items() if k in names})

    def _on_progress(self, ev) -> None:
        self.progress.max = max(1, int(ev.total))
        self.progress.value = min(int(ev.done), self.progress.max)
        metrics = ev.metrics or {}
        nums = " ".join(f"{k}={v:.3g}" for k, v in metrics.items() if isinstance(v, float))
        self.status.value = f"{ev.message or ev.stage} {nums}".strip()
        for name in CURVES:
            value = metrics.get(name)
            if isinstance(value, (int, float)) and value == value:  # NaN AUC: one class seen
                self.curves.add_point(name, len(self.curves.series.get(name, ())) + 1, value)

    def _on_error(self, exc) -> None:
        self.status.value = "failed"
        notify_error(exc)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.start_button.enabled = not running
        self.resume_button.enabled = not running
        self.cancel_button.enabled = running
