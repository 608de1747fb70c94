"""The method registry: the CLI, the widgets and checkpoints all read it.

A method registers a :class:`MethodSpec` naming its config dataclass (validated in
``__post_init__``; each field's ``metadata`` may hold ``help``, ``min``, ``max`` and ``group``
for parameter forms), how to build its model, and its train / infer / evaluate generators.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MethodSpec", "register", "get_method", "list_methods", "config_fields", "spec_option"]


@dataclass
class MethodSpec:
    """What the rest of napari-glimpse needs to know about one method.

    Attributes
    ----------
    name : str
        Registry key, also stored in checkpoints (``"celnet"``).
    description : str
        One line for menus and ``--help``.
    config_cls : type
        Config dataclass; ``config_cls()`` gives the paper defaults.
    build_model : callable
        ``build_model(config) -> torch.nn.Module``.
    train : callable, optional
        Generator function yielding ``Progress`` and returning the checkpoint path.
    infer : callable, optional
        Generator function yielding ``Progress`` and returning an ``InferenceResult``.
    evaluate : callable, optional
        Generator function yielding ``Progress`` and returning a metrics dict.
    default_checkpoint : callable, optional
        ``() -> str | None``: the shipped weights, if any.
    load_model : callable, optional
        ``load_model(path_or_None, device) -> (model, config, checkpoint path)``.
    """

    name: str
    description: str
    config_cls: type
    build_model: Callable[[Any], Any]
    train: Callable | None = None
    infer: Callable | None = None
    evaluate: Callable | None = None
    default_checkpoint: Callable[[], str | None] | None = None
    load_model: Callable | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "_").isidentifier():
            raise ValueError(f"method name must be an identifier (hyphens allowed), got {self.name!r}")
        if not dataclasses.is_dataclass(self.config_cls):
            raise TypeError(f"{self.name}: config_cls must be a dataclass, got {self.config_cls!r}")


def spec_option(spec, name: str, default=None):
    """``spec.<name>``, else ``spec.extra[name]`` (MethodSpec's free-form slot), else ``default``:
    how the CLI and the widgets read a method's optional declarations (``infer_config_cls``,
    ``train_inputs``, ...)."""
    value = getattr(spec, name, None)
    if value is None:
        value = (getattr(spec, "extra", None) or {}).get(name)
    return default if value is None else value


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method; registering a second spec under a taken name needs ``replace=True``."""
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_builtin() -> None:
    # Built-in methods register when the package is imported; importing it here makes
    # ``registry.get_method`` work even when only this module was imported.
    from . import _builtin  # noqa: F401


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``.

    Raises
    ------
    KeyError
        With the list of known methods.
    """
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def config_fields(config_cls: type) -> list[dict]:
    """Form description of a config dataclass: name, type, default, help, min, max, group."""
    rows = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append({
            "name": f.name,
            "type": f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)),
            "default": default,
            "help": f.metadata.get("help", ""),
            "min": f.metadata.get("min"),
            "max": f.metadata.get("max"),
            "group": f.metadata.get("group", ""),
        })
    return rows
