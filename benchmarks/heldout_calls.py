"""The shipped models' slide calls on a folder of mosaics that chose nothing, as a user gets them.

    nice python benchmarks/heldout_calls.py --data HELDOUT --work RUN_DIR [--models celnet ...] \
        [--json docs/heldout_calls.json]

Runs every shipped model through the cohort runner (``infer`` with its stored aggregation and
threshold, nothing re-fitted) on every slide of ``--data`` (results cached in ``--work``: a
second run only recomputes the tables). Prints, per model, the slide AUC and the sensitivity,
specificity and balanced accuracy of the call at the stored threshold, with stratified
bootstrap 95 % intervals, and the sensitivity by tumour size from the mosaics' ``cells.json``
(macro >= 50 cells, micro 5-49, ITC 1-4, each with its AUC against all negatives).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from napari_glimpse.calls import call_metrics
from napari_glimpse.evaluate import roc_auc
from napari_glimpse.runtime.cohort import run_cohort

MODELS = ("celnet", "glimpse-tree:supervised", "glimpse-tree:mil", "attention-grid", "patch-classifier")
#: CELM evidence does not change the slide score
OVERRIDES = {"celnet": {"celm": False}}
SIZES = (("macro (>= 50 cells)", 50, 10**9), ("micro (5-49)", 5, 49), ("ITC (1-4)", 1, 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    with open(a.data / "labels.csv", newline="") as f:
        labels = {r["slide"]: int(r["label"]) for r in csv.DictReader(f)}
    cells = {s: len(json.loads((a.data / f"{s}.cells.json").read_text())["tumour_cells"]) for s in labels}
    slides = [a.data / f"{s}.tif" for s in labels]
    print(f"{len(slides)} slides, {sum(labels.values())} positive; tumour cells "
          f"{min(c for c in cells.values() if c)}-{max(cells.values())}")
    report = {}
    for name in a.models:
        method, _, weights = name.partition(":")
        t0 = time.perf_counter()
        rows = run_cohort(method, slides, a.work / name.replace(":", "_"), checkpoint=weights or None,
                          overrides=OVERRIDES.get(method), threads=a.threads)
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            raise SystemExit(f"{name}: {len(failed)} slides failed, e.g. {failed[0]['slide']}: {failed[0]['error']}")
        by = {Path(r["slide"]).stem: r for r in rows}
        stems = list(labels)
        y = np.array([labels[s] for s in stems])
        score = np.array([float(by[s]["slide_score"]) for s in stems])
        threshold = float(by[stems[0]]["threshold"])
        m = call_metrics(y, score, threshold)
        neg = score[y == 0]
        sizes = {}
        for label, lo, hi in SIZES:
            pos = score[[labels[s] == 1 and lo <= cells[s] <= hi for s in stems]]
            if len(pos):
                yy = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
                sizes[label] = {"n": len(pos), "sensitivity": float(np.mean(pos >= threshold)),
                                "auc": float(roc_auc(yy, np.r_[pos, neg]))}
        report[name] = {**m, "by_size": sizes, "seconds": time.perf_counter() - t0}
        print(f"\n== {name} (threshold {threshold:.4g}, {time.perf_counter() - t0:.0f} s)")
        print(f"   AUC {m['auc']:.3f} {np.round(m['auc_ci'], 3)}  sens {m['sensitivity']:.3f} "
              f"{np.round(m['sensitivity_ci'], 3)}  spec {m['specificity']:.3f} {np.round(m['specificity_ci'], 3)}  "
              f"bal.acc {m['balanced_accuracy']:.3f} {np.round(m['balanced_accuracy_ci'], 3)}")
        for label, v in sizes.items():
            print(f"   {label:20s} n={v['n']:2d}  sens {v['sensitivity']:.3f}  AUC vs negatives {v['auc']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
