"""The one way to declare a method's parameters: :func:`param` fields on a dataclass that
calls :func:`check` in ``__post_init__``.

Every training and inference config of every method is declared with it, and the CLI flags,
the GUI forms and the checkpoint header are all generated from the fields (:func:`fields_of`):

.. code-block:: python

    @dataclass
    class ToyConfig:
        lr: float = param(1e-3, "learning rate", min=1e-7, max=10.0)
        backbone: str = param("small", "encoder", choices=("small", "resnet18"), advanced=True)

        def __post_init__(self):
            check(self)

Nothing here imports torch or Qt.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["param", "same_as", "check", "fields_of", "FieldInfo", "config_from_dict", "config_dict"]


def param(default: Any, help: str, *, min: float | None = None, max: float | None = None,
          choices: tuple | None = None, advanced: bool = False, group: str = "") -> Any:
    """A config field with its default, help text, range, choices and form level.

    Parameters
    ----------
    default
        The paper's value (a list or other mutable default is given as a tuple).
    help
        One line for ``--help`` and the form's tooltip.
    min, max
        Inclusive range of a number (checked by :func:`check`).
    choices
        The allowed values (a drop-down in the form, ``choices`` on the command line).
    advanced
        Folded away in the GUI forms (a pathologist sees the basic fields first).
    group
        ``"inference"`` on a training config: a default the checkpoint hands to inference
        (a threshold chosen on validation data), not shown in the training form.
    """
    meta = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None,
            "advanced": bool(advanced), "group": group}
    return dataclasses.field(default=default, metadata=meta)


def same_as(cls: type, name: str, **changes) -> Any:
    """A field with the default, help, range and choices of ``cls``'s field ``name`` (one
    source): an inference field that the checkpoint's training field of that name sets.
    ``changes`` override metadata (e.g. ``advanced=False``); ``group`` is cleared."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None:
        raise AttributeError(f"{cls.__name__} has no field {name!r}")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return dataclasses.field(default=default, metadata={**f.metadata, "group": "", "from_checkpoint": True, **changes})


@dataclass(frozen=True)
class FieldInfo:
    """What a form or a flag needs to know about one config field."""

    name: str
    type: Any  # resolved type hint (``int``, ``tuple[int, ...]``, ``float | None``, ...)
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: tuple | None
    advanced: bool
    group: str
    from_checkpoint: bool = False  # declared with same_as: the checkpoint's value unless given


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation keeps its raw form
        return {f.name: f.type for f in dataclasses.fields(cls)}


def fields_of(cls_or_config) -> list[FieldInfo]:
    """The fields of a config class (or instance), in declaration order."""
    cls = cls_or_config if isinstance(cls_or_config, type) else type(cls_or_config)
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata or {}
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        out.append(FieldInfo(f.name, hints.get(f.name, f.type), default, meta.get("help", ""),
                             meta.get("min"), meta.get("max"), meta.get("choices"),
                             bool(meta.get("advanced", False)), meta.get("group", ""),
                             bool(meta.get("from_checkpoint", False))))
    return out


def _is_tuple(hint) -> bool:
    return typing.get_origin(hint) is tuple


def _tuple_item(hint):
    args = typing.get_args(hint)
    return args[0] if args else int


def check(config) -> None:
    """Coerce tuple fields (a list from JSON becomes a tuple) and check every field's type,
    range and choices; the error names the class and the field.

    Raises
    ------
    ValueError
        ``"CELNetConfig.blocks=0 is outside [1, 8]"``.
    """
    name = type(config).__name__
    for info in fields_of(config):
        value = getattr(config, info.name)
        where = f"{name}.{info.name}"
        if _is_tuple(info.type) and value is not None:
            item = _tuple_item(info.type)
            seq = (value,) if isinstance(value, (int, float)) else value
            try:
                value = tuple(item(v) if item in (int, float) else v for v in seq)
            except (TypeError, ValueError):
                raise ValueError(f"{where}={getattr(config, info.name)!r} is not a sequence of {item.__name__}") from None
            if item is int and any(int(v) != v for v in seq):
                raise ValueError(f"{where}={tuple(seq)!r} must hold whole numbers")
            object.__setattr__(config, info.name, value)
            numbers = value
        elif info.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where}={value!r} must be true or false")
            continue
        elif info.type is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                raise ValueError(f"{where}={value!r} must be a whole number")
            object.__setattr__(config, info.name, int(value))
            numbers = (int(value),)
        elif info.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}={value!r} must be a number")
            object.__setattr__(config, info.name, float(value))
            numbers = (float(value),)
        else:
            numbers = (value,) if isinstance(value, (int, float)) and not isinstance(value, bool) else ()
        if info.choices is not None and value not in info.choices:
            raise ValueError(f"{where}={value!r} must be one of {', '.join(map(str, info.choices))}")
        for v in numbers:
            if (info.min is not None and v < info.min) or (info.max is not None and v > info.max):
                raise ValueError(f"{where}={getattr(config, info.name)!r} is outside [{info.min}, {info.max}]")


def config_dict(config) -> dict:
    """A config as a JSON-able dict (tuples as lists are fine: :func:`check` restores them)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def config_from_dict(cls: type, values: dict, *, where: str = "", strict: bool = True):
    """``cls(**values)``; unknown keys are an error when ``strict`` (naming them), else dropped.

    Raises
    ------
    ValueError
        Unknown fields, or a value :func:`check` refuses; prefixed with ``where``.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    prefix = f"{where}: " if where else ""
    if unknown and strict:
        raise ValueError(f"{prefix}{cls.__name__} has no field {', '.join(unknown)} "
                         f"(fields: {', '.join(sorted(names))})")
    try:
        return cls(**{k: v for k, v in values.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{prefix}{exc}") from None
