"""``napari-glimpse make-mosaic``: synthetic slides with known tumour ground truth from PCam patches."""

from __future__ import annotations

import argparse


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "make-mosaic",
        help="write mosaic slides of PCam patches with tumour masks, polygons and labels",
        description="Tile real 96 px PCam patches into pyramidal TIFF slides (tissue shapes on "
        "glass, tumour regions on positive slides) with <name>.mask.tif, <name>.geojson, "
        "<name>.cells.json and labels.csv.",
    )
    p.add_argument(
        "--patches",
        default=None,
        help="folder with 0/ (normal) and 1/ (tumour) patches (default: the "
        "bundled bank of 150 + 150 PCam patches)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--count", type=int, default=1, help="number of slides (default 1)")
    shape = p.add_mutually_exclusive_group(required=True)
    shape.add_argument(
        "--grid", type=int, nargs=2, metavar=("ROWS", "COLS"), help="cells per slide (96 px each)"
    )
    shape.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        help="slide size in pixels instead of --grid",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--positive-fraction",
        type=float,
        default=0.5,
        help="fraction of slides with tumour (default 0.5)",
    )
    p.add_argument(
        "--tumour-fraction",
        type=float,
        default=0.15,
        help="largest share of a slide's tissue a tumour region may take",
    )
    p.add_argument("--mpp", type=float, default=None, help="um/px (default 0.972, PCam 10x)")
    p.add_argument("--name", default=None, help="file stem (default mosaic_000, ...)")
    p.add_argument(
        "--lattice-offset",
        action="store_true",
        help="start each slide's cell lattice at a random sub-cell offset (real slides never "
        "line up with a model's grid); use it for every set you evaluate on",
    )
    p.add_argument(
        "--mask-classes",
        action="store_true",
        help="masks of class indices (0 glass, 1 normal tissue, 2 tumour) with a classes.txt: a "
        "segmentation data set (RAZN); default 255 on tumour",
    )
    p.add_argument(
        "--max-patches-per-class",
        type=int,
        default=1000,
        help="decode at most this many patches per class (memory; default 1000)",
    )
    p.set_defaults(func=_make_mosaic)


def _make_mosaic(args: argparse.Namespace) -> int:
    from ..mosaic import PCAM_MPP, bundled_patches_dir, make_mosaics

    made = make_mosaics(
        args.patches or bundled_patches_dir(),
        args.out,
        count=args.count,
        grid=tuple(args.grid) if args.grid else None,
        size=tuple(args.size) if args.size else None,
        seed=args.seed,
        positive_fraction=args.positive_fraction,
        tumour_fraction=args.tumour_fraction,
        mpp=args.mpp or PCAM_MPP,
        name=args.name,
        lattice_offset=args.lattice_offset,
        mask_classes=args.mask_classes,
        max_patches_per_class=args.max_patches_per_class,
    )
    for m in made:
        w, h = m.dimensions
        print(f"{m.path}  {w} x {h} px  label {m.label}  tumour cells {len(m.tumour_cells)}"
              f"  lattice offset {m.lattice_offset[0]} {m.lattice_offset[1]}")
    return 0
