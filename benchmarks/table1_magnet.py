"""Table 1 of the MagNet paper on PCam mosaics: held-out slide AUC overall and by tumour size,
patches and pixels read against a dense tiling, seconds against a dense CELNet pass, in one run.

Tumour size per positive slide: the largest 4-connected region of tumour cells in its
``cells.json`` (macro >= 50 cells, micro 5-49, ITC 1-4); each size row is that size's positives
against all negatives. Baselines from the same run: the auxiliary classifiers of layer 1 (its
2 patches at 56 px: no magnification) and of layer 3 (the leaves, mean-pooled, no GRU).
"On the tumour": the leaf whose rise in running probability is largest overlaps a tumour cell.

Dense tiling: the tissue tiled at the leaves' mean resolution (leaf_px tiles) and at the
slide's full resolution (the 96 px cells CELNet and the PCam encoder read). Seconds: wall
clock per slide (open, every read, the network), against CELNet's dense pass (its windows over
the tissue, no CELM) on the first ``--celnet-slides`` slides, interleaved with MagNet's.

    python benchmarks/table1_magnet.py --data HELDOUT --models m3_bilinear=CKPT m3_lms=CKPT \
        --json docs/magnet_table1.json --markdown docs/magnet_table1.md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

SIZES = (("macro (>= 50 cells)", 50, 10**9), ("micro (5-49)", 5, 49), ("ITC (1-4)", 1, 4))


def largest_region(cells: dict) -> int:
    t = np.asarray(cells.get("tumour_cells") or [], int).reshape(-1, 2)
    if not len(t):
        return 0
    grid = np.zeros(tuple(cells["grid"]), bool)
    grid[t[:, 0], t[:, 1]] = True
    lab, n = ndimage.label(grid)
    return int(np.bincount(lab.ravel())[1:].max()) if n else 0


def tumour_boxes(cells: dict) -> np.ndarray:
    """Level-0 (x0, y0, x1, y1) of every tumour cell (the lattice offset applied)."""
    t = np.asarray(cells.get("tumour_cells") or [], float).reshape(-1, 2)
    size = float(cells.get("cell_size", 96))
    ox, oy = (float(v) for v in cells.get("lattice_offset", (0, 0)))
    x0, y0 = t[:, 1] * size - ox, t[:, 0] * size - oy
    return np.stack([x0, y0, x0 + size, y0 + size], 1)


def overlaps(box, boxes) -> bool:
    if not len(boxes):
        return False
    x0, y0, x1, y1 = box
    return bool(np.any((boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)))


def auc_row(labels, scores) -> dict:
    from napari_glimpse.evaluate import bootstrap_auc_interval, roc_auc

    labels, scores = np.asarray(labels), np.asarray(scores)
    if len(set(labels.tolist())) < 2:
        return {"auc": None, "auc_interval": [None, None], "n_pos": int(labels.sum()), "n_neg": int((1 - labels).sum())}
    lo, hi = bootstrap_auc_interval(labels, scores)
    return {"auc": roc_auc(labels, scores), "auc_interval": [lo, hi], "n_pos": int(labels.sum()),
            "n_neg": int((1 - labels).sum())}


def rows_by_size(labels, scores, sizes) -> dict:
    labels, scores, sizes = np.asarray(labels), np.asarray(scores), np.asarray(sizes)
    out = {"overall": auc_row(labels, scores)}
    for name, lo, hi in SIZES:
        keep = (labels == 0) | ((sizes >= lo) & (sizes <= hi))
        out[name] = auc_row(labels[keep], scores[keep])
    return out


def run_magnet(model, item, cells, leaf_px):
    import torch

    from napari_glimpse.methods.magnet.api import leaf_table
    from napari_glimpse.methods.magnet.training import run_slide

    t0 = time.perf_counter()
    with torch.no_grad():
        out, counts = run_slide(model.model, item.path, model.config, model.device, with_aux=True)
    seconds = time.perf_counter() - t0
    leaves = leaf_table(out)
    top = int(np.argmax(leaves["rise"]))
    leaf_ds = float(np.mean(leaves["box"][:, 2] - leaves["box"][:, 0])) / leaf_px
    aux = {f"aux{k + 1}": float(torch.softmax(v, -1)[1]) for k, v in out["aux"].items()}
    return {"score": float(torch.softmax(out["logits"], -1)[1]), **aux, "seconds": seconds, **counts,
            "leaf_ds": leaf_ds, "top_on_tumour": overlaps(leaves["box"][top], tumour_boxes(cells)),
            "any_leaf_on_tumour": any(overlaps(b, tumour_boxes(cells)) for b in leaves["box"])}


def run_celnet(model, path) -> float:
    from napari_glimpse.methods import get_method
    from napari_glimpse.runtime.events import run_to_end
    from napari_glimpse.runtime.run import run_inference
    from napari_glimpse.slides import open_slide

    spec = get_method("celnet")
    t0 = time.perf_counter()
    with open_slide(path) as slide:
        run_to_end(run_inference(spec, slide, model, overrides={"celm": False}))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="held-out mosaics + labels.csv + <stem>.cells.json")
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=CKPT")
    p.add_argument("--celnet-slides", type=int, default=4, help="slides timed with a dense CELNet pass")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)

    import torch

    from napari_glimpse.methods import load_model
    from napari_glimpse.methods.magnet.training import labelled_slides

    torch.set_num_threads(args.threads)
    models = {}
    for ref in args.models:
        name, _, path = ref.partition("=")
        models[name] = load_model("magnet", path or name, "cpu")
    first = next(iter(models.values()))
    items = labelled_slides(args.data, first.config)
    if args.limit:
        items = items[: args.limit]
    cells = {i.stem: json.loads(Path(i.path).with_name(i.stem + ".cells.json").read_text()) for i in items}
    celnet = load_model("celnet", None, "cpu") if args.celnet_slides else None
    per = {name: [] for name in models}
    celnet_seconds, magnet_seconds_same = [], []
    for k, item in enumerate(items):
        for name, model in models.items():
            per[name].append(run_magnet(model, item, cells[item.stem], model.config.leaf_px))
        if celnet is not None and k < args.celnet_slides:
            celnet_seconds.append(run_celnet(celnet, item.path))
            magnet_seconds_same.append(per[next(iter(models))][-1]["seconds"])
        print(f"{k + 1}/{len(items)} {item.stem}", flush=True)
    labels = [int(i.label) for i in items]
    sizes = [largest_region(cells[i.stem]) for i in items]
    tissue_cells = np.array([cells[i.stem]["tissue_cells"] for i in items], float)
    cell = float(next(iter(cells.values())).get("cell_size", 96))
    report = {"n": len(items), "n_pos": int(sum(labels)), "tumour_sizes": sizes, "labels": labels,
              "stems": [i.stem for i in items], "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "models": {}}
    for name, rs in per.items():
        cfg = models[name].config
        scores = [r["score"] for r in rs]
        leaf_ds = np.array([r["leaf_ds"] for r in rs])
        dense_leaf_tiles = tissue_cells * cell**2 / (cfg.leaf_px * leaf_ds) ** 2
        pos = [r for r, y in zip(rs, labels, strict=True) if y]
        row = {
            "checkpoint": models[name].checkpoint, "patches": list(cfg.patches), "sampler": cfg.sampler,
            "auc": rows_by_size(labels, scores, sizes),
            "baselines": {key: rows_by_size(labels, [r[key] for r in rs], sizes)["overall"]
                          for key in ("aux1", "aux3") if key in rs[0]},
            "patches_read_mean": float(np.mean([r["patches_read"] for r in rs])),
            "pixels_read_mean": float(np.mean([r["pixels_read"] for r in rs])),
            "leaf_um_per_px_mean": float(np.mean(leaf_ds) * cfg.mpp),
            "dense_tiles_at_leaf_resolution_mean": float(np.mean(dense_leaf_tiles)),
            "dense_pixels_at_leaf_resolution_mean": float(np.mean(tissue_cells * cell**2 / leaf_ds**2)),
            "dense_cells_full_resolution_mean": float(np.mean(tissue_cells)),
            "dense_pixels_full_resolution_mean": float(np.mean(tissue_cells * cell**2)),
            "seconds_per_slide": float(np.mean([r["seconds"] for r in rs])),
            "top_rise_leaf_on_tumour": [int(sum(r["top_on_tumour"] for r in pos)), len(pos)],
            "any_leaf_on_tumour": [int(sum(r["any_leaf_on_tumour"] for r in pos)), len(pos)],
            "scores": scores,
        }
        row["fewer_patches_than_dense_leaf_tiling"] = row["dense_tiles_at_leaf_resolution_mean"] / row["patches_read_mean"]
        row["fewer_patches_than_dense_cells"] = row["dense_cells_full_resolution_mean"] / row["patches_read_mean"]
        row["fewer_pixels_than_dense_full_resolution"] = (row["dense_pixels_full_resolution_mean"]
                                                          / row["pixels_read_mean"])
        report["models"][name] = row
    if celnet_seconds:
        report["celnet_dense_seconds_per_slide"] = float(np.mean(celnet_seconds))
        report["magnet_seconds_same_slides"] = float(np.mean(magnet_seconds_same))
        report["celnet_over_magnet_seconds"] = float(np.mean(celnet_seconds) / np.mean(magnet_seconds_same))
    text = markdown(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


def _fmt(r: dict) -> str:
    if r["auc"] is None:
        return "n/a"
    lo, hi = r["auc_interval"]
    return f"{r['auc']:.3f} [{lo:.3f}, {hi:.3f}] ({r['n_pos']}+/{r['n_neg']}-)"


def markdown(report: dict) -> str:
    names = [n for n, _, _ in SIZES]
    lines = [f"Held-out mosaics: {report['n']} ({report['n_pos']} positive); 95 % stratified bootstrap intervals.", "",
             "| model | overall | " + " | ".join(names) + " | aux layer 1 | aux layer 3 | top-rise leaf on tumour |",
             "|---" * (5 + len(names)) + "|"]
    for name, row in report["models"].items():
        a = row["auc"]
        base = row["baselines"]
        hit = row["top_rise_leaf_on_tumour"]
        lines.append(f"| {name} | {_fmt(a['overall'])} | " + " | ".join(_fmt(a[n]) for n in names)
                     + f" | {_fmt(base['aux1']) if 'aux1' in base else '-'} | {_fmt(base['aux3']) if 'aux3' in base else '-'}"
                     + f" | {hit[0]}/{hit[1]} |")
    lines += ["", "| model | patches read | dense tiles at leaf resolution (ratio) | dense 96 px cells (ratio) | "
              "pixels read | dense pixels, full resolution (ratio) | leaf um/px | s / slide |", "|---" * 8 + "|"]
    for name, row in report["models"].items():
        lines.append(
            f"| {name} | {row['patches_read_mean']:.0f} | {row['dense_tiles_at_leaf_resolution_mean']:.0f} "
            f"({row['fewer_patches_than_dense_leaf_tiling']:.1f}x) | {row['dense_cells_full_resolution_mean']:.0f} "
            f"({row['fewer_patches_than_dense_cells']:.0f}x) | {row['pixels_read_mean'] / 1e6:.2f} M | "
            f"{row['dense_pixels_full_resolution_mean'] / 1e6:.0f} M ({row['fewer_pixels_than_dense_full_resolution']:.0f}x) | "
            f"{row['leaf_um_per_px_mean']:.2f} | {row['seconds_per_slide']:.2f} |")
    if "celnet_dense_seconds_per_slide" in report:
        lines += ["", f"Dense CELNet pass: {report['celnet_dense_seconds_per_slide']:.1f} s per slide against "
                  f"{report['magnet_seconds_same_slides']:.2f} s for the first MagNet on the same slides "
                  f"({report['celnet_over_magnet_seconds']:.0f}x), {report['threads']} threads."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
