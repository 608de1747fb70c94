"""A magicgui form built from a config dataclass's fields (ints, floats, bools, choices,
tuples of ints).

Fields are declared with :func:`napari_glimpse.config.param` (help, range, choices,
basic or advanced). A ``tuple[int, ...]`` (e.g. the glimpse tree's
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

from ...config import FieldInfo, fields_of


def _float_step(default: float) -> float:
    """A step one decade below the default's magnitude (so 1e-4 shows as 0.00010, not 0.00)."""
    if not default:
        return 0.01
    return min(0.1, 10 ** (math.floor(math.log10(abs(default))) - 1))


def field_widget(info: FieldInfo):
    """One widget for one config field, or None when its type has no simple widget."""
    hint, default = info.type, info.default
    common = {"name": info.name, "label": info.name.replace("_", " "), "tooltip": info.help or None}
    choices = info.choices
    if choices is None and typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
    if choices is not None:
        return ComboBox(choices=list(choices), value=default, **common)
    if hint is bool:
        return CheckBox(value=bool(default), **common)
    if hint is int:
        lo = -(2**31) if info.min is None else info.min
        hi = 2**31 - 1 if info.max is None else info.max
        return SpinBox(value=int(default), min=int(lo), max=int(hi), **common)
    if hint is float:
        lo = -1e12 if info.min is None else info.min
        hi = 1e12 if info.max is None else info.max
        return FloatSpinBox(value=float(default), min=float(lo), max=float(hi),
                            step=_float_step(float(default)), **common)
    if hint is str:
        return LineEdit(value=str(default or ""), **common)
    if is_int_tuple(hint):
        common["tooltip"] = f"{info.help or info.name} (whole numbers separated by spaces)"
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


class ConfigForm(Container):
    """The simple fields of a config dataclass as a form; :meth:`values` gives them back.

    Basic fields come first; fields declared ``advanced`` fold away behind a "show advanced"
    box, so a pathologist sees the handful that matter.
    """

    def __init__(self, config_cls: type | None = None,
                 include: Callable[[FieldInfo], bool] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.set_config(config_cls, include)

    def set_config(self, config_cls: type | None,
                   include: Callable[[FieldInfo], bool] | None = None) -> None:
        """Rebuild the form for ``config_cls`` (None: empty)."""
        self.clear()
        self.config_cls = config_cls
        self.fields: list = []  # the field widgets, basic then advanced
        self.advanced: list = []
        self._int_tuples: set[str] = set()  # names of the tuple[int, ...] fields (text boxes)
        self.show_advanced = CheckBox(name="show_advanced", label="advanced", value=False,
                                      tooltip="show the advanced settings")
        if config_cls is None or not dataclasses.is_dataclass(config_cls):
            return
        infos = [i for i in fields_of(config_cls) if include is None or include(i)]
        for info in sorted(infos, key=lambda i: i.advanced):  # stable: declaration order kept
            widget = field_widget(info)
            if widget is None:
                continue
            self.fields.append(widget)
            if is_int_tuple(info.type):
                self._int_tuples.add(info.name)
            if info.advanced:
                self.advanced.append(widget)
                widget.visible = False
        basic = [w for w in self.fields if w not in self.advanced]
        self.extend(basic)
        if self.advanced:
            self.append(self.show_advanced)
            self.extend(self.advanced)
            self.show_advanced.changed.connect(self._toggle_advanced)

    def _toggle_advanced(self, show: bool) -> None:
        for w in self.advanced:
            w.visible = bool(show)

    def values(self) -> dict[str, Any]:
        """``{field name: value}`` of the fields shown; ValueError names a tuple field whose
        text is not whole numbers."""
        return {w.name: _parse_ints(w) if w.name in self._int_tuples else w.value for w in self.fields}

    def set_values(self, values: dict[str, Any]) -> list[str]:
        """Show ``values`` in the fields of the same names (others are ignored); returns the
        names set. A value a field cannot take (out of its range, wrong type) is skipped."""
        done = []
        for w in self.fields:
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
