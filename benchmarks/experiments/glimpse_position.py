"""How much 'All' owes to its grid: C's slide AUC when the leaf tiles sit on k x k offset grids.

'All' classifies the leaf tiles of one fixed grid per region. The tree's leaves sit wherever the
policy puts them, so the tree is an approximate maximiser of C over (nearly) continuous leaf
positions. When C's score depends on where a structure falls in the glimpse, the maximum over
more positions rises on negative slides as well as positive ones, and the slide AUC of "max over
positions" can fall below the grid's. This benchmark measures that: for each slide, C's maximum
over the grid ('All'), and over ``k * k`` grids offset by multiples of ``leaf / k`` in x and y
(``k = 2``: 4x the tiles, the offsets half a leaf; tiles that would hang over the slide's edge
are left out). Each offset grid is as valid an 'All' as the first, so the spread of their AUCs
is how much 'All' itself depends on where its grid starts. Nothing is learnt: these are C's
maxima, and the maximum over all grids is what a perfect policy would find with leaves
restricted to those positions.

    python benchmarks/experiments/glimpse_position.py --model mil --data runs/glimpse/val --k 2 --json bench-out/position.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/glimpse/val", help="slides + labels.csv")
    p.add_argument("--model", default="mil", help="checkpoint or shipped name (supervised, mil)")
    p.add_argument("--k", type=int, default=2, help="offsets per axis: leaf / k apart")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write per-slide maxima and the AUCs here")
    args = p.parse_args(argv)

    import torch

    from napari_glimpse.evaluate import roc_auc
    from napari_glimpse.methods import load_model
    from napari_glimpse.methods.glimpse_tree.data import find_slides
    from napari_glimpse.methods.glimpse_tree.inference import GlimpseReader, plan_regions, run_all
    from napari_glimpse.slides import open_slide
    from napari_glimpse.slides.tissue import tissue_mask

    torch.set_num_threads(args.threads)
    loaded = load_model("glimpse-tree", args.model, "cpu")
    model, cfg, path = loaded.model, loaded.config, loaded.checkpoint
    items = [i for i in find_slides(args.data, need="labels") if i.label is not None]
    y = np.array([i.label for i in items])
    if len(set(y)) < 2:
        raise SystemExit(f"{args.data}: need slides of both labels in labels.csv")
    offset = np.zeros((len(items), args.k, args.k))  # [slide, y offset, x offset]; [:, 0, 0] is All
    t0 = time.perf_counter()
    for n, item in enumerate(items):
        with open_slide(item.path) as slide:
            reader = GlimpseReader(slide, cfg)
            mask = tissue_mask(slide, cfg.tissue, max_size=cfg.tissue_size)
            boxes = plan_regions(slide.dimensions, mask, cfg.region_size * reader.working_downsample)
            tile = cfg.glimpse_size * reader.downsample(cfg.levels)
            for oy in range(args.k):
                for ox in range(args.k):
                    dx, dy = ox * tile / args.k, oy * tile / args.k
                    shifted = [(b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy) for b in boxes]
                    offset[n, oy, ox] = max(_inside_max(run_all(model, reader, b, mask, 0.0), b[0], b[1], tile,
                                                        slide.dimensions) for b in shifted)
        print(f"{Path(item.path).name}  label {item.label}  grid {offset[n, 0, 0]:.3f}  offsets {offset[n].max():.3f}",
              file=sys.stderr, flush=True)
    grid, fine = offset[:, 0, 0], offset.reshape(len(items), -1).max(1)
    res = {"data": str(args.data), "model": str(path), "k": args.k, "slides": len(items), "labels": y.tolist(),
           "grid": grid.tolist(), "offsets": offset.tolist(), "auc_grid": roc_auc(y, grid),
           "auc_offsets": roc_auc(y, fine), "seconds": time.perf_counter() - t0,
           "auc_each_grid": [[roc_auc(y, offset[:, oy, ox]) for ox in range(args.k)] for oy in range(args.k)],
           "negatives_raised": float(np.mean(fine[y == 0] - grid[y == 0])),
           "positives_raised": float(np.mean(fine[y == 1] - grid[y == 1]))}
    print(f"{len(items)} slides ({int(y.sum())} with tumour), model {path}\n"
          f"All on the grid: AUC {res['auc_grid']:.4f}\n"
          f"All on each offset grid (each as valid an 'All'): AUC {_span(res['auc_each_grid'])}\n"
          f"max over {args.k}x{args.k} offset grids ({args.k ** 2}x the tiles): AUC {res['auc_offsets']:.4f} "
          f"(difference {res['auc_offsets'] - res['auc_grid']:+.4f})\n"
          f"mean rise of the slide score: negatives {res['negatives_raised']:+.3f}, "
          f"positives {res['positives_raised']:+.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


def _inside_max(scores: np.ndarray, x0: float, y0: float, tile: float, dimensions) -> float:
    """C's maximum over the tiles of an All map that lie wholly on the slide: a shifted grid's last
    row and column hang over the edge, and the white the reader fills in there is not tissue."""
    starts = np.arange(scores.shape[0]) * tile
    ok_x = (x0 + starts >= 0) & (x0 + starts + tile <= dimensions[0] + 1e-6)
    ok_y = (y0 + starts >= 0) & (y0 + starts + tile <= dimensions[1] + 1e-6)
    inside = np.where(np.outer(ok_y, ok_x), scores, np.nan)
    return float(np.nanmax(inside)) if np.isfinite(inside).any() else 0.0


def _span(aucs) -> str:
    flat = np.ravel(aucs)
    return f"{flat.min():.4f} to {flat.max():.4f} (mean {flat.mean():.4f}, {flat.size} grids)"


if __name__ == "__main__":
    raise SystemExit(main())
