"""Random 512 x 512 level-0 reads: Slide.read_region vs decoding the same tiles with tifffile.

Run: ``python benchmarks/bench_read_region.py [--side 20000] [--reads 300]``. Writes a large
synthetic tiled JPEG TIFF into a temp folder, then times, in one run and on the same random
locations: (a) the baseline, decoding the tiles under each region straight from the page
with tifffile and pasting them; (b) ``Slide.read_region``; (c) OpenSlide's ``read_region``
when openslide-python is installed. Also runs on the CMU-1 svs from tests/data.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_glimpse.slides import open_slide

SVS = Path(__file__).resolve().parents[1] / "tests" / "data" / "cmu-1-small-region.svs"


def tiles(side: int, tile: int):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:tile, 0:tile]
    base = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
    for i in range((-(-side // tile)) ** 2):
        yield (base + rng.integers(0, 64, (1, 1, 3)).astype(np.uint8) + (i % 64)).astype(np.uint8)


def baseline_reader(path):
    tif = tifffile.TiffFile(path)
    page = tif.pages.first
    fh = tif.filehandle
    th, tw = page.chunks[:2]
    nx = page.chunked[1]

    def read(x, y, w=512, h=512):
        out = np.empty((h, w, 3), np.uint8)
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                i = ty * nx + tx
                fh.seek(page.dataoffsets[i])
                data = fh.read(page.databytecounts[i])
                seg = page.decode(data, i, jpegtables=page.jpegtables)[0]
                seg = seg.reshape(seg.shape[-3:])
                y0, x0 = ty * th, tx * tw
                ya, yb = max(y, y0), min(y + h, y0 + th)
                xa, xb = max(x, x0), min(x + w, x0 + tw)
                out[ya - y : yb - y, xa - x : xb - x] = seg[ya - y0 : yb - y0, xa - x0 : xb - x0]
        return out

    return read, tif


def bench(path, reads: int, rounds: int = 5) -> None:
    """Time the readers on the same random locations, interleaved; best round of each."""
    try:
        import openslide
    except ImportError:
        openslide = None
    best: dict[str, float] = {}
    with open_slide(path) as slide:
        w, h = slide.dimensions
        base, tif = baseline_reader(path)
        osr = openslide.OpenSlide(str(path)) if openslide is not None else None
        readers = {
            "tifffile tile decode (baseline)": lambda x, y: base(x, y),
            "Slide.read_region": lambda x, y: slide.read_region((x, y), 0, (512, 512)),
        }
        if osr is not None:
            readers["OpenSlide.read_region"] = lambda x, y: osr.read_region((x, y), 0, (512, 512))
        names = list(readers)
        for r in range(rounds):
            # Fresh locations each round; readers alternate read by read (order rotating)
            # so that load from other processes falls on all of them alike.
            rng = np.random.default_rng(r)
            locs = np.stack([rng.integers(0, w - 512, reads), rng.integers(0, h - 512, reads)], 1)
            spent = dict.fromkeys(names, 0.0)
            for i, (x, y) in enumerate(locs):
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    t0 = time.perf_counter()
                    readers[name](int(x), int(y))
                    spent[name] += time.perf_counter() - t0
            for name in names:
                best[name] = min(best.get(name, np.inf), spent[name])
        x, y = (int(v) for v in locs[0])
        assert np.array_equal(slide.read_region((x, y), 0, (512, 512)), base(x, y))
        decoded = slide._backend.decoded_tiles()
        tif.close()
        if osr is not None:
            osr.close()
    print(
        f"\n{Path(path).name}: {w} x {h}, {reads} random 512 x 512 level-0 reads, best of {rounds}"
    )
    for name, secs in best.items():
        print(f"  {name:34s} {reads / secs:8.1f} reads/s  ({secs:.2f} s)")
    print(
        f"  (Slide decoded {decoded} tiles in {rounds * reads} reads; the rest came from its cache)"
    )
    ratio = best["tifffile tile decode (baseline)"] / best["Slide.read_region"]
    print(f"  ratio Slide / baseline throughput: {ratio:.2f} (target >= 0.8)")
    if "OpenSlide.read_region" in best:
        print(f"  ratio Slide / OpenSlide throughput: "
              f"{best['OpenSlide.read_region'] / best['Slide.read_region']:.2f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=20000)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--reads", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.tif"
        t0 = time.perf_counter()
        tifffile.imwrite(
            path, tiles(args.side, args.tile), shape=(args.side, args.side, 3), dtype=np.uint8,
            tile=(args.tile, args.tile), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
            bigtiff=True, resolution=(2e4, 2e4), resolutionunit="CENTIMETER",
        )  # fmt: skip
        print(f"wrote {path.name} ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        bench(path, args.reads)
    bench(SVS, args.reads)


if __name__ == "__main__":
    main()
