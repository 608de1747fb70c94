"""Write a 100k x 100k px PCam mosaic with the streaming writer, then time the first view.

Each step runs in a fresh subprocess so its peak RSS is its own:

1. write the mosaic (slide + lossless mask + polygons) with ``make_mosaics(size=...)``:
   wall time and the writer process's peak RSS;
2. open it with ``open_slide`` and produce the first 1920 x 1080 view of the whole slide:
   pick the coarsest level that is still at least as fine as the screen needs
   (``best_level_for_downsample``), read it whole with ``read_region`` and fit it to the
   screen. Targets: < 1 s and < 500 MB.

The same first view of a 10k x 10k mosaic, written and opened in the same run, is the
baseline; the ratio says whether opening cost grows with slide size (it should not).

    nice python benchmarks/bench_open_100k.py [--size 100000] [--baseline 10000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCREEN = (1920, 1080)


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write(size: int, out: str) -> dict:
    from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics

    t = time.perf_counter()
    (m,) = make_mosaics(bundled_patches_dir(), out, 1, size=(size, size), seed=0,
                        positive_fraction=1.0, name=f"mosaic{size}")
    return {"path": str(m.path), "seconds": time.perf_counter() - t, "peak_rss_mb": _rss_mb(),
            "bytes": m.path.stat().st_size, "mask_bytes": m.mask_path.stat().st_size}


def _first_view(path: str) -> dict:
    t0 = time.perf_counter()
    import numpy as np
    from PIL import Image

    from napari_glimpse.slides import open_slide

    t_import = time.perf_counter() - t0
    rss_import = _rss_mb()
    t = time.perf_counter()
    with open_slide(path) as slide:
        w, h = slide.dimensions
        need = max(w / SCREEN[0], h / SCREEN[1])
        level = slide.best_level_for_downsample(need)
        lv = slide.levels[level]
        region = slide.read_region((0, 0), level, (lv.width, lv.height))
        scale = min(SCREEN[0] / lv.width, SCREEN[1] / lv.height, 1.0)
        view = np.asarray(Image.fromarray(region).resize(
            (max(1, round(lv.width * scale)), max(1, round(lv.height * scale))),
            Image.BILINEAR))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "import_seconds": t_import, "peak_rss_mb": _rss_mb(),
            "rss_after_import_mb": rss_import, "level": level,
            "level_size": [lv.width, lv.height], "downsample": lv.downsample,
            "view_shape": list(view.shape), "view_mean": float(view.mean())}


def _child(*args: str) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=False)
    if res.returncode:
        raise SystemExit(f"child {args} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--baseline", type=int, default=10_000)
    ap.add_argument("--out", default=None, help="keep the slides here (default: temp, removed)")
    ap.add_argument("--repeat", type=int, default=3, help="first-view runs (fresh processes)")
    ap.add_argument("--_write", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_view", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._write:
        print(json.dumps(_write(int(a._write[0]), a._write[1])))
        return
    if a._view:
        print(json.dumps(_first_view(a._view)))
        return

    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="glimpse-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows = {}
        for size in (a.baseline, a.size):
            w = _child("--_write", str(size), str(out))
            views = [_child("--_view", w["path"]) for _ in range(a.repeat)]
            best = min(views, key=lambda v: v["seconds"])
            best["peak_rss_mb"] = max(v["peak_rss_mb"] for v in views)
            rows[size] = (w, best)
            print(f"{size:>7} px: wrote slide {w['bytes'] / 2**20:8.1f} MiB + mask "
                  f"{w['mask_bytes'] / 2**20:6.1f} MiB in {w['seconds']:7.1f} s, writer peak RSS "
                  f"{w['peak_rss_mb']:6.0f} MB | first view: level {best['level']} "
                  f"({best['level_size'][0]} x {best['level_size'][1]}, ds "
                  f"{best['downsample']:.0f}) in {best['seconds']:.3f} s (best of "
                  f"{a.repeat}; imports {best['import_seconds']:.2f} s), peak RSS "
                  f"{best['peak_rss_mb']:.0f} MB ({best['rss_after_import_mb']:.0f} MB "
                  "after imports)", flush=True)
        (wb, vb), (wl, vl) = rows[a.baseline], rows[a.size]
        px = (a.size / a.baseline) ** 2
        print(f"ratios {a.size} / {a.baseline} ({px:.0f}x the pixels): first view time "
              f"{vl['seconds'] / vb['seconds']:.2f}x, first view RSS "
              f"{vl['peak_rss_mb'] / vb['peak_rss_mb']:.2f}x, write time "
              f"{wl['seconds'] / wb['seconds']:.1f}x, writer RSS "
              f"{wl['peak_rss_mb'] / wb['peak_rss_mb']:.2f}x")
        ok = vl["seconds"] < 1.0 and vl["peak_rss_mb"] < 500
        print(f"targets (< 1 s, < 500 MB) for the {a.size} px first view: "
              f"{'met' if ok else 'NOT met'}")
    finally:
        if not a.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
