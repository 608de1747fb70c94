"""A held-out set for slide calls with tumours of every size, isolated tumour cells included.

    python benchmarks/make_call_set.py --patches ../shared/data/pcam/valid --out DIR [--count 48] [--seed 919]

``make-mosaic`` draws a positive slide's tumour regions up to a share of its tissue, so the
total tumour of a 4,992 px mosaic is rarely under 5 cells. Here half the positives are drawn
with the default share (0.15: regions from one cell to hundreds) and half with a share of
0.003 (about 5 of its 1,600 tissue cells: isolated tumour cells and micro-metastases of a few
cells); the negatives are tumour-free mosaics. Every mosaic has a random lattice offset. One
``labels.csv`` and ``tumour_cells.json`` (tumour cells per slide) are written for the folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from napari_glimpse.mosaic import make_mosaics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--seed", type=int, default=919)
    ap.add_argument("--size", type=int, default=4992)
    a = ap.parse_args()
    if a.out.exists():
        raise SystemExit(f"{a.out} exists: a held-out set is made once")
    tmp = a.out.with_name(a.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pos = a.count // 2
    parts = [("large", pos - pos // 2, 1.0, 0.15), ("small", pos // 2, 1.0, 0.003), ("neg", a.count - pos, 0.0, 0.15)]
    rows = []
    for k, (name, n, positive, share) in enumerate(parts):
        made = make_mosaics(a.patches, tmp / name, count=n, size=(a.size, a.size), seed=a.seed + k,
                            positive_fraction=positive, tumour_fraction=share, lattice_offset=True, name=name)
        rows += [(m, int(positive)) for m in made]
    a.out.mkdir(parents=True)
    for m, _ in rows:
        for f in m.path.parent.glob(f"{m.path.stem}.*"):
            shutil.move(str(f), a.out / f.name)
    with open(a.out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide", "label"])
        w.writerows((m.path.stem, label) for m, label in rows)
    cells = {m.path.stem: len(m.tumour_cells) for m, _ in rows}
    (a.out / "tumour_cells.json").write_text(json.dumps(cells, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    sizes = sorted(c for c in cells.values() if c)
    print(f"{len(rows)} mosaics in {a.out}: {len(sizes)} positive with {sizes} tumour cells")


if __name__ == "__main__":
    main()
