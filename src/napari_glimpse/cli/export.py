"""``napari-glimpse export RESULT --out DIR``: a result folder as QuPath GeoJSON and OME-Zarr."""

from __future__ import annotations

import json


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a result folder as QuPath GeoJSON and OME-Zarr (NGFF) maps",
        description="Write RESULT's boxes, lines, points and segmented regions as one QuPath-"
                    "importable GeoJSON (level-0 pixels) and each of its maps as an OME-Zarr "
                    "image in micrometres (napari-ome-zarr and other NGFF viewers overlay it on the slide).")
    p.add_argument("result", metavar="RESULT", help="a folder written by `infer` (with summary.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-geojson", dest="geojson", action="store_false", help="skip the GeoJSON")
    p.add_argument("--no-ome-zarr", dest="ome_zarr", action="store_false", help="skip the OME-Zarr maps")
    p.set_defaults(func=export_cmd)


def export_cmd(args) -> int:
    from ..export import export_result

    print(json.dumps(export_result(args.result, args.out, geojson=args.geojson, ome_zarr=args.ome_zarr)))
    return 0
