"""``napari-glimpse view``: open a slide and the sample mosaic in napari, run the shipped models.

The sample mosaic (PCam patches with a known tumour mask) gets the layers of every registered
method with a bundled checkpoint, computed in the background and cached in the user cache
folder (``--rerun`` recomputes them).

Without a display (no ``$DISPLAY`` / ``$WAYLAND_DISPLAY``) or with ``--headless``, nothing is
shown: each viewer's canvas is saved as PNG with ``summary.json`` / ``summary.txt`` in
``--out``. Headless without a display, the command re-runs itself under ``xvfb-run -a``
(napari needs an OpenGL context; Qt's offscreen platform has none).
"""

from __future__ import annotations

import os
import shutil
import sys

_XVFB_GUARD = "NAPARI_GLIMPSE_UNDER_XVFB"


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "view",
        help="open a slide, the sample mosaic and results in napari (or save screenshots)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("slide", nargs="?", help="slide file (default: the bundled CMU-1-Small-Region)")
    p.add_argument("--result", action="append", default=[], metavar="DIR",
                   help="an inference result folder to overlay (repeatable)")
    p.add_argument("--no-mosaic", dest="mosaic", action="store_false",
                   help="do not open the sample tumour mosaic")
    p.add_argument("--no-models", dest="models", action="store_false",
                   help="do not run the shipped models on the sample mosaic")
    p.add_argument("--rerun", action="store_true",
                   help="recompute the models' results even when cached")
    p.add_argument("--headless", action="store_true",
                   help="show nothing; write screenshots + summary to --out and exit")
    p.add_argument("--out", default="view-out", metavar="DIR",
                   help="output folder for --headless (default: %(default)s)")
    p.add_argument("--size", type=int, nargs=2, default=(900, 1200), metavar=("H", "W"),
                   help="screenshot size in pixels (default: 900 1200)")
    p.set_defaults(func=view)


def _has_display() -> bool:
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _argv(args) -> list[str]:
    argv = ["view"]
    if args.slide:
        argv.append(args.slide)
    for r in args.result:
        argv += ["--result", r]
    if not args.mosaic:
        argv.append("--no-mosaic")
    if not args.models:
        argv.append("--no-models")
    if args.rerun:
        argv.append("--rerun")
    argv += ["--headless", "--out", args.out, "--size", *map(str, args.size)]
    return argv


def view(args) -> int:
    headless = args.headless or not _has_display()
    if headless and not _has_display():
        xvfb = shutil.which("xvfb-run")
        if xvfb is None or os.environ.get(_XVFB_GUARD):
            print("napari-glimpse view: no display and no xvfb-run; install xvfb "
                  "(apt-get install xvfb) to get screenshots", file=sys.stderr)
            return 2
        env = dict(os.environ, **{_XVFB_GUARD: "1"})
        cmd = [xvfb, "-a", sys.executable, "-m", "napari_glimpse", *_argv(args)]
        print("napari-glimpse view: no display, re-running under xvfb-run", file=sys.stderr)
        os.execvpe(xvfb, cmd, env)

    from .._napari._view import run_view

    code = run_view(
        slide=args.slide,
        results=args.result,
        mosaic=args.mosaic,
        models=args.models,
        rerun=args.rerun,
        headless=headless,
        out=args.out,
        size=tuple(args.size),
    )
    if headless:
        print(f"screenshots and summary written to {args.out}/")
        with open(os.path.join(args.out, "summary.txt")) as f:
            sys.stdout.write(f.read())
    return code
