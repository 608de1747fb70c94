"""``napari-glimpse compare SLIDE [--methods M...] [--region X Y W H] --out DIR``."""

from __future__ import annotations

import json


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="run several methods on one slide: one table and DIR/report.html",
        description="Run the chosen methods (default: every method with shipped weights) on one slide "
                    "or a region of it; write each result folder, compare.json and report.html "
                    "(the table and a thumbnail per method with its overlay, readable without napari).")
    p.add_argument("slide", metavar="SLIDE")
    p.add_argument("--methods", nargs="+", metavar="M", help="registered methods (default: those with shipped weights)")
    p.add_argument("--region", nargs=4, type=int, metavar=("X", "Y", "W", "H"),
                   help="level-0 region: top-left corner, width and height")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=compare_cmd)


def compare_cmd(args) -> int:
    import sys

    from ..compare import compare, save_comparison
    from ..errors import GlimpseError
    from ._progress import drive

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    region = None
    if args.region:
        x, y, w, h = args.region
        if w <= 0 or h <= 0:
            raise GlimpseError(f"--region: width and height must be positive, not {w} x {h}")
        region = (x, y, x + w, y + h)
    comp = drive(compare(args.slide, args.methods, region, args.device), desc="compare:", quiet=args.quiet)
    report = save_comparison(comp, args.out)
    for row in comp.rows():
        print(json.dumps(row), flush=True)
    for name, err in comp.errors.items():
        print(f"napari-glimpse: {name} failed: {err}", file=sys.stderr)
    print(f"report: {report}", file=sys.stderr)
    return 1 if comp.errors and not comp.results else 0
