"""Does a slide threshold chosen on mosaics of one patch bank hold on mosaics of another?

Every mosaic of a set draws its cells from one bank of patches, so all its negatives hold the
same worst normal patches. This takes validation sets built from different banks (e.g. two
disjoint halves of PCam valid half A, and half A whole), calibrates each model on each set
(:func:`napari_glimpse.runtime.calibrate.select`) and measures the call on every other set:
the spread of specificity between banks is what a single-bank calibration cannot see.

    python benchmarks/experiments/calibration_banks.py --sets CAL A1 A2 --work RUN_DIR \
        [--models glimpse-tree:supervised attention-grid ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibration_table import runs_of, scores_with  # noqa: E402

from napari_glimpse.calls import call_summary  # noqa: E402
from napari_glimpse.evaluate import roc_auc  # noqa: E402
from napari_glimpse.runtime.calibrate import select  # noqa: E402

FAST = ("glimpse-tree:supervised", "glimpse-tree:mil", "attention-grid", "patch-classifier")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", required=True, help="mosaic folders, each from its own bank")
    ap.add_argument("--work", required=True)
    ap.add_argument("--models", nargs="+", default=list(FAST))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {}
    for name in args.models:
        runs = {Path(s).name: runs_of(name, s, Path(args.work))[2] for s in args.sets}
        out[name] = {}
        print(f"\n== {name}")
        for fit, fit_runs in runs.items():
            choice = select(fit_runs)
            row = {"aggregation": choice["aggregation"], "threshold": choice["threshold"]}
            for test, test_runs in runs.items():
                y = np.array([r[1] for r in test_runs])
                s = scores_with(choice, test_runs, 10)
                row[test] = {"auc": roc_auc(y, s), **call_summary(y, s, choice["threshold"])}
            out[name][fit] = row
            cells = "  ".join(f"{t}: spec {row[t]['specificity']:.2f} sens {row[t]['sensitivity']:.2f}"
                              for t in runs)
            print(f"   fit on {fit:10s} ({row['aggregation']}, {row['threshold']:.4g})  {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
