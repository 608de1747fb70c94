"""Grid attention against its baselines on the same cached features, in one run.

Rows (each trained on ``--train`` with ``--val`` choosing the epoch, then measured on ``--val``
and on ``--heldout``):

* ``minmax faithful``: the paper's min + max attention, unpooled zeros keep weight e^0 (shipped)
* ``minmax masked``: the masked softmax variant
* ``max only``: the paper's ablation (max branch alone)
* ``ABMIL``: gated attention MIL (Ilse et al. 2018)
* ``max-pool of patch scores``: the encoder's own patch logits, slide score = their maximum
  (no training)

Columns: slide AUC with a stratified bootstrap 95 % interval, seconds per slide (head only, on
cached features; and the feature read), the share of positive slides whose top evidence cell is
on the tumour mask, and head training seconds per slide and epoch. A regression row trains the
paper's head on ``tumour_fraction.csv`` and reports Spearman's rho.

    python benchmarks/table_attention_grid.py --train TRAIN --val VAL --heldout HELDOUT \
        --cache FEATURE_CACHE --work RUN_DIR --json docs/attention_grid.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_glimpse.encoders import load_encoder
from napari_glimpse.evaluate import bootstrap_auc_interval, roc_auc, spearman
from napari_glimpse.features.cache import cached_grid_features
from napari_glimpse.methods import get_method, load_model
from napari_glimpse.methods.attention_grid.api import result_from_grid
from napari_glimpse.methods.attention_grid.config import (
    AttentionGridConfig,
    AttentionGridInferConfig,
)
from napari_glimpse.runtime.data import find_slides
from napari_glimpse.runtime.events import run_to_end

ROWS = {
    "minmax faithful": {"head": "minmax", "variant": "faithful"},
    "minmax masked": {"head": "minmax", "variant": "masked"},
    "max only": {"head": "max", "variant": "faithful"},
    "ABMIL": {"head": "abmil"},
}


def slide_set(folder: Path, encoder, cache: str, labels: str = "labels.csv"):
    """[(stem, path, label, FeatureGrid, read seconds)] of a folder, through the feature cache."""
    out = []
    for item in find_slides(folder, need="labels", labels=labels):
        t0 = time.perf_counter()
        grid = cached_grid_features(item.path, encoder, cache=cache)
        out.append((item.stem, item.path, float(item.label), grid, time.perf_counter() - t0))
    return out


def on_tumour(path: str, xy) -> bool:
    mask = tifffile.imread(str(Path(path).with_suffix("")) + ".mask.tif")
    x, y = (int(v) for v in xy)
    return bool(mask[min(y, mask.shape[0] - 1), min(x, mask.shape[1] - 1)])


def measure(model, slides, evidence: str = "attention") -> dict:
    cfg = AttentionGridInferConfig(threshold=model.config.threshold, evidence=evidence)
    scores, labels, secs, hits, pos = [], [], [], 0, 0
    for _stem, path, label, grid, _read in slides:
        t0 = time.perf_counter()
        res = result_from_grid(grid, model, cfg, path)
        secs.append(time.perf_counter() - t0)
        scores.append(res.slide_score)
        labels.append(label)
        if label and res.summary["evidence"]:
            pos += 1
            hits += on_tumour(path, res.summary["evidence"][0])
    return {"scores": scores, "labels": labels, "head_seconds_per_slide": float(np.mean(secs)),
            "top_cell_on_tumour": [hits, pos]}


def auc_row(scores, labels) -> dict:
    lo, hi = bootstrap_auc_interval(labels, scores)
    return {"auc": roc_auc(labels, scores), "auc_interval": [lo, hi], "n": len(labels)}


def maxpool_row(slides) -> dict:
    scores, labels, hits, pos = [], [], 0, 0
    for _stem, path, label, grid, _read in slides:
        s = np.where(grid.tissue, grid.scores, -np.inf)
        best = np.unravel_index(int(np.argmax(s)), s.shape)
        scores.append(float(1 / (1 + np.exp(-s[best]))) if np.isfinite(s[best]) else 0.0)
        labels.append(label)
        if label:
            pos += 1
            hits += on_tumour(path, grid.cell_centres(np.array([best]))[0])
    return {**auc_row(scores, labels), "top_cell_on_tumour": [hits, pos], "head_seconds_per_slide": 0.0}


def train_row(name: str, fields: dict, args, device) -> tuple[str, float]:
    spec = get_method("attention-grid")
    cfg = AttentionGridConfig(**fields, epochs=args.epochs, accumulate=args.accumulate, feature_cache=args.cache)
    out = Path(args.work) / (name.replace(" ", "_") + ".safetensors")
    t0 = time.perf_counter()
    if not out.exists():
        run_to_end(spec.get("train")(args.train, out, val_dir=args.val, config=cfg, device=device, seed=args.seed))
    return str(out), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--train", "--val", "--heldout", "--cache", "--work"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--json", help="write the table here")
    ap.add_argument("--epochs", type=int, default=AttentionGridConfig().epochs)
    ap.add_argument("--accumulate", type=int, default=AttentionGridConfig().accumulate)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help="which trained rows")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    device = "cpu"
    encoder = load_encoder(AttentionGridConfig().encoder, device)
    sets = {"val": slide_set(Path(args.val), encoder, args.cache),
            "heldout": slide_set(Path(args.heldout), encoder, args.cache)}
    n_train = len(find_slides(args.train, need="labels"))
    table = {"encoder": encoder.name, "encoder_checksum": encoder.checksum, "epochs": args.epochs,
             "accumulate": args.accumulate, "n_train": n_train,
             "feature_read_seconds_per_slide": float(np.mean([s[4] for s in sets["heldout"]])), "rows": {}}
    for set_name, slides in sets.items():
        table["rows"].setdefault("max-pool of patch scores", {})[set_name] = maxpool_row(slides)
    for name in args.rows:
        ckpt, seconds = train_row(name, ROWS[name], args, device)
        model = load_model(get_method("attention-grid"), ckpt, device)
        row = {"checkpoint": ckpt, "train_seconds_per_slide_epoch": seconds / max(n_train * args.epochs, 1),
               "threshold": model.config.threshold}
        for set_name, slides in sets.items():
            m = measure(model, slides)
            g = measure(model, slides, "gradcam") if ROWS[name].get("head") != "abmil" else None
            row[set_name] = {**auc_row(m["scores"], m["labels"]), "head_seconds_per_slide": m["head_seconds_per_slide"],
                             "top_cell_on_tumour": m["top_cell_on_tumour"],
                             "top_gradcam_cell_on_tumour": g["top_cell_on_tumour"] if g else None}
        table["rows"][name] = row
        print(name, json.dumps({k: row[k]["auc"] for k in ("val", "heldout")}), flush=True)
    # regression: the paper's head on the tumour fraction (the TUPAC16 analogue)
    spec = get_method("attention-grid")
    cfg = AttentionGridConfig(task="regression", labels="tumour_fraction.csv", epochs=args.epochs,
                              accumulate=args.accumulate, feature_cache=args.cache)
    out = Path(args.work) / "regression.safetensors"
    if not out.exists():
        run_to_end(spec.get("train")(args.train, out, val_dir=args.val, config=cfg, device=device, seed=args.seed))
    model = load_model(spec, str(out), device)
    reg = {}
    for set_name, folder in (("val", args.val), ("heldout", args.heldout)):
        slides = slide_set(Path(folder), encoder, args.cache, labels="tumour_fraction.csv")
        m = measure(model, slides)
        reg[set_name] = {"spearman": spearman(m["labels"], m["scores"]), "n": len(m["labels"])}
    table["regression"] = reg
    for name, row in table["rows"].items():
        h = row["heldout"]
        print(f"{name:28s} heldout AUC {h['auc']:.3f} [{h['auc_interval'][0]:.3f}, {h['auc_interval'][1]:.3f}]  "
              f"val {row['val']['auc']:.3f}  top cell on tumour {h['top_cell_on_tumour']}  "
              f"s/slide {h['head_seconds_per_slide']:.4f}")
    print("regression spearman", json.dumps(reg))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
