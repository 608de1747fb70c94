"""Which grid-attention training to ship, chosen on validation mosaics only (no held-out set).

Trains the paper's head (both softmax variants) on one or more training folders with a few
seeds, each run's epoch chosen on ``--val``, and prints each run's slide AUC on every
``--select`` folder pooled, plus the mean over seeds.

    python benchmarks/experiments/attention_grid_select.py --train T200 T500 --val VAL \
        --select VAL VAL2 --cache CACHE --work DIR --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from table_attention_grid import measure, slide_set  # noqa: E402

from napari_glimpse.encoders import load_encoder  # noqa: E402
from napari_glimpse.evaluate import bootstrap_auc_interval, roc_auc  # noqa: E402
from napari_glimpse.methods import get_method, load_model  # noqa: E402
from napari_glimpse.methods.attention_grid.config import AttentionGridConfig  # noqa: E402
from napari_glimpse.runtime.events import run_to_end  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--select", nargs="+", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--variants", nargs="+", default=["faithful", "masked"])
    ap.add_argument("--accumulate", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = get_method("attention-grid")
    encoder = load_encoder("pcam")
    pooled = [s for folder in args.select for s in slide_set(Path(folder), encoder, args.cache)]
    rows = {}
    for train in args.train:
        for variant in args.variants:
            aucs = []
            for seed in args.seeds:
                out = Path(args.work) / f"{Path(train).name}_{variant}_s{seed}.safetensors"
                if not out.exists():
                    cfg = AttentionGridConfig(variant=variant, accumulate=args.accumulate, feature_cache=args.cache)
                    run_to_end(spec.get("train")(train, out, val_dir=args.val, config=cfg, device="cpu", seed=seed))
                m = measure(load_model(spec, str(out), "cpu"), pooled)
                aucs.append(roc_auc(m["labels"], m["scores"]))
                lo, hi = bootstrap_auc_interval(m["labels"], m["scores"])
                print(f"{Path(train).name} {variant} seed {seed}: select AUC {aucs[-1]:.3f} [{lo:.3f}, {hi:.3f}] "
                      f"top cell on tumour {m['top_cell_on_tumour']}", flush=True)
            rows[f"{Path(train).name} {variant}"] = {"aucs": aucs, "mean": float(np.mean(aucs))}
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
