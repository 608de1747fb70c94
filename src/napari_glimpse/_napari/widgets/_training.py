"""Dock widget "Train model": train (or resume) a registered method with live curves; the
checkpoint it writes joins the recent-checkpoints list the "Run model" widget offers.

The data fields come from the method's declared training inputs (patch folders, slide
annotations, a labels CSV, ...) and its own options from its config dataclass, so a new
method brings its panel with it.
"""

from __future__ import annotations

import os

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
)

from . import _methods
from ._common import DEVICES, RecentCheckpoints, WorkerControls, notify_error, start_generator
from ._form import ConfigForm
from ._plots import CurvePlot

# Progress metrics drawn as curves, each against its own count of reports: "loss" is the
# running training loss per batch, the others come once per epoch ("train_bce": the main
# output's BCE, comparable with "val_loss" when the objective adds companion losses).
CURVES = ("loss", "train_loss", "train_bce", "val_loss", "val_accuracy", "val_auc", "val_spearman")
#: What the stage line says for the training loops' Progress stages.
STAGES = {"load": "loading data", "features": "feature extraction", "train": "training", "validate": "validation",
          "epoch": "training", "resume": "resuming"}


def data_widget(item: _methods.DataInput) -> FileEdit:
    """A folder box for one training-data input."""
    return FileEdit(name=item.name, label=item.label, mode="d", tooltip=item.help or None)


def _is_set(path) -> bool:
    return bool(path) and str(path) not in ("", ".")


class TrainingWidget(WorkerControls, Container):
    """Train a model: data folders, the method's options, device, output, start from, resume."""

    def __init__(self, napari_viewer=None, recent: RecentCheckpoints | None = None):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.recent = recent or RecentCheckpoints.for_file()
        self.worker = None
        self.last_checkpoint: str | None = None
        self.data: list[FileEdit] = []  # the data folders of the chosen method (in this container)
        self.found: list[Label] = []  # under each: what the folder holds

        names = [n for n in _methods.method_names() if _methods.get_spec(n).train is not None]
        self.method = ComboBox(label="method", choices=names)
        self.method_options = ConfigForm(label="options", labels=True)
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.output = FileEdit(label="output", mode="w", filter="*.safetensors",
                               tooltip="the checkpoint to write (weights + JSON config); the latest epoch "
                                       "goes beside it as <name>.last.safetensors")
        self.init = FileEdit(label="start from", mode="r", filter="*.safetensors",
                             tooltip="optional: fine-tune from this checkpoint's weights (same method and "
                                     "architecture) with a fresh optimizer; leave empty to train from scratch")
        self.start_button = PushButton(text="Start")
        self.resume_button = PushButton(text="Resume", tooltip="continue the output checkpoint's run "
                                                               "from its last saved epoch")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.stage = Label(label="stage", value="")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self.curves = CurvePlot()
        self.extend([self.method, self.method_options, self.device, self.output, self.init,
                     self.start_button, self.resume_button, self.cancel_button, self.stage, self.progress, self.status])
        self.native.layout().addWidget(self.curves)
        # A closed dock (or viewer) must not leave training running in the background.
        self.native.destroyed.connect(self._quit_quietly)

        self.method.changed.connect(self._on_method)
        self.start_button.changed.connect(lambda _=None: self.start())
        self.resume_button.changed.connect(lambda _=None: self.start(resume=True))
        self.cancel_button.changed.connect(self.cancel)
        self._on_method(self.method.value)

    def _on_method(self, name) -> None:
        """The method's data folders (right under the method) and its training options."""
        for w in self.data + self.found:
            self.remove(w)
        self.data, self.found = [], []
        spec = _methods.get_spec(name) if name else None
        if spec is None:
            self.method_options.set_config(None)
            return
        for k, item in enumerate(_methods.training_inputs(spec)):
            w = data_widget(item)
            info = Label(name=f"{item.name}_found", label="", value="")
            self.insert(1 + 2 * k, w)
            self.insert(2 + 2 * k, info)
            self.data.append(w)
            self.found.append(info)
            w.changed.connect(lambda value, info=info, kind=spec.data: self._describe(kind, value, info))
        self.method_options.set_config(*_methods.training_fields(spec))

    def _describe(self, kind: str, folder, info: Label) -> None:
        """Say under a data folder what it holds (patches per class, slides, the classes of
        annotated images), read in a worker thread; a folder that cannot be read says why."""
        if not _is_set(folder):
            info.value = ""
            return
        from napari.qt.threading import create_worker

        info.value = "reading..."
        worker = create_worker(_methods.describe_data, kind, str(folder), _start_thread=False, _ignore_errors=True)

        def shown(text, folder=str(folder)):
            if info in self.found and self._folder_of(info) == folder:  # not a late answer for an old folder
                info.value = text

        worker.returned.connect(shown)
        worker.errored.connect(lambda exc: shown(f"cannot use it: {exc}"))
        self._describers = [*getattr(self, "_describers", []), worker][-4:]  # keep them alive
        worker.start()

    def _folder_of(self, info: Label) -> str | None:
        """The folder currently in the data box above ``info``."""
        box = self.data[self.found.index(info)]
        return str(box.value) if _is_set(box.value) else None

    def data_values(self) -> dict[str, str | None]:
        return {w.name: (str(w.value) if _is_set(w.value) else None) for w in self.data}

    def start(self, resume: bool = False):
        """Start (or resume) training in a worker thread; returns the worker or None."""
        if self.worker is not None:
            return self.worker
        try:
            if not self.method.value:
                raise ValueError("no trainable method is registered")
            spec = _methods.get_spec(self.method.value)
            data = self.data_values()
            missing = [i.label for i in _methods.training_inputs(spec) if i.required and not data.get(i.name)]
            if missing:
                raise ValueError(f"choose the {', '.join(missing)} folder")
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

        def make():
            return _methods.train_generator(spec, **data, out=out, config=config, resume=resume,
                                            device=device, init=init)

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
        """The method's training config with the form's values (checked by the config itself;
        the error names the field)."""
        from ...config import config_from_dict

        return config_from_dict(spec.train_config_cls, self.method_options.values(), where=spec.name)

    def _on_progress(self, ev) -> None:
        # each stage (loading data, feature extraction, training, validation) runs its own bar
        self.stage.value = STAGES.get(ev.stage, ev.stage)
        self.progress.max = max(1, int(ev.total))
        self.progress.value = min(int(ev.done), self.progress.max)
        metrics = ev.metrics or {}
        nums = " ".join(f"{k}={v:.3g}" for k, v in metrics.items() if isinstance(v, float))
        self.status.value = f"{ev.message or ev.stage} {nums}".strip()
        for name in CURVES:
            value = metrics.get(name)
            if isinstance(value, (int, float)) and value == value:  # NaN AUC: one class seen
                self.curves.add_point(name, len(self.curves.series.get(name, ())) + 1, value)

    def _set_running(self, running: bool) -> None:
        self.start_button.enabled = not running
        self.resume_button.enabled = not running
        self.cancel_button.enabled = running
