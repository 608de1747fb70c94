"""Dense CELNet probability map on a 4096 x 4096 region: fully convolutional vs per patch.

Both produce the map at the same stride. The per-patch baseline is the exact reference
(``classify_with_context``: each window read with the network's context margin); at
stride 32 it has 16k windows, so a random subset is timed and the time extrapolated (the
output says so), and the maps are compared on that subset. A second baseline classifies
bare 96-px windows with ``forward`` (zero-padded, not equal to the dense map, but what a
naive patch pipeline would do).

    nice python benchmarks/bench_dense_map.py [--size 4096] [--stride 32] [--subset 64] [--stem-stride 2]

The model is a paper-size CELNet (3 blocks, 16/32/64) with random weights; ``--stem-stride 2``
gives it the shipped checkpoint's stride-2 head.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_glimpse.methods.celnet.inference import dense_tile_probabilities, tile_cells_for
from napari_glimpse.methods.celnet.model import CELNet, CELNetConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--subset", type=int, default=64)
    ap.add_argument("--tile-size", type=int, default=1536)
    ap.add_argument("--stem-stride", type=int, default=1, choices=(1, 2))
    a = ap.parse_args()
    torch.manual_seed(0)
    model = CELNet(CELNetConfig(stem_stride=a.stem_stride)).eval()
    p, m, s = model.config.patch_size, model.context_margin, a.stride
    n_cells = a.size // s
    # A real-looking region: PCam-free random texture is enough for timing; values compared exactly.
    rng = np.random.default_rng(0)
    big = n_cells * s + p + 2 * m
    region = np.kron(rng.integers(0, 256, (big // 4 + 1, big // 4 + 1, 3), dtype=np.uint8),
                     np.ones((4, 4, 1), np.uint8))[:big, :big]
    # Window (r, c) has top-left (m + r*s, m + c*s) in `region`; its context starts at (r*s, c*s).
    t = tile_cells_for(model, s, a.tile_size)
    dense = np.zeros((n_cells, n_cells), np.float32)
    t0 = time.perf_counter()
    for r0 in range(0, n_cells, t):
        for c0 in range(0, n_cells, t):
            size = (t - 1) * s + p + 2 * m
            tile = np.full((size, size, 3), 255, np.uint8)
            crop = region[r0 * s : r0 * s + size, c0 * s : c0 * s + size]
            tile[: crop.shape[0], : crop.shape[1]] = crop
            out = dense_tile_probabilities(model, tile[None], t, s)[0]
            rr, cc = min(t, n_cells - r0), min(t, n_cells - c0)
            dense[r0 : r0 + rr, c0 : c0 + cc] = out[:rr, :cc]
    t_dense = time.perf_counter() - t0

    idx = rng.choice(n_cells * n_cells, size=min(a.subset, n_cells * n_cells), replace=False)
    ref = np.zeros(len(idx), np.float32)
    x = torch.from_numpy(region).permute(2, 0, 1).float().div(255)
    t0 = time.perf_counter()
    with torch.no_grad():
        for k0 in range(0, len(idx), 16):
            sel = idx[k0 : k0 + 16]
            batch = torch.stack([x[:, (i // n_cells) * s : (i // n_cells) * s + p + 2 * m,
                                   (i % n_cells) * s : (i % n_cells) * s + p + 2 * m] for i in sel])
            ref[k0 : k0 + len(sel)] = torch.sigmoid(model.classify_with_context(batch)).numpy()
    t_ctx = (time.perf_counter() - t0) / len(idx) * n_cells * n_cells
    t0 = time.perf_counter()
    with torch.no_grad():
        for k0 in range(0, len(idx), 64):
            sel = idx[k0 : k0 + 64]
            batch = torch.stack([x[:, m + (i // n_cells) * s : m + (i // n_cells) * s + p,
                                   m + (i % n_cells) * s : m + (i % n_cells) * s + p] for i in sel])
            model(batch)
    t_bare = (time.perf_counter() - t0) / len(idx) * n_cells * n_cells

    diff = float(np.abs(dense.ravel()[idx] - ref).max())
    assert diff <= 1e-4, f"dense map differs from per-patch classification by {diff}"
    print(f"CELNet 3 blocks, stem stride {a.stem_stride}; "
          f"region {a.size} x {a.size} px, stride {s}, {n_cells * n_cells} windows, "
          f"context margin {m} px, tile {t} x {t} windows, threads {torch.get_num_threads()}")
    print(f"fully convolutional:        {t_dense:8.1f} s  ({n_cells * n_cells / t_dense:7.0f} windows/s)")
    print(f"per patch with context:     {t_ctx:8.1f} s  (extrapolated from {len(idx)} random windows)")
    print(f"per bare 96-px patch:       {t_bare:8.1f} s  (extrapolated from {len(idx)} random windows)")
    print(f"max |dense - per patch| on those windows: {diff:.2e}")
    print(f"speed-up vs exact per-patch: {t_ctx / t_dense:.1f}x; vs bare patches: {t_bare / t_dense:.1f}x")


if __name__ == "__main__":
    main()
