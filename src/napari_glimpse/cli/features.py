"""``napari-glimpse features [--encoder E] SLIDE... --out DIR``: patch-feature grids into a cache.

DIR is the feature cache (see :mod:`napari_glimpse.features.cache`): extract once on a GPU,
copy DIR, and train feature-based heads anywhere; a second run on a slide reads the cache.
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "features",
        help="extract patch-feature grids of slides into a cache folder",
        description="Encode the tissue cells of a grid of non-overlapping patches over each slide "
        "and store the grid in DIR (zarr, one group per slide, encoder and grid parameters). "
        "Slides already in DIR are read, not recomputed.",
    )
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
    p.add_argument("--out", required=True, metavar="DIR", help="feature cache folder")
    # no default here: importing the encoders would import torch whenever the CLI is built
    p.add_argument("--encoder", help="encoder name, NAME=WEIGHTS or checkpoint (default: the shipped PCam encoder)")
    p.add_argument("--patch-px", type=int, help="patch edge in pixels (default: the encoder's)")
    p.add_argument("--mpp", type=float, help="um/px of the patches (default: the encoder's)")
    p.add_argument("--tissue-min", type=float, default=0.25,
                   help="least tissue fraction of an encoded patch (default 0.25)")
    p.add_argument("--batch-size", type=int, default=128, help="patches per encoder pass (default 128)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=features_cmd)


def features_cmd(args) -> int:
    from ..encoders import DEFAULT_ENCODER, load_encoder
    from ..errors import GlimpseError
    from ..features.cache import iter_cached_grid_features
    from ..runtime.device import resolve_device
    from ._progress import drive

    for flag, value in (("--patch-px", args.patch_px), ("--mpp", args.mpp), ("--batch-size", args.batch_size)):
        if value is not None and value <= 0:
            raise GlimpseError(f"{flag} must be positive, not {value}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        encoder = load_encoder(args.encoder or DEFAULT_ENCODER, device)
    except ValueError as exc:
        raise GlimpseError(str(exc)) from None
    failed = 0
    for path in args.slides:
        try:
            grid = drive(iter_cached_grid_features(
                path, encoder, cache=args.out, patch_px=args.patch_px, mpp=args.mpp,
                tissue_min=args.tissue_min, batch_size=args.batch_size, device=device),
                desc=f"{Path(path).name}:")
        except GlimpseError as exc:
            print(f"napari-glimpse: error: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        meta = grid.meta
        m, n = grid.shape
        seconds = float(meta["seconds"])
        rate = f"{meta['patches_read'] / seconds:.1f} patches/s" if not meta["cached"] and seconds > 0 else "-"
        print(f"{path}  {'cached' if meta['cached'] else 'computed'}  grid {m} x {n}  "
              f"tissue cells {int(grid.tissue.sum())}  {rate}  {seconds:.2f} s", flush=True)
    if failed:
        print(f"napari-glimpse: {failed} of {len(args.slides)} slides failed", file=sys.stderr)
    return 1 if failed else 0
