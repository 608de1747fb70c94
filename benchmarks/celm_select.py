"""Choose CELM's fusion weights a, b and the evidence threshold on validation mosaics
(METHODS.md section 5: "a and b chosen on validation data"), then check the choice on others.

Mosaics of real PCam *validation* patches with known tumour cells (all positive). Every (a, b)
pair is one slide run with CELM. a and b are chosen by how well the evidence map ranks tumour
cells above the rest (AUC over evidence-map cells, threshold-free); the threshold then by the
Dice of the evidence mask with the tumour cells. Both are chosen on the selection mosaics
(seed 11) and reported with the paper defaults (a = b = 0.5, threshold 0.5) on separate check
mosaics (seed 12). The truth is per 96 px cell, so it rewards evidence that covers tumour
cells, not the detail inside them.

    python benchmarks/celm_select.py [--checkpoint CKPT] [--mosaics 6] [--json out.json] [--write OUT]

``--write OUT`` saves a copy of the checkpoint whose config holds the chosen a, b and threshold
(what ``infer celnet`` and the "Run model" form use unless told otherwise), with the selection's
figures in its header's ``edits``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_glimpse.evaluate import dice, roc_auc
from napari_glimpse.methods import infer, load_model
from napari_glimpse.methods.celnet.celm import evidence_mask
from napari_glimpse.mosaic import CELL_SIZE, make_mosaics
from napari_glimpse.runtime.checkpoint import edit_config
from napari_glimpse.runtime.cpu_memory import keep_freed_memory
from napari_glimpse.runtime.events import run_to_end

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def truth_on_map(mosaic, shape, cell_px: float, origin) -> np.ndarray:
    """The mosaic's tumour cells on the evidence map's grid (cell centres looked up)."""
    rows, cols = mosaic.grid
    tumour = np.zeros((rows, cols), bool)
    if len(mosaic.tumour_cells):
        tumour[mosaic.tumour_cells[:, 0], mosaic.tumour_cells[:, 1]] = True
    ys = ((origin[1] + (np.arange(shape[0]) + 0.5) * cell_px) // CELL_SIZE).astype(int).clip(0, rows - 1)
    xs = ((origin[0] + (np.arange(shape[1]) + 0.5) * cell_px) // CELL_SIZE).astype(int).clip(0, cols - 1)
    return tumour[np.ix_(ys, xs)]


def scores(model, mosaics, a: float, b: float, mask_sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(AUC per mosaic, Dice per (mosaic, threshold)) for one (a, b)."""
    aucs, dices = np.zeros(len(mosaics)), np.zeros((len(mosaics), len(THRESHOLDS)))
    for i, m in enumerate(mosaics):
        result = run_to_end(infer("celnet", str(m.path), model=model, celm_a=a, celm_b=b, nms_max_peaks=0))
        ev = next(mp for mp in result.maps if mp.name == "CELM evidence")
        cell = float(np.atleast_1d(ev.cell_size)[0])
        truth = truth_on_map(m, ev.data.shape, cell, ev.origin)
        aucs[i] = roc_auc(truth.ravel(), ev.data.ravel())
        for j, t in enumerate(THRESHOLDS):
            dices[i, j] = dice(evidence_mask(ev.data, t, mask_sigma).astype(bool), truth)
    return aucs, dices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="CELNet checkpoint (default: the shipped one)")
    ap.add_argument("--patches", default=str(Path(__file__).resolve().parents[2] / "shared/data/pcam/valid"))
    ap.add_argument("--mosaics", type=int, default=6, help="mosaics per set (selection, check)")
    ap.add_argument("--grid", type=int, default=12, help="cells per mosaic side")
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--write", help="save a copy of the checkpoint with the chosen values in its config")
    args = ap.parse_args()
    keep_freed_memory()
    model = load_model("celnet", args.checkpoint, "cpu")
    ckpt = model.checkpoint
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sets = {name: make_mosaics(args.patches, Path(tmp) / name, count=args.mosaics, grid=(args.grid, args.grid),
                                   seed=seed, positive_fraction=1.0, tumour_fraction=0.3, name=name)
                for name, seed in (("select", 11), ("check", 12))}
        grid = {}
        for a, b in itertools.product(WEIGHTS, WEIGHTS):
            auc, dices = scores(model, sets["select"], a, b)
            grid[(a, b)] = (float(auc.mean()), dices.mean(0))
            print(f"a={a:.2f} b={b:.2f} selection AUC {auc.mean():.4f}; Dice by threshold {THRESHOLDS}: "
                  + " ".join(f"{v:.3f}" for v in grid[(a, b)][1]), flush=True)
        a, b = max(grid, key=lambda k: grid[k][0])
        j = int(np.argmax(grid[(a, b)][1]))
        best_t = THRESHOLDS[j]
        auc_c, dice_c = scores(model, sets["check"], a, b)
        auc_d, dice_d = scores(model, sets["check"], 0.5, 0.5)
        chosen, default = dice_c[:, j], dice_d[:, THRESHOLDS.index(0.5)]
    print(f"checkpoint {ckpt}; {args.mosaics} + {args.mosaics} mosaics of {args.grid} x {args.grid} PCam valid "
          f"cells; {time.perf_counter() - t0:.0f} s")
    print(f"chosen on the selection mosaics: a={a}, b={b} (AUC {grid[(a, b)][0]:.4f}; a=b=0.5: "
          f"{grid[(0.5, 0.5)][0]:.4f}), evidence threshold {best_t} (Dice {grid[(a, b)][1][j]:.3f})")
    print(f"check mosaics: AUC chosen {auc_c.mean():.4f} +- {auc_c.std():.4f}, a=b=0.5 {auc_d.mean():.4f} "
          f"+- {auc_d.std():.4f}; Dice chosen {chosen.mean():.3f} +- {chosen.std():.3f}, "
          f"paper defaults (a=b=0.5, threshold 0.5) {default.mean():.3f} +- {default.std():.3f}; "
          f"a=b=0.5 at threshold {best_t}: {dice_d[:, j].mean():.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "checkpoint": ckpt, "chosen": {"celm_a": a, "celm_b": b, "evidence_threshold": best_t},
            "selection": {f"{k[0]},{k[1]}": {"auc": v[0], "dice": list(map(float, v[1]))} for k, v in grid.items()},
            "thresholds": THRESHOLDS, "check_auc_chosen": auc_c.tolist(), "check_auc_default": auc_d.tolist(),
            "check_dice_chosen": chosen.tolist(), "check_dice_default": default.tolist()}, indent=1))
    if args.write:
        edit_config(ckpt, args.write, {"celm_a": a, "celm_b": b, "evidence_threshold": best_t},
                    f"chosen by benchmarks/celm_select.py on {args.mosaics} + {args.mosaics} validation mosaics "
                    f"of {args.grid} x {args.grid} PCam cells: selection AUC {grid[(a, b)][0]:.4f}, Dice "
                    f"{grid[(a, b)][1][j]:.3f}; check Dice {chosen.mean():.3f} (paper defaults "
                    f"{default.mean():.3f})", expected_method="celnet")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
