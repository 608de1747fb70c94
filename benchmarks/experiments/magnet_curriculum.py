"""Can a MagNet learn PCam tumour at all? Stage 1 of a curriculum: smaller mosaics, large tumours.

    nice python benchmarks/experiments/magnet_curriculum.py --work DIR [--train 64] [--val 24]
        [--grid 52] [--epochs 10] [--min-cells 50] [--lr 3e-4] [--batch-size 8] [--init CKPT]

On 15,000 px mosaics with tumours from one cell up, a MagNet trained for 10 epochs on 2 CPU
cores stayed at chance (docs/magnet.md): its leaves were read at 4-10 um/px, where PCam cells
are 0.97, and half the positives held tumours under 50 cells. Here the mosaics are ``--grid``
cells a side (52: 4,992 px, where three layers of half-size fields end near 1.2 um/px) and every
positive holds a tumour of at least ``--min-cells`` cells. Training slides come from PCam train
(seed 111), validation slides from PCam valid (seed 222); positives are drawn until enough
pass the size filter, negatives are the same number of tumour-free mosaics. Trains
``train magnet`` with the shipped encoders, by default batch 8 and lr 3e-4 (docs/magnet.md's settings), and
prints the CLI's epoch lines (validation AUC each epoch). ``--init`` fine-tunes a stage-1
checkpoint (stage 2: the 15,000 px mosaics of the issue).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from napari_glimpse.mosaic import make_mosaics

PCAM = Path(__file__).resolve().parents[3] / "shared" / "data" / "pcam"


def _mosaics(patches: Path, out: Path, n: int, grid: int, seed: int, min_cells: int) -> None:
    """``n // 2`` positives with a tumour of ``min_cells`` or more and ``n - n // 2`` negatives."""
    if (out / "labels.csv").is_file():
        return
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rows, kept, batch = [], 0, 0
    while kept < n // 2:
        made = make_mosaics(patches, tmp / f"p{batch}", count=max(8, n // 2), grid=(grid, grid), seed=seed + batch,
                            positive_fraction=1.0, tumour_fraction=0.3, lattice_offset=True, name=f"pos{batch}",
                            max_patches_per_class=3000)
        for m in made:
            if len(m.tumour_cells) >= min_cells and kept < n // 2:
                rows.append((m, 1))
                kept += 1
        batch += 1
    neg = make_mosaics(patches, tmp / "n", count=n - n // 2, grid=(grid, grid), seed=seed + 1000,
                       positive_fraction=0.0, lattice_offset=True, name="neg", max_patches_per_class=3000)
    rows += [(m, 0) for m in neg]
    out.mkdir(parents=True, exist_ok=True)
    for m, _ in rows:
        for f in m.path.parent.glob(f"{m.path.stem}.*"):
            shutil.move(str(f), out / f.name)
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide", "label"])
        w.writerows((m.path.stem, label) for m, label in rows)
    (out / "tumour_cells.json").write_text(json.dumps({m.path.stem: len(m.tumour_cells) for m, _ in rows}))
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--val", type=int, default=24)
    ap.add_argument("--grid", type=int, default=52)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--min-cells", type=int, default=50)
    ap.add_argument("--init", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", default="3e-4")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--out", default="magnet.safetensors")
    a = ap.parse_args()
    tr, va = a.work / "train", a.work / "val"
    _mosaics(PCAM / "train", tr, a.train, a.grid, 111, a.min_cells)
    _mosaics(PCAM / "valid", va, a.val, a.grid, 222, a.min_cells)
    cmd = [sys.executable, "-m", "napari_glimpse", "train", "magnet", "--data", str(tr), "--val", str(va),
           "--out", str(a.work / a.out), "--aux-encoder", "pcam", "--batch-size", a.batch_size, "--lr", a.lr,
           "--epochs", str(a.epochs), "--threads", str(a.threads), "--resume"]
    if a.init:
        cmd += ["--init", a.init]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
