"""Table 1 of the glimpse-tree paper on PCam mosaics: slide AUC and seconds per slide.

For N_G in {4, 8, 16} x T in {0.05, 0.1} (10 repetitions with seeds 0..9, mean and SD of the
AUC) and for 'All' (C on every leaf-sized tile of the same regions, and a second row skipping
tiles with less than ``--tissue-min`` tissue; deterministic, timed over ``--all-reps`` runs), for the supervised and the MIL model. Seconds are wall-clock per slide
and include opening the slide, the tissue mask and reading every glimpse; loading the model
is done once and not counted. Runs of all settings are interleaved slide by slide, so a
change of machine load hits every setting alike.

    python benchmarks/table1_glimpse.py --data runs/glimpse/val --json bench-out/table1.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from napari_glimpse.runtime.events import run_to_end  # noqa: E402

_drive = run_to_end  # drive a progress generator to its result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/glimpse/val", help="slides + labels.csv")
    p.add_argument("--supervised", default="supervised", help="checkpoint (default: shipped supervised)")
    p.add_argument("--mil", default="mil", help="checkpoint (default: shipped MIL)")
    p.add_argument("--leaves", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--all-reps", type=int, default=1, help="timed runs of 'All' (its AUC is deterministic)")
    p.add_argument("--tissue-min", type=float, default=0.01,
                   help="tissue fraction of the second 'All' row (tiles with less are skipped)")
    p.add_argument("--limit", type=int, help="first N slides only")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", help="write all numbers here")
    p.add_argument("--markdown", help="write the table here too")
    p.add_argument("--only", choices=("supervised", "mil"),
                   help="run one model (two processes in parallel halve the wall time); --merge joins them")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="join the JSON of --only runs into one table")
    args = p.parse_args(argv)
    if args.merge:
        return _merge(args)

    import torch

    from napari_glimpse.evaluate import roc_auc
    from napari_glimpse.methods import infer, load_model
    from napari_glimpse.methods.glimpse_tree.data import find_slides

    torch.set_num_threads(args.threads)
    items = [i for i in find_slides(args.data, need="labels") if i.label is not None]
    if args.limit:
        items = items[: args.limit]
    labels = np.array([i.label for i in items])
    models = {}
    for name, ckpt in (("supervised", args.supervised), ("mil", args.mil)):
        if args.only and name != args.only:
            continue
        loaded = load_model("glimpse-tree", ckpt, "cpu")
        models[name] = (loaded, loaded.checkpoint)
    settings = [(t, n) for t in args.temperatures for n in args.leaves] + [("all", None), ("all-tissue", None)]
    # scores[model][setting][rep][slide], seconds / patches likewise
    scores = {m: {s: np.full((args.reps, len(items)), np.nan) for s in settings} for m in models}
    secs = {m: {s: np.full((args.reps, len(items)), np.nan) for s in settings} for m in models}
    patches = {m: {s: np.full((args.reps, len(items)), np.nan) for s in settings} for m in models}
    t_start = time.time()
    for rep in range(args.reps):
        for k, item in enumerate(items):
            for mname, (model, _) in models.items():
                for s in settings:
                    if isinstance(s[0], str):  # the two All rows
                        if rep >= args.all_reps:
                            continue
                        gen = infer("glimpse-tree", item.path, model=model, dense=True, show_q=False,
                                    tissue_min=args.tissue_min if s[0] == "all-tissue" else 0.0)
                    else:
                        gen = infer("glimpse-tree", item.path, model=model, leaves=s[1], temperature=s[0],
                                    seed=rep, show_q=False)
                    res = _drive(gen)
                    scores[mname][s][rep, k] = res.slide_score
                    secs[mname][s][rep, k] = res.summary["seconds"]
                    patches[mname][s][rep, k] = res.summary["patches_read"]
        print(f"repetition {rep + 1}/{args.reps} done ({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)

    rows = {}
    for mname in models:
        for s in settings:
            n_reps = args.all_reps if isinstance(s[0], str) else args.reps
            aucs = [roc_auc(labels, scores[mname][s][r]) for r in range(n_reps)]
            per_rep_time = np.nanmean(secs[mname][s][:n_reps], axis=1)
            key = _key(s)
            rows.setdefault(key, {})[mname] = {
                "auc_mean": float(np.mean(aucs)), "auc_sd": float(np.std(aucs)), "aucs": aucs,
                "seconds_per_slide": float(np.mean(per_rep_time)), "seconds_sd": float(np.std(per_rep_time)),
                "patches_per_slide": float(np.nanmean(patches[mname][s][:n_reps])),
            }
    for row in rows.values():
        for mname, r in row.items():
            r["speedup_vs_all"] = rows["all"][mname]["seconds_per_slide"] / r["seconds_per_slide"]
    table = _markdown(rows, settings, len(items), int(labels.sum()), args.reps, args.threads, args.tissue_min)
    print(table)
    meta = {"data": str(args.data), "slides": len(items), "positive": int(labels.sum()), "reps": args.reps,
            "all_reps": args.all_reps, "threads": args.threads, "checkpoints": {m: v[1] for m, v in models.items()},
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
            "python": platform.python_version(), "torch": torch.__version__,
            "elapsed_s": time.time() - t_start, "settings": [list(x) for x in settings],
            "tissue_min": args.tissue_min}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


def _key(s) -> str:
    return s[0] if isinstance(s[0], str) else f"T={s[0]} N_G={s[1]}"


def _cells(r) -> tuple[str, str, str]:
    if r is None:
        return "–", "–", "–"
    return (f"{r['auc_mean']:.4f} ± {r['auc_sd']:.4f}", f"{r['seconds_per_slide']:.3f}", f"{r['speedup_vs_all']:.1f}x")


def _markdown(rows, settings, n, n_pos, reps, threads, tissue_min) -> str:
    out = [f"Slide AUC (mean ± SD over {reps} seeds; 'All' is deterministic) and seconds per slide (slide "
           f"opening, tissue mask and reading included) on {n} mosaics ({n_pos} with tumour), CPU, {threads} "
           "torch thread(s).", "",
           "| T | N_G | AUC MIL | AUC supervised | s / slide MIL | s / slide supervised | speed-up vs All "
           "(MIL / sup.) | glimpses read (MIL / sup.) |",
           "|---|---|---|---|---|---|---|---|"]
    for s in settings:
        key = _key(s)
        m, su = rows[key].get("mil"), rows[key].get("supervised")
        t_col, n_col = {"all": ("–", "All"), "all-tissue": ("–", f"All, tiles with ≥ {tissue_min:g} tissue")
                        }.get(s[0]) or (f"{s[0]:g}", str(s[1]))
        (ma, ms, mx), (sa, ss, sx) = _cells(m), _cells(su)
        counts = [f"{r['patches_per_slide']:.0f}" for r in (m, su) if r is not None]  # MIL / sup.
        glimpses = counts[0] if len(set(counts)) == 1 else " / ".join(counts)
        out.append(f"| {t_col} | {n_col} | {ma} | {sa} | {ms} | {ss} | {mx} / {sx} | {glimpses} |")
    return "\n".join(out)


def _merge(args) -> int:
    docs = [json.loads(Path(p).read_text()) for p in args.merge]
    rows: dict = {}
    for d in docs:
        for key, row in d["rows"].items():
            rows.setdefault(key, {}).update(row)
    meta = dict(docs[0]["meta"])
    meta["checkpoints"] = {k: v for d in docs for k, v in d["meta"]["checkpoints"].items()}
    meta["elapsed_s"] = [d["meta"]["elapsed_s"] for d in docs]
    settings = [tuple(x) for x in meta["settings"]]
    table = _markdown(rows, settings, meta["slides"], meta["positive"], meta["reps"], meta["threads"],
                      meta["tissue_min"])
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "merged_from": args.merge}, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
