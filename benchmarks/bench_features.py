"""Patch-feature grids on a mosaic slide: patches/s, cache read vs compute, peak RSS growth.

    nice python benchmarks/bench_features.py [--size 4000] [--threads 1]

A ``--size`` square mosaic of real PCam patches is written to a temporary folder by a
separate ``make-mosaic`` process (so its memory is not this one's peak). For each encoder
(``small``, untrained, and ``pcam``, the shipped weights, skipped with the reason when they
do not load) the grid is computed into an empty cache, then read back from it; the peak
RSS growth of the compute is printed beside the size of the (M, N, K) float16 output.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from napari_glimpse.encoders import load_encoder
from napari_glimpse.errors import GlimpseError
from napari_glimpse.features.cache import cached_grid_features


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "napari_glimpse", "make-mosaic", "--size", str(a.size), str(a.size),
                        "--out", tmp, "--positive-fraction", "1", "--seed", "3"], check=True, capture_output=True)
        slide = Path(tmp) / "mosaic_000.tif"
        print(f"mosaic {a.size} x {a.size} px ({slide.stat().st_size / 2**20:.1f} MiB), "
              f"torch threads {torch.get_num_threads()}")
        for name in ("small", "pcam"):
            try:
                encoder = load_encoder(name)
            except GlimpseError as exc:
                print(f"{name}: skipped ({exc})")
                continue
            encoder(torch.zeros(2, 3, encoder.patch_px, encoder.patch_px))  # warm-up outside the timing
            cache = Path(tmp) / f"cache-{name}"
            before = _peak_mib()
            t0 = time.perf_counter()
            grid = cached_grid_features(slide, encoder, cache=cache)
            t_compute = time.perf_counter() - t0
            growth = _peak_mib() - before
            t0 = time.perf_counter()
            hit = cached_grid_features(slide, encoder, cache=cache)
            t_read = time.perf_counter() - t0
            assert hit.meta["cached"] and not grid.meta["cached"]
            m, n = grid.shape
            patches = grid.meta["patches_read"]
            out_mib = grid.features.nbytes / 2**20
            print(f"{name}: grid {m} x {n}, {patches} tissue patches of {encoder.patch_px} px, "
                  f"K = {encoder.feature_dim}")
            print(f"  compute {t_compute:7.2f} s  ({patches / t_compute:7.1f} patches/s, tissue mask included)")
            print(f"  cache   {t_read:7.3f} s  (compute / cache read = {t_compute / t_read:.0f}x)")
            print(f"  peak RSS growth {growth:6.1f} MiB (output {out_mib:.1f} MiB; "
                  f"pixels read {grid.meta['pixels_read'] / 1e6:.1f} M)")


if __name__ == "__main__":
    main()
