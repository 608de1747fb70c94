"""The method registry: the CLI, the widgets and checkpoints all read it.

A method is one folder ``methods/<name>/`` and one :class:`MethodSpec`. Its callables and
config classes are named lazily as ``"module:attr"`` strings (as npe2 names plugin
contributions), so listing methods, building ``--help`` or a form imports no torch model code.

What a method writes
--------------------
``config.py``
    Its training config and its inference config: dataclasses of
    :func:`napari_glimpse.config.param` fields whose ``__post_init__`` calls
    :func:`napari_glimpse.config.check`. The training config is stored in the checkpoint.
    Training fields of ``group="inference"`` are defaults the checkpoint hands to the
    inference field of the same name (a threshold chosen on validation data, the glimpse
    tree's branching).
``load(path, device) -> (model, training config)``
    Build the model from a checkpoint file (``runtime.checkpoint``; never unpickles).
``infer(slide, model, config, region) -> Generator[Progress, None, InferenceResult]``
    ``slide`` is an open :class:`~napari_glimpse.slides.Slide`, ``model`` a
    :class:`LoadedModel`, ``config`` the inference config, ``region`` a level-0 box or None.
    The result's summary holds ``slide_score``, ``patches_read``, ``pixels_read`` and
    ``evidence`` (up to 10 level-0 ``[x, y]``, best first); the runtime adds ``method``,
    ``seconds``, ``device`` and ``checkpoint`` (:func:`napari_glimpse.runtime.run.run_inference`).
``train(train_dir, out, *, val_dir, config, resume, device, seed, init) -> Generator[..., str]``
    Usually a few lines around :func:`napari_glimpse.runtime.fit.fit` with the method's
    ``Trainer`` (its step and its validation); returns the best checkpoint's path.
``evaluate(data_dir, model, config, *, limit) -> Generator[..., dict]``
    Metrics of a loaded model on labelled data (JSON-able).
``score_source(result, config) -> calls.ScoreSource`` (optional)
    The window / leaf scores its slide score summarises; with the config fields of
    :mod:`napari_glimpse.calls` the runtime then aggregates, calls and calibrates the slide
    the same way for every method. Every method's result gets a call.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MethodSpec", "LoadedModel", "DATA_KINDS", "register", "unregister", "get_method",
           "list_methods", "resolve", "shipped_checkpoint", "resolve_checkpoint", "load_model",
           "infer_config_for", "WEIGHTS_DIR"]

#: What a method trains on; the CLI's ``--data`` help and the training panel's fields follow it.
DATA_KINDS = {
    "patches": ("training patches", "validation patches",
                "a folder of patches in one sub-folder per class (0 = normal, 1 = tumour)"),
    "slides": ("training slides", "validation slides",
               "slides with a labels.csv (slide,label), or with <stem>.geojson / .xml / .mask.tif annotations"),
    "annotated": ("training images", "validation images",
                  "slides or PNG / JPEG / TIFF images with <stem>.geojson, <stem>.xml or <stem>.mask.png|tif"),
}

#: Shipped weights live here; ``MethodSpec.weights`` names files in it.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "_sample_data" / "weights"

Ref = str | Callable | type


def resolve(ref: Ref | None):
    """``"package.module:attr"`` -> the object (imported now); anything else is returned as is."""
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"a lazy reference is 'module:attr', got {ref!r}")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of napari-glimpse needs to know about one method.

    Every callable and class may be given as a ``"module:attr"`` string (imported on first use).

    Attributes
    ----------
    name
        Registry key, also stored in checkpoints (``"celnet"``).
    title
        What menus, forms and ``--help`` show.
    train_config, infer_config
        The two config dataclasses (see the module docstring).
    load, infer, train, evaluate
        The method's callables (see the module docstring); ``train`` / ``evaluate`` optional.
    data
        What ``train`` reads: a key of :data:`DATA_KINDS`.
    weights
        Shipped checkpoints: ``{name: file in WEIGHTS_DIR}``; the first is the default.
    napari_hook
        Optional ``hook(viewer)`` the widgets call after adding this method's layers
        (e.g. click a glimpse box to select its subtree); idempotent.
    score_source
        Optional ``source(result, config) -> calls.ScoreSource | None``: the window / leaf
        scores a slide score is aggregated from (:mod:`napari_glimpse.calls`); methods whose
        model gives the slide score itself have none.
    """

    name: str
    title: str
    train_config: Ref
    infer_config: Ref
    load: Ref
    infer: Ref
    train: Ref | None = None
    evaluate: Ref | None = None
    data: str = "patches"
    weights: Mapping[str, str] = field(default_factory=dict)
    napari_hook: Ref | None = None
    score_source: Ref | None = None

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "_").isidentifier():
            raise ValueError(f"method name must be an identifier (hyphens allowed), got {self.name!r}")
        if self.data not in DATA_KINDS:
            raise ValueError(f"{self.name}: data must be one of {', '.join(DATA_KINDS)}, got {self.data!r}")

    def get(self, attr: str):
        """The resolved callable or class of ``attr`` (``"infer"``, ``"train_config"``, ...)."""
        return resolve(getattr(self, attr))

    @property
    def train_config_cls(self) -> type:
        return self.get("train_config")

    @property
    def infer_config_cls(self) -> type:
        return self.get("infer_config")

    def default_checkpoint(self) -> str | None:
        """The first shipped checkpoint, when it is installed."""
        return shipped_checkpoint(self, None)


@dataclass
class LoadedModel:
    """A model ready to run: what ``load`` built, with where it came from."""

    method: str
    model: Any  # a torch module in eval mode on ``device``
    config: Any  # the training config stored in the checkpoint
    checkpoint: str | None
    device: str


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method; registering a second spec under a taken name needs ``replace=True``."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register() takes a MethodSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests that register their own)."""
    _REGISTRY.pop(name, None)


def _ensure_builtin() -> None:
    # Built-in methods register when the package is imported; importing it here makes
    # ``registry.get_method`` work even when only this module was imported.
    from . import _builtin  # noqa: F401


def get_method(name: str | MethodSpec) -> MethodSpec:
    """The spec registered as ``name`` (a spec is returned as is).

    Raises
    ------
    KeyError
        With the list of known methods.
    """
    if isinstance(name, MethodSpec):
        return name
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    _ensure_builtin()
    return sorted(_REGISTRY)


# ------------------------------------------------------------------ checkpoints and models


def shipped_checkpoint(spec: MethodSpec | str, name: str | None = None) -> str | None:
    """Path of a shipped checkpoint (``name`` a key of ``spec.weights``; None: the first), or
    None when the method ships none or the file is not installed."""
    spec = get_method(spec)
    if not spec.weights:
        return None
    name = next(iter(spec.weights)) if name is None else name
    if name not in spec.weights:
        return None
    path = WEIGHTS_DIR / spec.weights[name]
    return str(path) if path.is_file() else None


def resolve_checkpoint(spec: MethodSpec | str, checkpoint: str | os.PathLike | None) -> str:
    """A checkpoint argument -> a file: None (the default shipped weights), a name of
    ``spec.weights`` (``"mil"``), or a path.

    Raises
    ------
    CheckpointError
        No checkpoint given and none shipped, or the file does not exist.
    """
    from ..errors import CheckpointError

    spec = get_method(spec)
    if checkpoint is None or str(checkpoint) in spec.weights:
        key = None if checkpoint is None else str(checkpoint)
        path = shipped_checkpoint(spec, key)
        if path is None:
            what = f"shipped {key!r} weights" if key else "shipped weights"
            raise CheckpointError(f"no checkpoint given and {spec.name} has no {what} installed")
        return path
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path)
    return str(path)


def load_model(spec: MethodSpec | str, checkpoint: str | os.PathLike | None = None,
               device: str | None = None) -> LoadedModel:
    """Resolve the checkpoint and device, then the method's ``load``."""
    from ..runtime.device import resolve_device

    spec = get_method(spec)
    path = resolve_checkpoint(spec, checkpoint)
    dev = resolve_device(device or "auto")
    model, config = spec.get("load")(path, dev)
    return LoadedModel(spec.name, model, config, path, str(dev))


def infer_config_for(spec: MethodSpec | str, model: LoadedModel | None = None,
                     overrides: Mapping[str, Any] | None = None):
    """The inference config of a run: the class defaults, then the checkpoint's
    ``group="inference"`` training fields of the same name, then ``overrides`` (None values are skipped).

    Raises
    ------
    ValueError
        An override names no field of the inference config, or a value is out of range
        (the message names the field).
    """
    from ..config import config_from_dict, fields_of

    spec = get_method(spec)
    cls = spec.infer_config_cls
    names = {f.name for f in fields_of(cls)}
    values: dict[str, Any] = {}
    if model is not None and dataclasses.is_dataclass(model.config):
        handed = {f.name for f in fields_of(model.config) if f.group == "inference"}
        values.update({k: getattr(model.config, k) for k in handed & names})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(cls, values, where=spec.name)
