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
    c.add_argument("--stride", type=int, default=32, help="px between windows at 10x (default 32)")
    c.add_argument("--tile-size", type=int, default=1536, help="tile input px (bounds memory)")
    c.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass")
    c.add_argument("--tissue", choices=("otsu", "grey", "none"), default="otsu")
    c.add_argument("--no-celm", action="store_true", help="skip the CELM evidence map (faster)")
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")
    c.set_defaults(func=infer_celnet_cmd)


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
    import json

    from ..methods.celnet_infer import infer_celnet, load_celnet
    from ..runtime.results_io import save_result

    model, ckpt = load_celnet(args.checkpoint, args.device)
    out = Path(args.out)
    for path in args.slides:
        if not args.quiet:
            print(f"{path}:", file=sys.stderr)
        gen = infer_celnet(path, model, region=args.region, stride=args.stride,
                           tile_size=args.tile_size, batch_size=args.batch_size,
                           tissue=None if args.tissue == "none" else args.tissue,
                           celm=not args.no_celm, checkpoint=ckpt)
        result = _drive(gen, args.quiet)
        target = save_result(result, out / Path(path).stem)
        s = result.summary
        print(json.dumps({"slide": str(path), "out": str(target), "slide_score": result.slide_score,
                          "seconds": round(s["seconds"], 3), "patches_read": s["patches_read"],
                          "pixels_read": s["pixels_read"]}))
    return 0
