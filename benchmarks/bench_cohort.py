"""Cohort inference: a serial run against a 2-worker Dask LocalCluster, with a broken slide.

    nice python benchmarks/bench_cohort.py [--slides 6] [--grid 24] [--method celnet]

Writes ``--slides`` PCam mosaics (``--grid`` cells a side, lattice offset) and one truncated
TIFF to a temporary folder, then runs ``run_cohort`` serially (torch on every core) and on
``local:2`` (two worker processes, the cores shared between them), each into its own
folder, in the same process and the same minute (these machines are noisy). Prints the wall
time of each, their ratio, whether the scores agree, and that the broken slide is reported
while the others finish. A third run on the serial folder shows the resume (all skipped).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics
from napari_glimpse.runtime.cohort import run_cohort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--grid", type=int, default=24)
    ap.add_argument("--method", default="celnet")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        made = make_mosaics(bundled_patches_dir(), tmp / "slides", count=a.slides, grid=(a.grid, a.grid),
                            seed=5, lattice_offset=True)
        slides = [tmp / "slides" / f"{m.name}.tif" for m in made]
        broken = tmp / "slides" / "broken.tif"
        broken.write_bytes(slides[0].read_bytes()[:4000])
        slides.insert(len(slides) // 2, broken)
        times, rows = {}, {}
        for name, scheduler in (("serial", "serial"), ("local:2", "local:2")):
            t0 = time.perf_counter()
            rows[name] = run_cohort(a.method, slides, tmp / name.replace(":", "_"), scheduler=scheduler)
            times[name] = time.perf_counter() - t0
            st = [r["status"] for r in rows[name]]
            print(f"{name:8s} {times[name]:7.1f} s  done {st.count('done')}  failed {st.count('failed')}")
        t0 = time.perf_counter()
        again = run_cohort(a.method, slides, tmp / "serial", scheduler="serial")
        resume = time.perf_counter() - t0
        same = all(abs((s["slide_score"] or 0) - (d["slide_score"] or 0)) < 1e-6
                   for s, d in zip(rows["serial"], rows["local:2"], strict=True))
        failed = next(r for r in rows["local:2"] if r["status"] == "failed")
        print(f"ratio serial / local:2 = {times['serial'] / times['local:2']:.2f} "
              f"({a.slides} slides of {a.grid * 96} px + 1 broken, {a.method})")
        print(f"scores equal: {same}; broken slide: {failed['error'][:100]}")
        print(f"resume: {[r['status'] for r in again].count('skipped')} skipped, "
              f"{[r['status'] for r in again].count('failed')} retried-and-failed in {resume:.1f} s")


if __name__ == "__main__":
    main()
