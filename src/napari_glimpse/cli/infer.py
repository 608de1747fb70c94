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
    _add_registry_parsers(methods)


def _add_registry_parsers(methods) -> None:
    """One sub-command per registered method; its flags come from the method's declared
    inference parameters (``infer_config_cls``) or else its config's inference fields and
    ``infer``'s signature (:func:`._method_flags.infer_flags`)."""
    from ..methods import get_method, list_methods
    from ._method_flags import add_flags, infer_flags

    for name in list_methods():
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
        kwargs["model"], _, checkpoint = spec.load_model(args.checkpoint, args.device)
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
