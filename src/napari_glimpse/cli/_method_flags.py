"""Command-line flags generated from a method's two configs (no per-method code).

Every field becomes ``--field-name`` with default None (None = keep the config's, or the
checkpoint's, value): booleans get ``--x`` / ``--no-x``, tuples ``nargs="+"``, fields with
choices get ``choices``, an optional number also takes ``none``. Each method has its own
sub-command, so a flag the method does not take is an argparse error, not ignored.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from ..config import FieldInfo, fields_of


def _optional_of(hint) -> type | None:
    """``X`` of ``X | None``, else None."""
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return None


_NONE = object()  # "--x none": set the field to None (a flag left out is None: keep)


def _none_or(kind: type):
    def parse(text: str):
        return _NONE if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def flag_kwargs(info: FieldInfo) -> dict[str, Any]:
    """argparse keywords for one config field."""
    shown = info.default
    if isinstance(shown, tuple):
        shown = " ".join(map(str, shown))
    kw: dict[str, Any] = {"dest": info.name, "default": None, "help": f"{info.help} (default "
          + (f"the checkpoint's; {shown} in the paper)" if info.from_checkpoint else f"{shown})")}
    hint = info.type
    if hint is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        kw.update(nargs="+", type=args[0] if args else int, metavar="N")
    elif _optional_of(hint) is not None:
        kw["type"] = _none_or(_optional_of(hint))
    elif hint in (int, float, str):
        kw["type"] = hint
    if info.choices:
        kw["choices"] = tuple(info.choices)
    return kw


def add_config_flags(parser, config_cls: type, *, skip=lambda info: False) -> list[str]:
    """Add one flag per field of ``config_cls`` (except ``skip(info)``); returns their names."""
    names = []
    for info in fields_of(config_cls):
        if skip(info):
            continue
        parser.add_argument("--" + info.name.replace("_", "-"), **flag_kwargs(info))
        names.append(info.name)
    return names


def collect(args, names: list[str]) -> dict[str, Any]:
    """The given flag values, by field name (lists become tuples)."""
    out = {}
    for name in names:
        value = getattr(args, name, None)
        if value is _NONE:
            out[name] = None
        elif value is not None:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def load_for(args, *, with_config: bool = True):
    """``(spec, loaded model, inference config or None)`` of a model command: sets
    ``--threads``, loads ``--checkpoint`` on ``--device``, builds the config from the flags.

    Raises
    ------
    GlimpseError
        A flag value the config refuses (the message names the field).
    """
    from ..errors import GlimpseError
    from ..methods import get_method, load_model
    from ..methods.registry import infer_config_for

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    spec = get_method(args.method)
    model = load_model(spec, args.checkpoint, args.device)
    if not with_config:
        return spec, model, None
    try:
        return spec, model, infer_config_for(spec, model, collect(args, args.config_flags))
    except ValueError as exc:
        raise GlimpseError(str(exc)) from None
