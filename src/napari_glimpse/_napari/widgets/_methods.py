"""The widgets' one door to the method registry: names, forms, data inputs, generators.

Everything a widget needs to know about a method comes from its ``MethodSpec`` (config
dataclass, ``infer`` / ``train`` generators, default checkpoint, declared training data), so
adding a method never touches the GUI. Attributes a spec may not have yet are read with
``getattr`` and a generic default, and calls pass only the keywords the generator accepts.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ._form import type_hints


@dataclass(frozen=True)
class DataInput:
    """One training-data field of the training panel.

    ``kind`` picks the widget: ``"patch_folder"`` / ``"folder"`` (a folder), ``"csv"`` (a
    labels CSV), ``"annotations"`` (a folder of slide annotation files), ``"file"``.
    """

    name: str  # keyword passed to the method's train generator
    kind: str
    label: str
    required: bool = True
    help: str = ""


# Patch classifiers (PCam-style ``<dir>/<class>/*.jpg``) need nothing more than this.
DEFAULT_INPUTS = (
    DataInput("train_dir", "patch_folder", "training",
              help="folder of patches in one sub-folder per class (0 = normal, 1 = tumour)"),
    DataInput("val_dir", "patch_folder", "validation", required=False,
              help="held-apart patches, same layout; validation loss / accuracy / AUC per epoch"),
)


def _registry():
    from ...methods import registry

    return registry


def method_names() -> list[str]:
    """Names of the registered methods (empty when none are)."""
    try:
        reg = _registry()
    except ImportError:
        return []
    return [getattr(m, "name", m) for m in reg.list_methods()]


def get_spec(name: str):
    return _registry().get_method(name)


def default_checkpoint(spec) -> str | None:
    """The spec's bundled checkpoint path if it has one and it exists, else None."""
    import os

    ckpt = getattr(spec, "default_checkpoint", None)
    ckpt = ckpt() if callable(ckpt) else ckpt
    return str(ckpt) if ckpt and os.path.isfile(str(ckpt)) else None


def _is_inference_field(f: dataclasses.Field) -> bool:
    return (f.metadata or {}).get("group") == "inference"


_CALL_ARGS = {"slide", "slide_path", "checkpoint", "device", "region"}


def inference_form_source(spec):
    """(config class, field filter) for the inference parameter form.

    ``spec.infer_config_cls`` when the method declares one. Otherwise the parameters the
    method's ``infer`` takes by name: its config's "inference" fields that ``infer``
    accepts, and ``infer``'s own simple keyword arguments (e.g. ``stride``), gathered into
    one generated dataclass so the form code sees a single config class. A config field
    that ``infer`` cannot receive is not shown (it would change nothing).
    """
    cls = _registry().spec_option(spec, "infer_config_cls")
    if cls is not None:
        return cls, None
    params = inspect.signature(spec.infer).parameters
    fields_: list[tuple] = []
    config_cls = getattr(spec, "config_cls", None)
    if config_cls is not None:
        hints = type_hints(config_cls)
        for f in dataclasses.fields(config_cls):
            if f.name in params and f.name not in _CALL_ARGS and _is_inference_field(f):
                fields_.append((f.name, hints[f.name],
                                dataclasses.field(default=f.default, metadata=f.metadata)))
    taken = {name for name, _, _ in fields_}
    for p in params.values():
        simple = isinstance(p.default, (bool, int, float, str)) and p.default is not None
        if p.name in _CALL_ARGS or p.name in taken or not simple:
            continue
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            fields_.append((p.name, type(p.default), dataclasses.field(default=p.default)))
    if not fields_:
        return None, None
    return dataclasses.make_dataclass(f"{spec.name}_inference_parameters", fields_), None


def training_form_source(spec):
    """(config class, field filter) for the method's own training options.

    The panel's common fields (epochs, learning rate, batch size) are left out here.
    """
    cls = getattr(spec, "config_cls", None)
    if cls is None:
        return None, None
    common = {"epochs", "lr", "learning_rate", "batch_size"}

    def keep(f):
        return (f.metadata or {}).get("group") == "training" and f.name not in common

    return cls, keep


def config_default(spec, name: str, fallback: Any) -> Any:
    """A config field's default (e.g. the paper's learning rate), or ``fallback``."""
    cls = getattr(spec, "config_cls", None)
    if cls is None:
        return fallback
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    return fallback


def training_inputs(spec) -> tuple[DataInput, ...]:
    """The data a method trains on: ``train_inputs`` when the spec declares them (attribute
    or ``extra["train_inputs"]``, DataInput or dicts of its fields), else patch folders."""
    declared = _registry().spec_option(spec, "train_inputs")
    if not declared:
        return DEFAULT_INPUTS
    return tuple(d if isinstance(d, DataInput) else DataInput(**d) for d in declared)


def _call(fn, *args, **kwargs) -> Generator:
    """``fn(*args, **kwargs)`` dropping keywords it does not take (unless it takes ``**kw``)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def infer_generator(spec, slide_path: str, checkpoint: str | None, *, device: str | None,
                    region, params: dict[str, Any]) -> Generator:
    """The method's inference generator (yields Progress, returns InferenceResult).

    ``params`` are the form's values, i.e. only parameters ``infer`` accepts by name.
    """
    return spec.infer(slide_path, checkpoint, device=device, region=region, **params)


def train_generator(spec, **kwargs) -> Generator:
    """The method's training generator (yields Progress, returns the checkpoint path)."""
    return _call(spec.train, **kwargs)
