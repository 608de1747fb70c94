"""``napari-glimpse info SLIDE``: what a slide holds, as JSON."""

from __future__ import annotations

import json


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a slide's levels, pixel size and images as JSON")
    p.add_argument("slide", help="path to a slide (SVS, OME-TIFF, NDPI, TIFF, PNG, JPEG)")
    p.set_defaults(func=info)


def slide_info(path: str) -> dict:
    """The JSON-ready summary that ``info`` prints."""
    from ..slides import open_slide

    with open_slide(path) as slide:
        return {
            "path": slide.path,
            "format": slide.format,
            "levels": [
                {"width": lv.width, "height": lv.height, "downsample": lv.downsample}
                for lv in slide.levels
            ],
            "mpp": None if slide.mpp is None else [slide.mpp[0], slide.mpp[1]],
            "magnification": slide.magnification,
            "associated": slide.associated,
        }


def info(args) -> int:
    print(json.dumps(slide_info(args.slide), indent=2))
    return 0
