"""How to split N_G leaves over the levels: slide AUC of each branching against 'All', with a
bootstrap confidence interval of the gap.

The paper fixes N_G (Table 1) but not its split over the levels; a checkpoint stores the split
chosen for it on validation data (``config.branching``; ``--leaves N`` uses it when it has N
leaves). For each model and branching: the tree's slide AUC over ``--reps`` sampling seeds (mean
and SD), All's AUC, and the gap tree - All with a 95 % interval from resampling the slides
(stratified by label, the seeds' mean AUC recomputed per resample). One thread, as Table 1.

    python benchmarks/experiments/glimpse_branching.py --data runs/glimpse/val --models supervised mil \\
        --branchings 2x4 4x2 --json bench-out/branching.json

``--pool A.json B.json ...`` runs nothing: it joins the per-slide scores of earlier ``--json``
runs (sets of slides from one distribution, e.g. several mosaic sets) into one set and prints the
same table for it, so a gap is measured on all their slides at once (a narrower interval).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_glimpse.evaluate import roc_auc, stratified_resamples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/glimpse/val", help="slides + labels.csv")
    p.add_argument("--models", nargs="+", default=["supervised", "mil"], help="checkpoints or shipped names")
    p.add_argument("--branchings", nargs="+", default=["2x4", "4x2"], help="children per level, e.g. 2x4")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--reps", type=int, default=10, help="sampling seeds 0..reps-1")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the slides")
    p.add_argument("--json", help="write per-slide scores and the table here")
    p.add_argument("--pool", nargs="+", metavar="JSON", help="join these --json outputs' slides; run nothing")
    args = p.parse_args(argv)
    if args.pool:
        return _pool(args)

    import torch

    from napari_glimpse.methods import infer, load_model
    from napari_glimpse.methods.glimpse_tree.data import find_slides
    from napari_glimpse.runtime.events import run_to_end

    torch.set_num_threads(1)
    items = [i for i in find_slides(args.data, need="labels") if i.label is not None]
    y = np.array([i.label for i in items])
    if len(set(y)) < 2:
        raise SystemExit(f"{args.data}: need slides of both labels in labels.csv")
    branchings = [tuple(int(v) for v in b.split("x")) for b in args.branchings]
    boots = stratified_resamples(y, args.boot)
    out = {"data": str(args.data), "slides": len(items), "positive": int(y.sum()), "labels": y.tolist(),
           "temperature": args.temperature, "reps": args.reps, "models": {}}
    print(f"{len(items)} slides ({int(y.sum())} with tumour), T = {args.temperature}, {args.reps} seeds\n\n"
          "| model | branching | tree AUC | All AUC | gap (95 % CI) | s / slide (All) |\n|---|---|---|---|---|---|")
    for name in args.models:
        model = load_model("glimpse-tree", name, "cpu")
        t0 = time.perf_counter()
        all_scores = np.array([
            run_to_end(infer("glimpse-tree", i.path, model=model, dense=True, show_q=False)).slide_score
            for i in items])
        all_s = (time.perf_counter() - t0) / len(items)
        all_auc = roc_auc(y, all_scores)
        res = {"all": {"scores": all_scores.tolist(), "auc": all_auc, "seconds_per_slide": all_s}}
        for b in branchings:
            scores = np.zeros((args.reps, len(items)))
            t0 = time.perf_counter()
            for rep in range(args.reps):
                for k, item in enumerate(items):
                    gen = infer("glimpse-tree", item.path, model=model, branching=b,
                                temperature=args.temperature, seed=rep, show_q=False)
                    scores[rep, k] = run_to_end(gen).slide_score
            secs = (time.perf_counter() - t0) / (args.reps * len(items))
            key = "x".join(map(str, b))
            res[key] = {"scores": scores.tolist(), **_gap(y, scores, all_scores, boots), "seconds_per_slide": secs}
            _row(name, b, res[key], all_auc, f"{secs:.3f} ({all_s:.3f})")
        out["models"][name] = res
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out) + "\n")
    return 0


def _gap(y, scores, all_scores, boots) -> dict:
    """The tree's AUC over seeds (mean, SD) and its gap to All with a 95 % bootstrap interval."""
    aucs = [roc_auc(y, s) for s in scores]
    gap = float(np.mean(aucs) - roc_auc(y, all_scores))
    boot = [np.mean([roc_auc(y[ix], s[ix]) for s in scores]) - roc_auc(y[ix], all_scores[ix]) for ix in boots]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"auc_mean": float(np.mean(aucs)), "auc_sd": float(np.std(aucs)), "gap": gap,
            "gap_ci95": [float(lo), float(hi)]}


def _row(name, branching, r: dict, all_auc: float, seconds: str) -> None:
    lo, hi = r["gap_ci95"]
    print(f"| {name} | {tuple(branching)} | {r['auc_mean']:.4f} ± {r['auc_sd']:.4f} | {all_auc:.4f} | "
          f"{r['gap']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {seconds} |", flush=True)


def _pool(args) -> int:
    """One table over the slides of several earlier runs (the settings they all share)."""
    docs = [json.loads(Path(p).read_text()) for p in args.pool]
    if len({(d["temperature"], d["reps"]) for d in docs}) != 1:
        raise SystemExit("--pool: the runs differ in temperature or seeds")
    y = np.concatenate([np.array(d["labels"]) for d in docs])
    boots = stratified_resamples(y, args.boot)
    print(f"{len(y)} slides ({int(y.sum())} with tumour) from {', '.join(d['data'] for d in docs)}, "
          f"T = {docs[0]['temperature']}, {docs[0]['reps']} seeds\n\n"
          "| model | branching | tree AUC | All AUC | gap (95 % CI) | slides |\n|---|---|---|---|---|---|")
    out = {"pooled_from": args.pool, "slides": len(y), "positive": int(y.sum()), "models": {}}
    for name in [m for m in docs[0]["models"] if all(m in d["models"] for d in docs)]:
        runs = [d["models"][name] for d in docs]
        all_scores = np.concatenate([r["all"]["scores"] for r in runs])
        res = {"all": {"auc": roc_auc(y, all_scores)}}
        for key in [k for k in runs[0] if k != "all" and all(k in r for r in runs)]:
            scores = np.concatenate([np.array(r[key]["scores"]) for r in runs], axis=1)
            res[key] = _gap(y, scores, all_scores, boots)
            _row(name, [int(v) for v in key.split("x")], res[key], res["all"]["auc"], str(len(y)))
        out["models"][name] = res
    if args.json:
        Path(args.json).write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
