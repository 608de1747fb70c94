"""``napari-glimpse infer METHOD SLIDE... --out DIR``: run a model over slides, save results.

Each slide gets ``DIR/<slide stem>/`` with ``summary.json`` (slide_score, seconds,
patches_read, pixels_read, ...), ``maps.zarr`` and GeoJSON vectors (see
:mod:`napari_glimpse.runtime.results_io`).
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parsers(subparsers) -> None:
    add_infer_parser(subparsers)


def add_infer_parser(subparsers) -> None:
    p = subparsers.add_parser("infer", help="run a model over whole slides (or a region)")
    methods = p.add_subparsers(dest="method", metavar="METHOD")
    c = methods.add_parser("celnet", help="CELNet dense tumour probability + CELM evidence")
    c.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
    c.add_argument("--out", required=True, help="output folder (one sub-folder per slide)")
    c.add_argument("--checkpoint", help="CELNet checkpoint (default: the registry's)")
    c.add_argument("--region", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   help="level-0 box to process instead of the whole slide")
    c.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    _add_celnet_flags(c)
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")
    c.set_defaults(func=infer_celnet_cmd)
    _add_registry_parsers(methods)


def _add_celnet_flags(parser) -> None:
    """One flag per :class:`CELNetInferConfig` field (the "Run model" form's fields); a flag
    not given leaves the value to ``infer`` (CELM settings: the checkpoint config's)."""
    import argparse
    import dataclasses

    from ..methods.celnet import CELNetConfig
    from ..methods.celnet_infer import CELNetInferConfig

    from_checkpoint = {f.name for f in dataclasses.fields(CELNetConfig)}
    for f in dataclasses.fields(CELNetInferConfig):
        help_ = f.metadata.get("help", "")
        if isinstance(f.default, bool):  # --X / --no-X, as the registry's flags (_method_flags)
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=f"{help_} (default {f.default})")
            continue
        default = (f"the checkpoint's; {f.default} in the paper" if f.name in from_checkpoint
                   else f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default),
                            default=None, choices=f.metadata.get("choices"),
                            help=f"{help_} (default {default})")


def _add_registry_parsers(methods) -> None:
    """One sub-command per registered method without a hand-written parser; its flags come
    from the method's config (inference fields) and ``infer``'s signature."""
    from ..methods import get_method, list_methods
    from ._method_flags import add_flags, infer_flags

    for name in list_methods():
        if name in methods.choices:
            continue
        spec = get_method(name)
        if spec.infer is None:
            continue
        m = methods.add_parser(name, help=spec.description)
        m.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
        m.add_argument("--out", required=True, help="output folder (one sub-folder per slide)")
        m.add_argument("--checkpoint", help="checkpoint (default: the shipped one)")
        m.add_argument("--region", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                       help="level-0 box to process instead of the whole slide")
        m.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
        m.add_argument("--threads", type=int, help="torch CPU threads")
        m.add_argument("--quiet", action="store_true", help="no progress on stderr")
        add_flags(m, infer_flags(spec))
        m.set_defaults(func=infer_registry_cmd)


def _drive(gen, quiet: bool):
    """Run a progress generator to its result, printing progress on one stderr line."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            if not quiet:
                print(file=sys.stderr)
            return stop.value
        if not quiet:
            print(f"\r  {ev.stage} {ev.done}/{ev.total} {ev.message}", end="", file=sys.stderr)


def infer_celnet_cmd(args) -> int:
    import dataclasses
    import json

    from ..methods.celnet_infer import CELNetInferConfig, infer, load_celnet
    from ..runtime.results_io import save_result

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(CELNetInferConfig)
               if getattr(args, f.name, None) is not None}
    model, ckpt = load_celnet(args.checkpoint, args.device)
    out = Path(args.out)
    for path in args.slides:
        if not args.quiet:
            print(f"{path}:", file=sys.stderr)
        gen = infer(path, ckpt, model=model, region=args.region, **options)
        result = _drive(gen, args.quiet)
        target = save_result(result, out / Path(path).stem)
        s = result.summary
        print(json.dumps({"slide": str(path), "out": str(target), "slide_score": result.slide_score,
                          "seconds": round(s["seconds"], 3), "patches_read": s["patches_read"],
                          "pixels_read": s["pixels_read"]}))
    return 0


def infer_registry_cmd(args) -> int:
    """Generic ``infer``: the method's generator per slide; the model is loaded once when the
    method offers ``load_model`` and its ``infer`` takes a ``model``."""
    import inspect
    import json

    from ..methods import get_method
    from ..runtime.results_io import save_result
    from ._method_flags import collect, infer_flags

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    spec = get_method(args.method)
    kwargs = collect(args, infer_flags(spec))
    params = inspect.signature(spec.infer).parameters
    takes_model = "model" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if spec.load_model is not None and takes_model:
        kwargs["model"], _, ckpt = spec.load_model(args.checkpoint, args.device)
        checkpoint = ckpt.path
    else:
        checkpoint = args.checkpoint
    out = Path(args.out)
    for path in args.slides:
        if not args.quiet:
            print(f"{path}:", file=sys.stderr)
        gen = spec.infer(path, checkpoint, device=args.device, region=args.region, **kwargs)
        result = _drive(gen, args.quiet)
        target = save_result(result, out / Path(path).stem)
        s = result.summary
        print(json.dumps({"slide": str(path), "out": str(target), "slide_score": result.slide_score,
                          "seconds": round(float(s.get("seconds", float("nan"))), 3),
                          "patches_read": s.get("patches_read"), "pixels_read": s.get("pixels_read")}))
    return 0
