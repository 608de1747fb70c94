"""``napari-glimpse`` command line. Each command group lives in its own module with ``add_parser``."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import GlimpseError

# module name -> each module defines ``add_parsers(subparsers)``; every sub-command sets
# ``func(args) -> int`` with ``set_defaults``.
_COMMAND_MODULES = ["slides", "mosaic", "models", "view", "infer", "features", "export", "compare"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="napari-glimpse",
        description="Whole-slide images and what attention- and zoom-based models saw in them.",
    )
    parser.add_argument("--version", action="version", version=f"napari-glimpse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:  # a command group not written yet
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..runtime.cpu_memory import keep_freed_memory

    keep_freed_memory()  # training / inference steps free and re-allocate large tensors
    try:
        return int(args.func(args) or 0)
    except GlimpseError as exc:
        # Bad input: one line naming the file and the problem, no traceback.
        print(f"napari-glimpse: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-glimpse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
