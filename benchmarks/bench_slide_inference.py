"""Whole-slide CELNet inference on a PCam mosaic: windows/s and peak RSS (bounded memory).

Writes a SIZE x SIZE pyramidal TIFF (default 20000) at 0.972 um/px whose tissue is a disc
of real PCam patches on a white background, then runs ``infer_celnet`` over the tissue.

    nice python benchmarks/bench_slide_inference.py [--size 20000] [--stride 32] [--celm] [--tile-size PX]
        [--checkpoint shipped|PATH] [--tta]

Without ``--checkpoint`` the model is a paper-size CELNet (3 blocks) with random weights; with
``shipped`` it is the package's default checkpoint (what a user runs).
"""

from __future__ import annotations

import argparse
import glob
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_glimpse.methods import load_model
from napari_glimpse.methods.celnet.inference import infer_celnet
from napari_glimpse.methods.celnet.model import CELNet, CELNetConfig
from napari_glimpse.runtime.cpu_memory import keep_freed_memory
from napari_glimpse.slides.writer import write_pyramid


def mosaic_tiles(size: int, tile: int, patches: list[np.ndarray]):
    """Row-major tiles; a disc of radius size/3 holds PCam patches on a 96-px lattice."""
    c, rad = size / 2, size / 3
    for ty in range(0, size, tile):
        for tx in range(0, size, tile):
            out = np.full((min(tile, size - ty), min(tile, size - tx), 3), 255, np.uint8)
            for y in range(ty - ty % 96, ty + out.shape[0], 96):
                for x in range(tx - tx % 96, tx + out.shape[1], 96):
                    if (x + 48 - c) ** 2 + (y + 48 - c) ** 2 > rad**2:
                        continue
                    pt = patches[(x // 96 * 7919 + y // 96 * 104729) % len(patches)]
                    y0, x0 = max(y, ty), max(x, tx)
                    y1, x1 = min(y + 96, ty + out.shape[0]), min(x + 96, tx + out.shape[1])
                    out[y0 - ty : y1 - ty, x0 - tx : x1 - tx] = pt[y0 - y : y1 - y, x0 - x : x1 - x]
            yield out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--celm", action="store_true")
    ap.add_argument("--tile-size", type=int, help="tile input px, context included (default: the method's)")
    ap.add_argument("--tta", action="store_true", help="8 rotations / flips per window")
    ap.add_argument("--checkpoint", help="'shipped' or a CELNet checkpoint (default: random paper-size model)")
    ap.add_argument("--patches", default=str(Path(__file__).resolve().parents[2] / "shared/data/pcam/valid"),
                    help="PCam folder for the mosaic (default: ../shared/data/pcam/valid beside the checkout)")
    ap.add_argument("--default-allocator", action="store_true",
                    help="leave glibc's allocator as it is (the CLI and widgets call keep_freed_memory)")
    a = ap.parse_args()
    if not a.default_allocator:
        keep_freed_memory()
    files = sorted(glob.glob(f"{a.patches}/*/*.jpg"))[:400]
    patches = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mosaic.tif"
        t0 = time.perf_counter()
        write_pyramid(path, a.size, a.size, mosaic_tiles(a.size, 512, patches), mpp=0.972)
        t_write = time.perf_counter() - t0
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if a.checkpoint:
            loaded = load_model("celnet", None if a.checkpoint == "shipped" else a.checkpoint, "cpu")
            model, ckpt = loaded.model, loaded.checkpoint
        else:
            torch.manual_seed(0)
            model, ckpt = CELNet(CELNetConfig()).eval(), "random paper-size CELNet"
        kw = {"tile_size": a.tile_size} if a.tile_size else {}
        gen = infer_celnet(str(path), model, stride=a.stride, celm=a.celm, tta=a.tta, **kw)
        t0 = time.perf_counter()
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                result = stop.value
                break
        dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = result.summary
    windows = int((result.maps[0].data > 0).sum())
    level0_mb = a.size * a.size * 3 / 2**20
    print(f"mosaic {a.size} x {a.size} px written in {t_write:.0f} s; stride {a.stride}, celm={a.celm}, "
          f"tile size {a.tile_size or 'default'}, "
          f"tta={a.tta}, threads {torch.get_num_threads()}; model: {ckpt}")
    print(f"inference {dt:.1f} s: {s['patches_read']} tiles, {windows} tissue windows "
          f"({windows / dt:.0f} windows/s), {s['pixels_read'] / 1e6:.0f} Mpx read "
          f"({s['pixels_read'] / (a.size * a.size):.2f} x level 0)")
    print(f"peak RSS {rss:.0f} MiB (before inference {rss0:.0f} MiB); level 0 decoded would be "
          f"{level0_mb:.0f} MiB; ratio {rss / level0_mb:.2f}")
    print(f"slide score {result.slide_score:.4f}")


if __name__ == "__main__":
    main()
