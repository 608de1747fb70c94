"""RAZN's Table 1 analogue: RAZN against scale-1-only and finest-scale-only segmentation networks
trained separately with the same budget, measured on held-out annotated images in one run.

    # train the three (each its own process; run them side by side or one after another)
    python benchmarks/table1_razn.py train razn   --train T --val V --out RUN [--epochs E ...]
    python benchmarks/table1_razn.py train scale1 --train T --val V --out RUN
    python benchmarks/table1_razn.py train scale2 --train T --val V --out RUN
    # measure all three on the held-out folder, in one process
    python benchmarks/table1_razn.py report --test H --out RUN

``scale1`` trains f_theta0 alone (every tile breaks), ``scale2`` f_theta1 alone (every tile
zooms); RAZN trains by Algorithm 1. The report gives per-class IoU, mean IoU, frequency-weighted
IoU and the wall time relative to the scale-1 network, measured on the same tiles in the same
run; RAZN's own f_theta0 / f_theta1 baselines; the zoom rate by tile kind. Each variant is measured at its last epoch (equal budgets). Writes ``RUN/table1.json`` and ``RUN/table1.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from napari_glimpse.methods.razn.config import RAZNConfig, RAZNInferConfig
from napari_glimpse.methods.razn.training import RAZNTrainer, train
from napari_glimpse.runtime.events import run_to_end


class Scale1(RAZNTrainer):
    decide = staticmethod(lambda pt: torch.zeros_like(pt))
    val_mode = "never"


class Scale2(RAZNTrainer):
    decide = staticmethod(lambda pt: torch.ones_like(pt))
    val_mode = "always"


TRAINERS = {"razn": RAZNTrainer, "scale1": Scale1, "scale2": Scale2}
#: the inference policy each variant is measured with
POLICY = {"razn": "sample", "scale1": "never", "scale2": "always"}


def _train(args) -> int:
    cfg = RAZNConfig(mpp=args.mpp, encoder=args.encoder, tile_px=args.tile_px, epochs=args.epochs,
                     tiles_per_epoch=args.tiles_per_epoch, batch_size=args.batch_size, lr=args.lr)
    out = Path(args.out) / f"{args.variant}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    gen = train(args.train, out, val_dir=args.val, config=cfg, seed=args.seed, device="cpu",
                trainer=TRAINERS[args.variant], resume=args.resume)
    for ev in _events(gen):
        if getattr(ev, "stage", "") == "epoch":
            print(ev.message, json.dumps(getattr(ev, "metrics", {})), flush=True)
    print(f"{args.variant}: trained in {time.time() - t0:.0f} s -> {out}", flush=True)
    return 0


def _events(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


def _report(args) -> int:
    from napari_glimpse.methods import get_method, load_model
    from napari_glimpse.methods.razn.api import evaluate

    spec = get_method("razn")
    run = Path(args.out)
    rows = {}
    for variant, policy in POLICY.items():
        # the last epoch of each: the same training budget for all three
        ckpt = run / f"{variant}.last.safetensors"
        if not ckpt.exists():
            print(f"missing {ckpt}", file=sys.stderr)
            return 2
        model = load_model(spec, str(ckpt), "cpu")
        rows[variant] = run_to_end(evaluate(args.test, model, RAZNInferConfig(policy=policy, seed=args.seed)))
        print(variant, json.dumps({k: rows[variant][k] for k in ("miou", "fwiou", "iou", "zoom_rate")}), flush=True)
    table = make_table(rows)
    (run / "table1.json").write_text(json.dumps(table, indent=2) + "\n")
    lines = ["| model | " + " | ".join(f"IoU {c}" for c in table["classes"]) + " | mean IoU | fw IoU | relative time |",
             "|---|" + "---|" * (len(table["classes"]) + 3)]
    for name, r in table["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r["iou"])
                     + f" | {r['miou']:.3f} | {r['fwiou']:.3f} | {r['relative_time']:.2f} |")
    (run / "table1.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("RAZN zoom rate", table["razn_zoom_rate"], table["razn_zoom_rate_by_tile"], "tiles by kind",
          table["tiles_by_kind"])
    return 0


def make_table(rows: dict) -> dict:
    """The Table-1 rows from the three evaluations. Times are relative to the scale-1 network
    timed in the same evaluate call, on the same tiles (each call times never / always / its
    policy back to back), never across calls."""
    def rel(r, mode):
        return r["seconds"][mode] / max(r["seconds"]["never"], 1e-9)

    return {
        "classes": rows["razn"]["classes"],
        "rows": {
            "scale 1 only (trained alone)": {**_pick(rows["scale1"]), "relative_time": 1.0},
            "scale 2 only (trained alone)": {**_pick(rows["scale2"]), "relative_time": rel(rows["scale2"], "always")},
            "RAZN (sampled policy)": {**_pick(rows["razn"]), "relative_time": rel(rows["razn"], "sample")},
            "RAZN's f_theta0 everywhere": {**rows["razn"]["baselines"]["scale1"], "relative_time": 1.0},
            "RAZN's f_theta1 everywhere": {**rows["razn"]["baselines"]["scale2"],
                                           "relative_time": rel(rows["razn"], "always")},
        },
        "razn_zoom_rate": rows["razn"]["zoom_rate"], "razn_zoom_rate_by_tile": rows["razn"]["zoom_rate_by_tile"],
        "tiles_by_kind": rows["razn"]["tiles_by_kind"], "images": rows["razn"]["images"],
        "tiles": rows["razn"]["tiles"], "raw": rows,
    }


def _pick(r):
    return {"iou": r["iou"], "miou": r["miou"], "fwiou": r["fwiou"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("variant", choices=tuple(TRAINERS))
    t.add_argument("--train", required=True)
    t.add_argument("--val", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--mpp", type=float, default=1.944)
    t.add_argument("--encoder", default="pcam")
    t.add_argument("--tile-px", type=int, default=256)
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--tiles-per-epoch", type=int, default=256)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true")
    t.set_defaults(func=_train)
    r = sub.add_parser("report")
    r.add_argument("--test", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=_report)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
