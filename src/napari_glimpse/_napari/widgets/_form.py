"""A magicgui form built from a config dataclass's fields (ints, floats, bools, choices,
tuples of ints).

Fields carry their help text and ranges in ``dataclasses.field(metadata=...)``: ``help``,
``min``, ``max``, ``choices`` and ``group``. A ``tuple[int, ...]`` (e.g. the glimpse tree's
branching) is typed as numbers separated by spaces. Fields of other types (float tuples,
optionals) are not shown: they keep the config's (or the checkpoint's) value.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from typing import Any, Literal

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox


def _float_step(default: float) -> float:
    """A step one decade below the default's magnitude (so 1e-4 shows as 0.00010, not 0.00)."""
    if not default:
        return 0.01
    return min(0.1, 10 ** (math.floor(math.log10(abs(default))) - 1))


def field_widget(f: dataclasses.Field, hint: Any):
    """One widget for one dataclass field, or None when its type has no simple widget."""
    meta = f.metadata or {}
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    common = {"name": f.name, "label": f.name.replace("_", " "), "tooltip": meta.get("help")}
    choices = meta.get("choices")
    if choices is None and typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
    if choices is not None:
        return ComboBox(choices=list(choices), value=default, **common)
    if hint is bool:
        return CheckBox(value=bool(default), **common)
    if hint is int:
        lo, hi = meta.get("min", -(2**31)), meta.get("max", 2**31 - 1)
        return SpinBox(value=int(default), min=int(lo), max=int(hi), **common)
    if hint is float:
        lo, hi = meta.get("min", -1e12), meta.get("max", 1e12)
        return FloatSpinBox(value=float(default), min=float(lo), max=float(hi),
                            step=_float_step(float(default)), **common)
    if hint is str:
        return LineEdit(value=str(default or ""), **common)
    if is_int_tuple(hint):
        common["tooltip"] = f"{meta.get('help') or f.name} (whole numbers separated by spaces)"
        return LineEdit(value=_format_ints(default or ()), **common)
    return None


def is_int_tuple(hint: Any) -> bool:
    """``tuple[int, ...]``: shown as text, numbers separated by spaces."""
    return typing.get_origin(hint) is tuple and typing.get_args(hint) == (int, ...)


def _format_ints(values) -> str:
    return " ".join(str(int(v)) for v in values)


def _parse_ints(widget) -> tuple[int, ...]:
    text = str(widget.value).replace(",", " ")
    try:
        values = tuple(int(t) for t in text.split())
    except ValueError:
        values = ()
    if not values:
        raise ValueError(f"{widget.label}: {widget.value!r} is not whole numbers separated by spaces")
    return values


def type_hints(cls: type) -> dict[str, Any]:
    """Resolved field types; a field whose annotation cannot be resolved keeps its raw one
    (and gets no widget) instead of breaking the whole form."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {f.name: f.type for f in dataclasses.fields(cls)}


class ConfigForm(Container):
    """The simple fields of a config dataclass as a form; :meth:`values` gives them back."""

    def __init__(self, config_cls: type | None = None,
                 include: Callable[[dataclasses.Field], bool] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.set_config(config_cls, include)

    def set_config(self, config_cls: type | None,
                   include: Callable[[dataclasses.Field], bool] | None = None) -> None:
        """Rebuild the form for ``config_cls`` (None: empty)."""
        self.clear()
        self.config_cls = config_cls
        self._int_tuples: set[str] = set()  # names of the tuple[int, ...] fields (text boxes)
        if config_cls is None or not dataclasses.is_dataclass(config_cls):
            return
        hints = type_hints(config_cls)
        for f in dataclasses.fields(config_cls):
            if not f.init or (include is not None and not include(f)):
                continue
            widget = field_widget(f, hints.get(f.name))
            if widget is not None:
                self.append(widget)
                if is_int_tuple(hints.get(f.name)):
                    self._int_tuples.add(f.name)

    def values(self) -> dict[str, Any]:
        """``{field name: value}`` of the fields shown; ValueError names a tuple field whose
        text is not whole numbers."""
        return {w.name: _parse_ints(w) if w.name in self._int_tuples else w.value for w in self}

    def set_values(self, values: dict[str, Any]) -> list[str]:
        """Show ``values`` in the fields of the same names (others are ignored); returns the
        names set. A value a field cannot take (out of its range, wrong type) is skipped."""
        done = []
        for w in self:
            value = values.get(w.name)
            if w.name in self._int_tuples and isinstance(value, (list, tuple)):
                value = _format_ints(value)
            if value is None or isinstance(value, (list, tuple, dict)):
                continue
            try:
                w.value = value
            except (ValueError, TypeError):
                continue
            done.append(w.name)
        return done
