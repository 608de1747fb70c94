"""Slide calls of every shipped model: aggregations compared on validation mosaics, the call
measured on held-out mosaics, in one run (issue: slide calls a pathologist can trust).

For each model, the method runs once per slide of ``--val`` and of ``--heldout`` (the raw
window / leaf scores are cached in ``--work``, so a second run only recomputes the tables).
On ``--val``: every aggregation of :mod:`napari_glimpse.calls` (max, top-k mean, largest
region, learned; the learned one by 5-fold out-of-fold scores), the choice and its threshold
(:func:`napari_glimpse.runtime.calibrate.select`: on dense maps among largest region and
learned). Each aggregation's held-out AUC is printed beside it for the record. On ``--heldout``, never used for a choice:
slide AUC, sensitivity, specificity and balanced accuracy of the call at the stored threshold,
with stratified bootstrap 95 % intervals, for the calibrated model and for the uncalibrated
one (max at 0.5, as shipped before).

    python benchmarks/calibration_table.py --val VAL [VAL2 ...] --heldout HELDOUT --work RUN_DIR \
        --json docs/calibration.json [--write] [--models celnet glimpse-tree:supervised ...]

``--write`` stores each model's choice in its shipped checkpoint (the weights folder).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_glimpse.calls import aggregate, call_metrics, learned_score, score_features
from napari_glimpse.evaluate import roc_auc
from napari_glimpse.methods import get_method, load_model
from napari_glimpse.runtime.calibrate import collect, select, write_calibrated
from napari_glimpse.runtime.events import run_to_end

MODELS = ("celnet", "glimpse-tree:supervised", "glimpse-tree:mil", "attention-grid", "patch-classifier")
#: settings of the collection runs: CELNet's score map does not need CELM evidence
OVERRIDES = {"celnet": {"celm": False}, "glimpse-tree": {"show_q": False}}


def runs_of(name: str, folder: str, work: Path):
    method, _, weights = name.partition(":")
    model = load_model(method, weights or None)
    t0 = time.perf_counter()
    runs = run_to_end(collect(method, model, folder, cache_dir=work / name.replace(":", "_") / Path(folder).name,
                              overrides=OVERRIDES.get(method)))
    # cached maps keep their windows: measure them at the checkpoint's current patch threshold
    for r in runs:
        if r[3] is not None and r[3].grid is not None and hasattr(model.config, "threshold"):
            r[3].patch_threshold = float(model.config.threshold)
    return method, model, runs, time.perf_counter() - t0


def scores_with(choice: dict, runs, k: int) -> np.ndarray:
    how = choice["aggregation"]
    if how is None:
        return np.array([r[2] for r in runs])
    if how == "learned":
        return np.array([learned_score(choice["aggregator"], score_features(r[3], k)) for r in runs])
    return np.array([aggregate(r[3], how, k) for r in runs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", required=True, nargs="+", help="validation folders (several: one per patch bank)")
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--rule", default="youden")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", default=None)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--collect-only", action="store_true", help="only run the models (fill the cache)")
    args = ap.parse_args()
    work = Path(args.work)
    report = {}
    for name in args.models:
        val, t_val = [], 0.0
        for folder in args.val:
            method, model, runs, t = runs_of(name, folder, work)
            val, t_val = val + runs, t_val + t
        _, _, held, t_held = runs_of(name, args.heldout, work)
        if args.collect_only:
            print(name, f"collected {len(val)} + {len(held)} slides in {t_val + t_held:.0f} s", flush=True)
            continue
        choice = select(val, rule=args.rule, k=args.k)
        y_val = np.array([r[1] for r in val])
        y_held = np.array([r[1] for r in held])
        before = call_metrics(y_held, [r[2] for r in held], 0.5)
        after = call_metrics(y_held, scores_with(choice, held, args.k), choice["threshold"])
        # every aggregation on the held-out slides, for the record (the choice above saw none of them)
        held_auc = {how: roc_auc(y_held, scores_with({**choice, "aggregation": how,
                                                       "aggregator": row.get("aggregator", [])}, held, args.k))
                    for how, row in choice["table"].items()}
        report[name] = {"choice": {k: v for k, v in choice.items() if k != "table"}, "val_table": choice["table"],
                        "heldout_auc_by_aggregation": held_auc,
                        "heldout": after, "heldout_uncalibrated": before,
                        "val_n": len(val), "val_positives": int(y_val.sum())}
        print(f"\n== {name}: chose {choice['aggregation']}, threshold {choice['threshold']:.4g} ({args.rule}), "
              f"by {choice.get('criterion', 'auc')}")
        for how, row in choice["table"].items():
            xb = row.get("cross_bank_balanced_accuracy")
            print(f"   val {how:15s} AUC {row['auc']:.3f}  sens {row['sensitivity']:.3f}  spec {row['specificity']:.3f}"
                  + ("" if xb is None else f"  cross-bank bal.acc {xb:.3f}")
                  + f"   (held-out AUC {held_auc[how]:.3f})")
        for tag, m in (("held-out, max at 0.5", before), ("held-out, calibrated", after)):
            print(f"   {tag:22s} AUC {m['auc']:.3f} {np.round(m['auc_ci'], 3)}  sens {m['sensitivity']:.3f} "
                  f"{np.round(m['sensitivity_ci'], 3)}  spec {m['specificity']:.3f} {np.round(m['specificity_ci'], 3)}"
                  f"  bal.acc {m['balanced_accuracy']:.3f}")
        if args.write:
            spec = get_method(method)
            path = write_calibrated(spec, model.checkpoint, model.checkpoint, {**choice, "n": len(val)},
                                    data_dir=", ".join(Path(v).name for v in args.val), k=args.k)
            print("   wrote", path)
    if args.json and report:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
