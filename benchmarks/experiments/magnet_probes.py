"""Where does a MagNet that does not learn lose the signal: in its classifier or in its leaves?

    python benchmarks/experiments/magnet_probes.py --slides VAL_MOSAICS [--checkpoint CKPT]

1. Encoder probe: the `pcam` encoder's own tumour score (its PCam head) on 224 px crops centred
   on tumour and on normal cells of the positive mosaics, read at 0.97 to 7.8 um/px: the AUC
   says whether a leaf that lands on tumour carries the signal at that resolution.
2. Leaf probe (with ``--checkpoint``): the same score, max and mean over the 18 leaves the MagNet
   reads on every slide of the folder, against the slide labels, next to the MagNet's own AUC:
   if the best leaf score does not separate the slides, no classifier on those leaves can.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from napari_glimpse.encoders import load_encoder
from napari_glimpse.evaluate import roc_auc
from napari_glimpse.slides import open_slide


def _labels(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def encoder_probe(folder: Path, enc, crops: int = 6) -> None:
    rng = np.random.default_rng(0)
    stems = [r["slide"] for r in _labels(folder) if r["label"] == "1"][:4]
    for um in (0.972, 1.944, 3.888, 7.776):
        ys, ps = [], []
        for stem in stems:
            cells = json.loads((folder / f"{stem}.cells.json").read_text())
            tumour = [tuple(c) for c in cells["tumour_cells"]]
            ox, oy = cells["lattice_offset"]
            rows, cols = cells.get("grid", [52, 52])
            with open_slide(folder / f"{stem}.tif") as s:
                for label in (1, 0):
                    for _ in range(crops):
                        r, c = tumour[rng.integers(len(tumour))] if label else rng.integers(5, min(rows, cols) - 5, 2)
                        if not label and (r, c) in set(tumour):
                            continue
                        half = 112 * um / 0.972
                        cx, cy = c * 96 - ox + 48, r * 96 - oy + 48
                        img = s.read_region((int(cx - half), int(cy - half)), 0, (int(2 * half), int(2 * half)))
                        x = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1)[None].float() / 255
                        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
                        with torch.no_grad():
                            ps.append(float(torch.sigmoid(enc.scores(x)).ravel().mean()))
                        ys.append(label)
        print(f"encoder probe at {um:.3f} um/px: AUC {roc_auc(np.array(ys), np.array(ps)):.3f} "
              f"({sum(ys)} tumour, {len(ys) - sum(ys)} normal crops)")


def leaf_probe(folder: Path, checkpoint: str, enc) -> None:
    from napari_glimpse.methods import get_method, load_model
    from napari_glimpse.methods.magnet.training import run_slide

    loaded = load_model(get_method("magnet"), checkpoint, "cpu")
    net, cfg = loaded.model.eval(), loaded.config
    seen = {}
    forward = net.encoder.forward
    net.encoder.forward = lambda x: (seen.__setitem__("leaves", x.detach()), forward(x))[1]
    ys, best, mean, own = [], [], [], []
    for row in _labels(folder):
        with torch.no_grad():
            out, _ = run_slide(net, folder / f"{row['slide']}.tif", cfg, "cpu")
            score = torch.sigmoid(enc.scores(seen["leaves"])).ravel().numpy()
        ys.append(int(row["label"]))
        best.append(score.max())
        mean.append(score.mean())
        own.append(float(out["running"][-1]))
    ys = np.array(ys)
    print(f"leaf probe on {len(ys)} slides: max leaf score AUC {roc_auc(ys, np.array(best)):.3f}, "
          f"mean {roc_auc(ys, np.array(mean)):.3f}; the MagNet's own AUC {roc_auc(ys, np.array(own)):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", required=True, type=Path)
    ap.add_argument("--checkpoint")
    a = ap.parse_args()
    torch.set_num_threads(1)
    enc = load_encoder("pcam").eval()
    encoder_probe(a.slides, enc)
    if a.checkpoint:
        leaf_probe(a.slides, a.checkpoint, enc)


if __name__ == "__main__":
    main()
