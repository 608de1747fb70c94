"""The widgets' one door to the method registry: names, forms, data inputs, models, runs.

Everything a widget needs to know about a method comes from its ``MethodSpec`` (its two
config classes, its data kind, its shipped weights and callables), so adding a method never
touches the GUI.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ...config import FieldInfo


@dataclass(frozen=True)
class DataInput:
    """One training-data folder of the training panel (``name``: the train keyword)."""

    name: str
    label: str
    required: bool = True
    help: str = ""


def _registry():
    from ...methods import registry

    return registry


def method_names() -> list[str]:
    return _registry().list_methods()


def get_spec(name: str):
    return _registry().get_method(name)


def shipped_checkpoints(spec) -> list[tuple[str, str]]:
    """``(name, path)`` of the method's installed shipped weights, the default first."""
    reg = _registry()
    return [(key, path) for key in spec.weights if (path := reg.shipped_checkpoint(spec, key))]


def inference_fields(spec) -> tuple[type, None]:
    """(config class, field filter) for the "Run model" parameter form."""
    return spec.infer_config_cls, None


def training_fields(spec):
    """(config class, field filter) for the "Train model" options: the training config's
    fields except the defaults it hands to inference (chosen on validation data)."""

    def keep(info: FieldInfo) -> bool:
        return info.group != "inference"

    return spec.train_config_cls, keep


def training_inputs(spec) -> tuple[DataInput, DataInput]:
    """The training and validation folders of the method's data kind."""
    what, val_what, layout = _registry().DATA_KINDS[spec.data]
    return (DataInput("train_dir", "training", help=f"{what}: {layout}"),
            DataInput("val_dir", "validation", required=False,
                      help=f"{val_what}, held apart, same layout: picks the best epoch"))


def describe_data(kind: str, folder) -> str:
    """One line on what a training folder holds for a data kind of the registry: patches per
    class, slides with labels / annotations, or annotated images and the classes found in them.

    Raises GlimpseError (naming the folder) when it cannot be read as that kind.
    """
    from pathlib import Path

    from ...errors import DatasetError

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError("not a folder", str(folder))
    if kind == "patches":
        from ...runtime.data import list_patch_files

        _, labels = list_patch_files(folder)
        return f"{len(labels):,} patches: {int((labels == 0).sum()):,} normal, {int((labels == 1).sum()):,} tumour"
    if kind == "slides":
        from ...runtime.data import find_slides

        items = find_slides(folder)
        labelled = [i for i in items if i.label is not None]
        positive = sum(1 for i in labelled if i.label == 1)
        annotated = sum(1 for i in items if i.annotation is not None)
        return (f"{len(items)} slides: {len(labelled)} labelled ({positive} positive), "
                f"{annotated} with annotations")
    from ...methods.razn.data import discover

    items, classes, _ = discover(folder)
    return f"{len(items)} annotated images; classes: {', '.join(classes)}"


class ModelCache:
    """Loaded models by (method, checkpoint, device): a second run does not re-load."""

    def __init__(self, size: int = 4):
        self.size = size
        self._models: dict[tuple, Any] = {}

    def get(self, spec, checkpoint: str | None, device: str | None):
        reg = _registry()
        key = (spec.name, reg.resolve_checkpoint(spec, checkpoint), device or "auto")
        if key not in self._models:
            if len(self._models) >= self.size:
                self._models.pop(next(iter(self._models)))
            self._models[key] = reg.load_model(spec, key[1], device)
        return self._models[key]

    def __len__(self) -> int:
        return len(self._models)


def infer_generator(spec, slide, model, *, region, params: dict[str, Any]) -> Generator:
    """The run (yields Progress, returns InferenceResult): ``slide`` is an open Slide or a path,
    ``params`` the form's values."""
    from ...runtime.run import run_inference

    return run_inference(spec, slide, model, region=region, overrides=params)


def train_generator(spec, *, train_dir, out, val_dir=None, config=None, resume=False, device=None,
                    init=None, seed: int = 0) -> Generator:
    """The method's training generator (yields Progress, returns the checkpoint path)."""
    return spec.get("train")(train_dir, out, val_dir=val_dir, config=config, resume=resume,
                             device=device or "auto", seed=seed, init=init)
