"""Command-line flags built from a method's registry entry (no per-method if-chains).

``infer_flags(spec)``: every config field of group ``"inference"`` that ``spec.infer``
accepts by name, plus ``infer``'s own simple keyword arguments (``--leaves``), each as
``--field-name`` with default None (None = keep the checkpoint's config). Booleans get both
``--field-name`` and ``--no-field-name`` (a checkpoint's True must be switchable off), tuples
``nargs="+"``, fields with ``choices`` metadata get choices.
A method that declares ``infer_config_cls`` (CELNet) gets one flag per field of that class.
``config_flags(spec, names)``: the named config fields (e.g. ``strategy`` for training).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any

from ..methods.registry import spec_option

_CALL_ARGS = {"slide_path", "slide", "checkpoint", "device", "region", "model", "data_dir", "show_q"}


@dataclasses.dataclass(frozen=True)
class Flag:
    dest: str
    kwargs: dict

    @property
    def option(self) -> str:
        return "--" + self.dest.replace("_", "-")


def _flag_for(name: str, default: Any, help_: str, choices=None) -> Flag:
    kw: dict[str, Any] = {"dest": name, "default": None, "help": help_}
    if isinstance(default, bool):
        kw.update(action=argparse.BooleanOptionalAction)
    elif isinstance(default, tuple):
        kw.update(nargs="+", type=type(default[0]) if default else int, metavar="N")
    elif isinstance(default, (int, float, str)):
        kw.update(type=type(default))
        if choices:
            kw["choices"] = tuple(choices)
    return Flag(name, kw)


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def infer_flags(spec, fn=None) -> list[Flag]:
    """Flags for the inference parameters of ``fn`` (default ``spec.infer``).

    For ``spec.infer`` of a method that declares ``infer_config_cls`` (its "Run model" form,
    e.g. CELNet's), one flag per field of that class, as the form shows them.
    """
    declared = None
    if fn is None:
        declared = spec_option(spec, "infer_config_cls")
    if declared is not None:
        return _declared_flags(spec, declared)
    fn = fn or spec.infer
    if fn is None:
        return []
    params = inspect.signature(fn).parameters
    flags, taken = [], set()
    for f in dataclasses.fields(spec.config_cls):
        meta = f.metadata or {}
        if meta.get("group") == "inference" and f.name in params and f.name not in _CALL_ARGS:
            flags.append(_flag_for(f.name, _field_default(f), meta.get("help", ""), meta.get("choices")))
            taken.add(f.name)
    helps = (getattr(spec, "extra", None) or {}).get("param_help", {})
    for p in params.values():
        if p.name in taken or p.name in _CALL_ARGS or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        if isinstance(p.default, (bool, int, float, str)) and p.default is not None:
            flags.append(_flag_for(p.name, p.default, helps.get(p.name, f"(default {p.default})")))
    return flags


def _declared_flags(spec, cls) -> list[Flag]:
    """One flag per field of a declared inference-parameter class; a field with metadata
    ``from_checkpoint`` defaults to the checkpoint config's value (e.g. CELM a / b chosen on
    validation data)."""
    flags = []
    for f in dataclasses.fields(cls):
        meta = f.metadata or {}
        default = _field_default(f)
        shown = f"the checkpoint's; {default} in the paper" if meta.get("from_checkpoint") else default
        flags.append(_flag_for(f.name, default, f"{meta.get('help', '')} (default {shown})", meta.get("choices")))
    return flags


def config_flags(spec, names) -> list[Flag]:
    """Flags for the named config fields, e.g. ``["strategy"]``."""
    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    out = []
    for name in names:
        f = fields[name]
        meta = f.metadata or {}
        out.append(_flag_for(name, _field_default(f), meta.get("help", ""), meta.get("choices")))
    return out


def add_flags(parser, flags: list[Flag], seen: set | None = None) -> None:
    """Add flags to an argparse parser, skipping options it already has."""
    seen = seen if seen is not None else set()
    existing = {o for a in parser._actions for o in a.option_strings}
    for fl in flags:
        if fl.option in existing or fl.option in seen:
            continue
        parser.add_argument(fl.option, **fl.kwargs)
        seen.add(fl.option)


def collect(args, flags: list[Flag]) -> dict:
    """The given (non-None) flag values, by field name."""
    out = {}
    for fl in flags:
        value = getattr(args, fl.dest, None)
        if value is not None:
            out[fl.dest] = tuple(value) if isinstance(value, list) else value
    return out

