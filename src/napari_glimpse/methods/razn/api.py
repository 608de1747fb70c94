"""What the registry calls for RAZN: load a checkpoint, segment a slide, evaluate a folder."""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ...runtime.events import Progress
from ...runtime.regions import read_region_at, to_tensor
from .config import RAZNConfig, RAZNInferConfig
from .data import field_px, level0_mpp, tissue_tiles
from .model import split_tiles

__all__ = ["load", "infer", "evaluate", "segment_fields", "ZOOM_COLOUR", "BREAK_COLOUR", "CLASS_COLOURS"]

METHOD = "razn"
ZOOM_COLOUR, BREAK_COLOUR = "#ff7f0e", "#1f9bff"
#: label colours by class index (0 transparent in napari's Labels)
CLASS_COLOURS = ("#00000000", "#2ca02c", "#d62728", "#9467bd", "#ffbf00", "#17becf", "#8c564b", "#e377c2")


def load(path: str, device):
    """``(RAZN in eval mode on device, its RAZNConfig)`` (never unpickles)."""
    from ...runtime.checkpoint import build_from_checkpoint
    from .model import build_model

    return build_from_checkpoint(path, METHOD, RAZNConfig, build_model, device)


class _Source:
    def __init__(self, slide, mpp0):
        self.slide, self.mpp0 = slide, mpp0


def _decide(pt: torch.Tensor, mode: str, rng: np.random.Generator) -> np.ndarray:
    p = pt.detach().cpu().numpy()
    if mode == "greedy":
        return p >= 0.5
    if mode == "sample":
        return rng.random(len(p)) < p
    return np.full(len(p), mode == "always")


def segment_fields(net, cfg: RAZNConfig, fields, mode: str, device, *, rng=None, batch_size: int = 16,
                   pool: ThreadPoolExecutor | None = None):
    """Segment x0 fields ``[(source, x0, y0)]`` (source: ``.slide``, ``.mpp0``) by ``mode``
    (greedy / sample / never / always).

    A tile at level i is read at T px; when it zooms, its field is read at r T px and cut into
    r^2 tiles of level i + 1; tiles that break are segmented by f_theta_i and their labels
    repeated up to the finest scale.

    Returns
    -------
    labels : (B, T r^m, T r^m) uint8 class indices at the finest scale
    decisions : list of dicts (field, level, box = level-0 (x0, y0, x1, y1), p = p~ or NaN, zoom)
    counts : dict with ``patches_read`` and ``pixels_read``
    """
    rng = rng or np.random.default_rng(0)
    T, r, m = cfg.tile_px, cfg.zoom_rate, cfg.zoom_levels
    tf = T * r ** m
    out = np.zeros((len(fields), tf, tf), np.uint8)
    own = pool is None
    pool = pool or ThreadPoolExecutor(4)
    counts = {"patches_read": 0, "pixels_read": 0}

    def read(b, x, y, s0, n):
        img, px = read_region_at(fields[b][0].slide, x, y, n, n, s0 / n)
        return img, px

    # current tiles: (field, x, y, size0, off_r, off_c) with their images
    tiles = [(b, float(x), float(y), field_px(cfg, src.mpp0), 0, 0) for b, (src, x, y) in enumerate(fields)]
    reads = list(pool.map(lambda t: read(t[0], t[1], t[2], t[3], T), tiles))
    images = np.stack([im for im, _ in reads]) if reads else np.zeros((0, T, T, 3), np.uint8)
    counts["patches_read"] += len(reads)
    counts["pixels_read"] += int(sum(px for _, px in reads))
    decisions = []
    try:
        for level in range(m + 1):
            if not tiles:
                break
            zoom = np.zeros(len(tiles), bool)
            p = np.full(len(tiles), np.nan)
            if level < m and mode != "never":
                ps = []
                for k in range(0, len(tiles), batch_size):
                    ps.append(net.p_tilde(level, to_tensor(images[k : k + batch_size], device)).detach().float().cpu())
                pt = torch.cat(ps)
                p = pt.numpy().astype(np.float64)
                zoom = _decide(pt, mode, rng)
            broken = np.flatnonzero(~zoom)
            up = r ** (m - level)
            for k in range(0, len(broken), batch_size):
                idx = broken[k : k + batch_size]
                lab = net.segs[level](to_tensor(images[idx], device)).detach().argmax(1).to(torch.uint8).cpu().numpy()
                if up > 1:
                    lab = np.repeat(np.repeat(lab, up, 1), up, 2)
                for j, ti in enumerate(idx):
                    b, _, _, _, orr, occ = tiles[ti]
                    out[b, orr : orr + T * up, occ : occ + T * up] = lab[j]
            for ti, (b, x, y, s0, _, _) in enumerate(tiles):
                decisions.append({"field": b, "level": level, "box": (x, y, x + s0, y + s0),
                                  "p": float(p[ti]), "zoom": bool(zoom[ti])})
            zi = np.flatnonzero(zoom)
            if not len(zi):
                break
            cur = tiles
            reads = list(pool.map(lambda i, cur=cur: read(cur[i][0], cur[i][1], cur[i][2], cur[i][3], T * r), zi))
            counts["patches_read"] += len(reads)
            counts["pixels_read"] += int(sum(px for _, px in reads))
            big = to_tensor(np.stack([im for im, _ in reads]))  # (Z, 3, rT, rT)
            kids = (split_tiles(big, r).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
            child_up = T * r ** (m - level - 1)
            new_tiles = []
            for ti in zi:
                b, x, y, s0, orr, occ = tiles[ti]
                for cr in range(r):
                    for cc in range(r):
                        new_tiles.append((b, x + cc * s0 / r, y + cr * s0 / r, s0 / r, orr + cr * child_up,
                                          occ + cc * child_up))
            tiles, images = new_tiles, kids
    finally:
        if own:
            pool.shutdown()
    return out, decisions, counts


def _temp_zarr(shape, chunk):
    import zarr

    folder = tempfile.mkdtemp(prefix="razn-labels-")
    atexit.register(shutil.rmtree, folder, True)
    return zarr.open_array(f"{folder}/labels.zarr", mode="w", shape=shape, chunks=(chunk, chunk), dtype="uint8",
                           fill_value=0)


def infer(slide, model, config: RAZNInferConfig, region) -> Generator:
    """Segment the slide (or ``region``): x0 tiles over tissue, the policy per tile, the labels
    stitched into a zarr label map at the finest scale (bounded memory), the zoom decisions as
    boxes, the largest components of the last class as evidence."""
    from scipy import ndimage

    from ...results import InferenceResult, SlideBoxes, SlideMap, SlidePoints
    from ...runtime.run import top_evidence

    net, cfg, device = model.model, model.config, model.device
    net.eval()
    T, r, m = cfg.tile_px, cfg.zoom_rate, cfg.zoom_levels
    tf = T * r ** m
    mpp0 = level0_mpp(slide, None, cfg.mpp / r ** m, config.image_mpp)
    fpx = field_px(cfg, mpp0)
    corners = tissue_tiles(slide, fpx)
    if region is not None:
        x0, y0, x1, y1 = (float(v) for v in region)
        keep = (corners[:, 0] + fpx > x0) & (corners[:, 0] < x1) & (corners[:, 1] + fpx > y0) & (corners[:, 1] < y1)
        corners = corners[keep]
    w0, h0 = slide.dimensions
    ds_f = fpx / tf
    shape = (math.ceil(h0 / ds_f), math.ceil(w0 / ds_f))
    labels = _temp_zarr(shape, tf)
    sub = 16  # evidence grid: 16 x 16 cells per field
    last = cfg.n_classes - 1
    grid = np.zeros((math.ceil(h0 / fpx) * sub, math.ceil(w0 / fpx) * sub), bool)
    area = np.zeros(cfg.n_classes, np.int64)
    src = _Source(slide, mpp0)
    rng = np.random.default_rng(config.seed)
    boxes, props, counts = [], {"p_tilde": [], "zoom": [], "level": []}, {"patches_read": 0, "pixels_read": 0}
    bs = max(1, config.batch_size)
    yield Progress("segment", 0, len(corners), f"{len(corners)} tiles over tissue")
    with ThreadPoolExecutor(4) as pool, torch.no_grad():
        for k in range(0, len(corners), bs):
            chunk = corners[k : k + bs]
            lab, dec, c = segment_fields(net, cfg, [(src, x, y) for x, y in chunk], config.policy, device,
                                         rng=rng, batch_size=bs, pool=pool)
            for key in counts:
                counts[key] += c[key]
            for j, (x, y) in enumerate(chunk):
                r0, c0 = int(round(y / ds_f)), int(round(x / ds_f))
                hh, ww = min(tf, shape[0] - r0), min(tf, shape[1] - c0)
                if hh <= 0 or ww <= 0:
                    continue
                piece = lab[j, :hh, :ww]
                labels[r0 : r0 + hh, c0 : c0 + ww] = piece
                area += np.bincount(piece.ravel(), minlength=cfg.n_classes)[: cfg.n_classes]
                g = (lab[j] == last).reshape(sub, tf // sub, sub, tf // sub).any(axis=(1, 3))
                gr, gc = int(round(y / fpx)) * sub, int(round(x / fpx)) * sub
                gh, gw = min(sub, grid.shape[0] - gr), min(sub, grid.shape[1] - gc)
                grid[gr : gr + gh, gc : gc + gw] |= g[:gh, :gw]
            for d in dec:
                boxes.append(d["box"])
                props["p_tilde"].append(d["p"])
                props["zoom"].append(d["zoom"])
                props["level"].append(d["level"])
            yield Progress("segment", min(k + bs, len(corners)), len(corners), "segmenting tiles")
    comp, n = ndimage.label(grid)
    sizes = np.bincount(comp.ravel())[1:] if n else np.zeros(0)
    centres = np.array(ndimage.center_of_mass(grid, comp, np.arange(1, n + 1)) if n else np.zeros((0, 2)))
    cell = fpx / sub
    ev_xy = (centres[:, ::-1] + 0.5) * cell if len(centres) else np.zeros((0, 2))
    order = np.argsort(-sizes, kind="stable")[:10] if n else np.zeros(0, int)
    ev_xy, ev_size = ev_xy[order].reshape(-1, 2), sizes[order] * cell * cell * mpp0 * mpp0 / 1e6
    b = np.array(boxes, np.float64).reshape(-1, 4)
    zoom = np.array(props["zoom"], bool)
    p_t = np.array(props["p_tilde"], np.float32)
    level = np.array(props["level"], np.int32)
    text = np.array(["" if not np.isfinite(v) else f"{v:.2f}" for v in p_t], object)
    colours = np.array([ZOOM_COLOUR if z else BREAK_COLOUR for z in zoom], object)
    classes = list(cfg.classes) or [str(i) for i in range(cfg.n_classes)]
    um2 = (ds_f * mpp0) ** 2
    area_mm2 = {name: float(area[i] * um2 / 1e6) for i, name in enumerate(classes)}
    tissue_px = int(area[1:].sum())
    score = float(area[last] / tissue_px) if tissue_px else 0.0
    top = level == 0
    zoom_rate = float(zoom[top].mean()) if top.any() else 0.0
    result = InferenceResult(
        METHOD, str(getattr(slide, "path", slide)), score,
        maps=[SlideMap("RAZN segmentation", labels, ds_f, kind="labels", opacity=0.5,
                       metadata={"classes": classes, "class_colours": list(CLASS_COLOURS[: len(classes)]),
                                 "razn_role": "segmentation", "class_area_mm2": area_mm2,
                                 "zoom_rate": zoom_rate})],
        boxes=[SlideBoxes("RAZN zoom decisions", b, {"p_tilde": p_t, "zoom": zoom, "level": level,
                                                     "label": text},
                          edge_color=colours if len(b) else ZOOM_COLOUR, edge_width_px=max(2.0, fpx / 100),
                          text="label", metadata={"zoom_colour": ZOOM_COLOUR, "break_colour": BREAK_COLOUR,
                                                  "razn_role": "zoom"})],
        points=[SlidePoints("RAZN evidence", ev_xy, {"area_mm2": ev_size.astype(np.float32),
                                                     "rank": np.arange(len(ev_xy))},
                            size_px=fpx / 4, face_color="yellow",
                            metadata={"ranked_by": f"area of the {classes[last]} component"})],
        summary={"slide_score": score, "slide_score_means": f"share of segmented tissue labelled {classes[last]}",
                 "slide_call": None, "evidence": top_evidence(ev_xy),
                 "patches_read": counts["patches_read"], "pixels_read": counts["pixels_read"],
                 "classes": classes, "class_area_mm2": area_mm2, "tiles": int(top.sum()),
                 "zoom_rate": zoom_rate, "policy": config.policy,
                 "label_um_per_px": float(ds_f * mpp0)},
        mpp=getattr(slide, "mpp", None))
    return result


def _tile_groups(truth: np.ndarray, last: int) -> int:
    """Per x0 tile of a field's truth (finest scale): 0 no last class, 1 border (mixed), 2 all last class."""
    has = truth == last
    return 2 if has.all() else int(has.any())


def evaluate(data_dir, model, config: RAZNInferConfig, *, limit: int = 0) -> Generator:
    """Per-class IoU, mean IoU, frequency-weighted IoU, relative time and zoom rate of the
    checkpoint on a folder of annotated images, with the baselines (its own f_theta0
    everywhere: scale 1; f_theta_m everywhere: the finest scale), all in one run.

    Every image is cut into x0 tiles over tissue; time is the wall time of reading and
    segmenting them (relative to scale 1 measured on the same tiles in the same run).
    """
    from .data import discover, label_crop, open_sources
    from .training import confusion_counts, iou_table

    net, cfg, device = model.model, model.config, model.device
    net.eval()
    items, _, binary = discover(data_dir, config.image_mpp)
    sources = open_sources(items, cfg, image_mpp=config.image_mpp, binary=binary, n_classes=cfg.n_classes)
    if limit:
        for s in sources[int(limit):]:
            s.close()
        sources = sources[: int(limit)]
    c, last = cfg.n_classes, cfg.n_classes - 1
    tf = cfg.tile_px * cfg.zoom_rate ** cfg.zoom_levels
    modes = (config.policy, "never", "always")
    cms = {mode: np.zeros((c, c), np.int64) for mode in modes}
    seconds = dict.fromkeys(modes, 0.0)
    zoom_by_group, tiles_by_group = np.zeros(3), np.zeros(3)
    reads = dict.fromkeys(modes, 0)
    n_tiles = 0
    rng = np.random.default_rng(config.seed)
    bs = max(1, config.batch_size)
    try:
        with ThreadPoolExecutor(4) as pool, torch.no_grad():
            for si, src in enumerate(sources):
                corners = tissue_tiles(src.slide, field_px(cfg, src.mpp0))
                n_tiles += len(corners)
                truth_all = []
                for k in range(0, len(corners), bs):
                    chunk = corners[k : k + bs]
                    truth = np.stack([label_crop(src, x, y, tf) for x, y in chunk])
                    truth_all.append(truth)
                    for mode in modes:
                        t0 = time.perf_counter()
                        lab, dec, cnt = segment_fields(net, cfg, [(src, x, y) for x, y in chunk], mode, device,
                                                       rng=rng, batch_size=bs, pool=pool)
                        seconds[mode] += time.perf_counter() - t0
                        reads[mode] += cnt["patches_read"]
                        cms[mode] += confusion_counts(truth, lab, c)
                        if mode == config.policy:
                            for d in dec:
                                if d["level"] == 0:
                                    g = _tile_groups(truth[d["field"]], last)
                                    tiles_by_group[g] += 1
                                    zoom_by_group[g] += d["zoom"]
                yield Progress("evaluate", si + 1, len(sources), f"image {si + 1}/{len(sources)}")
    finally:
        for s in sources:
            s.close()
    tables = {mode: iou_table(cm) for mode, cm in cms.items()}
    base = max(seconds["never"], 1e-9)
    main = tables[config.policy]
    zr = zoom_by_group / np.maximum(tiles_by_group, 1)
    return {"classes": list(cfg.classes), "iou": main["iou"], "miou": main["miou"], "fwiou": main["fwiou"],
            "relative_time": seconds[config.policy] / base, "zoom_rate": float(zoom_by_group.sum() / max(n_tiles, 1)),
            "zoom_rate_by_tile": {"no_" + (cfg.classes[last] if cfg.classes else "last"): float(zr[0]),
                                  "border": float(zr[1]), "inside": float(zr[2])},
            "tiles_by_kind": tiles_by_group.astype(int).tolist(),
            "baselines": {"scale1": {**tables["never"], "relative_time": 1.0},
                          "scale2": {**tables["always"], "relative_time": seconds["always"] / base}},
            "policy": config.policy, "images": len(sources), "tiles": n_tiles,
            "seconds": {k: float(v) for k, v in seconds.items()}, "patches_read": reads,
            "checkpoint": model.checkpoint}
