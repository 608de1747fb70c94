"""``napari-glimpse infer METHOD SLIDE... --out DIR``: run a model over slides, save results.

Each slide gets ``DIR/<slide stem>/`` with ``summary.json`` (method, slide_score, seconds,
patches_read, pixels_read, device, checkpoint, evidence, ...), ``maps.zarr`` and GeoJSON
vectors (see :mod:`napari_glimpse.runtime.results_io`). The model is loaded once.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_parsers(subparsers) -> None:
    from ..methods import get_method, list_methods
    from ._method_flags import add_config_flags

    p = subparsers.add_parser("infer", help="run a model over whole slides (or a region)")
    methods = p.add_subparsers(dest="method", metavar="METHOD")
    for name in list_methods():
        spec = get_method(name)
        m = methods.add_parser(name, help=spec.title, description=spec.title)
        m.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
        m.add_argument("--out", required=True, help="output folder (one sub-folder per slide)")
        m.add_argument("--checkpoint", help="checkpoint file"
                       + (f" or a shipped one: {', '.join(spec.weights)} (default {next(iter(spec.weights))})"
                          if spec.weights else ""))
        m.add_argument("--region", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                       help="level-0 box to process instead of the whole slide")
        m.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
        m.add_argument("--threads", type=int, help="torch CPU threads")
        m.add_argument("--quiet", action="store_true", help="no progress on stderr")
        m.add_argument("--scheduler", metavar="local:N|ADDRESS|serial",
                       help="run the slides as a cohort on Dask distributed: local:N starts N local "
                            "workers, an address (tcp://host:8786) uses that cluster, serial runs them "
                            "here; complete results are skipped, failures are reported in DIR/cohort.csv "
                            "and the other slides go on")
        names = add_config_flags(m, spec.infer_config_cls)
        m.set_defaults(func=infer_cmd, config_flags=names)


def infer_cmd(args) -> int:
    from ..runtime.results_io import save_result
    from ..runtime.run import run_inference
    from ._method_flags import load_for
    from ._progress import drive

    if args.scheduler:
        return _cohort(args)
    spec, model, config = load_for(args)
    out = Path(args.out)
    for path in args.slides:
        result = drive(run_inference(spec, path, model, config, region=args.region),
                       desc=f"{Path(path).name}:", quiet=args.quiet)
        target = save_result(result, out / Path(path).stem)
        s = result.summary
        print(json.dumps({"slide": str(path), "out": str(target), "slide_score": result.slide_score,
                          "slide_call": s.get("slide_call"), "threshold": s.get("threshold"),
                          "seconds": round(float(s["seconds"]), 3), "patches_read": s["patches_read"],
                          "pixels_read": s["pixels_read"]}), flush=True)
    return 0


def _cohort(args) -> int:
    import sys

    from ..runtime.cohort import run_cohort
    from ._method_flags import collect

    def show(row, done, total):
        print(json.dumps(row), flush=True)
        if not args.quiet:
            print(f"[cohort {done}/{total}] {row['status']}: {row['slide']}", file=sys.stderr, flush=True)

    rows = run_cohort(args.method, args.slides, args.out, checkpoint=args.checkpoint,
                      device=args.device, overrides=collect(args, args.config_flags),
                      region=args.region, scheduler=args.scheduler, threads=args.threads, on_row=show)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"cohort: {len(rows) - len(failed)} of {len(rows)} slides done or skipped, {len(failed)} failed; "
          f"table in {Path(args.out) / 'cohort.csv'}", file=sys.stderr)
    return 1 if failed else 0
