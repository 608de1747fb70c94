"""CELNet on a whole slide (or a region): dense tumour probability, CELM evidence, peaks.

Fully convolutional (CELNet docstring, "Contract for fully-convolutional slide inference"):
a tile of ``tile_cells`` x ``tile_cells`` windows is read at the working resolution with
``context_margin`` px of slide around it, F2/F3 are computed once, and the companion
GAP/GMP pooling runs over every 96-px window ``stride`` px apart with ``avg_pool2d`` /
``max_pool2d`` on the feature maps. Each map cell therefore equals
``model.classify_with_context`` of the window centred on it. Tiles overlap only by the
context the network needs, and tiles without tissue are never read.

A tile's features are computed in pieces (:mod:`.celnet_dense`) and CELM in small batches,
with a progress report after each, so a GUI sees progress and can cancel (stop iterating)
within about a second even on a CPU.

Outputs (level-0 coordinates): the probability map (one cell per stride, centred on its
window), the CELM evidence map (per window above ``prob_threshold``, on a lattice of
non-overlapping windows, pasted with max at ``evidence_cell`` working px), the thresholded
evidence mask (labels), NMS peaks (points with ``score``) and the slide score (the map's max).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator, Sequence

import numpy as np
import torch

from ...results import InferenceResult, SlideMap, SlidePoints
from ...runtime.device import is_oom
from ...runtime.inference import (
    RunStats,
    WindowGrid,
    batched,
    plan_tiles,
    progress,
    read_tile,
    tissue_on_cells,
    working_grid,
)
from ...runtime.regions import to_tensor
from ...runtime.run import top_evidence
from .celm import CELMParams, compute_celm, evidence_mask, nms_peaks
from .config import CELNetConfig, CELNetInferConfig  # noqa: F401
from .dense import count_pieces, default_piece, iter_tile_probabilities


class _CELMBatch:
    """CELM windows per gradient pass: fixed when given, else grown from 1 so that a pass
    takes about ``target`` seconds (a window costs about a second on a loaded CPU and
    milliseconds on a GPU, where larger batches pay)."""

    def __init__(self, size: int | None, target: float = 1.0, largest: int = 64):
        self.fixed, self.size, self.target, self.largest = bool(size), size or 1, target, largest

    def update(self, windows: int, seconds: float) -> None:
        if not self.fixed and windows:
            fit = int(self.target * windows / max(seconds, 1e-6))
            self.size = max(1, min(self.largest, 2 * self.size, fit))


def tile_cells_for(model, stride: int, tile_size: int, shape: tuple[int, int] | None = None) -> int:
    """Windows per tile side so that a tile's input (with context) is about ``tile_size`` px.

    With the map ``shape`` (rows, cols), tiles shrink to split it evenly: a map of 32 x 32
    cells gets one 32-cell tile rather than a mostly empty 35-cell one.
    """
    p, m = model.config.patch_size, model.context_margin
    n = max(1, (tile_size - p - 2 * m) // stride + 1)
    if shape is not None:
        n = max(1, max(math.ceil(d / math.ceil(d / n)) for d in shape))
    return n


def dense_tile_probabilities(model, tiles: np.ndarray, tile_cells: int, stride: int) -> np.ndarray:
    """Probabilities (N, tile_cells, tile_cells) of the windows of tiles read with context
    (all at once; :func:`.celnet_dense.iter_tile_probabilities` is the piecewise version)."""
    gen = iter_tile_probabilities(model, tiles, tile_cells, stride, piece=2**62)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _check_stride(model, stride: int) -> None:
    if stride <= 0 or stride % model.stride:
        raise ValueError(f"stride must be a positive multiple of {model.stride} px, got {stride}")
    if model.context_margin is None:
        raise ValueError("this CELNet uses global channel attention (channel_window=None): "
                         "it has no finite context, so dense slide inference cannot be exact")


def _probabilities(model, images, n, stride, piece, tta=False) -> Generator:
    """:func:`iter_tile_probabilities`, on halves of the batch (recursively) when out of memory."""
    try:
        return (yield from iter_tile_probabilities(model, images, n, stride, piece, tta))
    except (RuntimeError, MemoryError) as exc:
        if not is_oom(exc) or len(images) <= 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(images) // 2
        a = yield from _probabilities(model, images[:half], n, stride, piece, tta)
        b = yield from _probabilities(model, images[half:], n, stride, piece, tta)
        return np.concatenate([a, b])


def infer_celnet(
    slide,
    model,
    *,
    region: Sequence[float] | None = None,
    stride: int = 32,
    tile_size: int = 1536,
    batch_size: int = 1,
    tissue="otsu",
    celm: bool = True,
    celm_batch: int | None = None,
    evidence_cell: int = 8,
    params: CELMParams | None = None,
    checkpoint: str | None = None,
    piece_size: int | None = None,
    tta: bool = False,
) -> Generator:
    """Run CELNet over the tissue of a slide (or a region), yielding progress.

    Parameters
    ----------
    slide
        An open Slide, or a path (opened and closed here).
    model
        A CELNet in eval mode, on the device to use.
    region
        Level-0 (x0, y0, x1, y1), e.g. the napari view; default the whole slide.
    stride
        Pixels between windows at the working resolution (multiple of ``model.stride``).
    tile_size
        Approximate tile input size in working px (context included); bounds memory.
    batch_size
        Tiles per forward pass (halved on out-of-memory).
    tissue
        ``"otsu"`` / ``"grey"`` (tissue_mask method), a TissueMask, or None (no mask).
    celm
        Compute the CELM evidence map, mask and peaks (needs gradients: slower).
    celm_batch
        Windows per CELM pass, one progress report each; None: grown from 1 so that a
        pass takes about a second.
    evidence_cell
        Working px per evidence-map cell.
    params
        CELM / NMS settings; from ``model.config`` when None.
    checkpoint
        Recorded in the summary.
    piece_size
        Output activations per feature piece (one progress report each); None: about half a
        second of work on the model's device (:data:`.celnet_dense.DEFAULT_PIECE`).
    tta
        Average the probability map over the 8 rotations / flips of each window (8x the
        feature cost; CELM is computed on the unturned windows).

    Yields
    ------
    Progress
        ``done`` / ``total`` count feature pieces over all tiles; CELM batches report
        in ``message`` without advancing ``done``.

    Returns
    -------
    InferenceResult
    """
    if isinstance(slide, (str, os.PathLike)):
        from ...slides import open_slide

        with open_slide(slide) as opened:
            return (yield from infer_celnet(
                opened, model, region=region, stride=stride, tile_size=tile_size,
                batch_size=batch_size, tissue=tissue, celm=celm, celm_batch=celm_batch,
                evidence_cell=evidence_cell, params=params, checkpoint=checkpoint,
                piece_size=piece_size, tta=tta))

    _check_stride(model, stride)
    params = params or CELMParams.from_config(model.config)
    device = next(model.parameters()).device
    piece = piece_size or default_piece(device)
    celm_batch = _CELMBatch(celm_batch)
    stats = RunStats()
    patch, margin = model.config.patch_size, model.context_margin
    grid = working_grid(slide, model.config.mpp, region)
    windows = WindowGrid(grid, patch, stride)
    if isinstance(tissue, str):
        from ...slides.tissue import tissue_mask

        tissue = tissue_mask(slide, method=tissue)
    on = tissue_on_cells(windows, tissue)
    n = tile_cells_for(model, stride, tile_size, windows.shape)
    tiles = plan_tiles(on, n)
    prob = np.zeros(windows.shape, np.float32)
    ev_shape = tuple(math.ceil(s * stride / evidence_cell) for s in windows.shape)
    evidence = np.zeros(ev_shape, np.float32) if celm else None
    lattice = max(1, patch // stride)  # windows this many cells apart do not overlap
    size = (n - 1) * stride + patch + 2 * margin
    groups = list(batched(tiles, batch_size))
    per_group = [count_pieces(model, size, len(g), piece) * (8 if tta else 1) for g in groups]
    total, done = sum(per_group), 0
    for k, group in enumerate(groups):
        reads = [read_tile(slide, windows, t, n, context=margin) for t in group]
        stats.pixels_read += sum(px for _, px in reads)
        stats.patches_read += len(group)
        images = np.stack([img for img, _ in reads])
        what = f"tile {k + 1}/{len(groups)}"
        features = _probabilities(model, images, n, stride, piece, tta)
        while True:
            try:
                next(features)
            except StopIteration as stop:
                probs = stop.value
                break
            done = min(done + 1, total)
            yield progress("inference", done, total, f"{what}: features")
        for t, img, p in zip(group, images, probs, strict=True):
            keep = on[t.row0 : t.row0 + t.rows, t.col0 : t.col0 + t.cols]
            prob[t.row0 : t.row0 + t.rows, t.col0 : t.col0 + t.cols] = np.where(
                keep, p[: t.rows, : t.cols], 0.0)
            if celm:
                for j, m in _paste_evidence(model, img, t, prob, keep, windows, evidence,
                                            evidence_cell, lattice, margin, params, celm_batch):
                    yield progress("inference", done, total, f"{what}: evidence {j}/{m} windows")
        stats.batches += 1
        done = sum(per_group[: k + 1])
        yield progress("inference", done, total, what,
                       max_probability=float(prob.max()) if prob.size else 0.0)

    result = _assemble(slide, grid, windows, prob, evidence, evidence_cell, params, stats,
                       checkpoint, str(device), stride, n)
    result.summary["tta"] = bool(tta)
    return result


def _paste_evidence(model, img, tile, prob, keep, windows, evidence, evidence_cell, lattice,
                    margin, params, celm_batch) -> Generator:
    """CELM of the tile's windows above the probability threshold, max-pasted into ``evidence``.

    Yields ``(windows done, windows)`` after each CELM batch (sized by ``celm_batch``).
    """
    s, p = windows.stride, windows.patch
    sub = prob[tile.row0 : tile.row0 + tile.rows, tile.col0 : tile.col0 + tile.cols]
    rr, cc = np.nonzero(keep & (sub > params.prob_threshold))
    on_lattice = ((tile.row0 + rr) % lattice == 0) & ((tile.col0 + cc) % lattice == 0)
    rr, cc = rr[on_lattice], cc[on_lattice]
    device = next(model.parameters()).device
    k = p // evidence_cell
    start = 0
    while start < len(rr):
        sel = np.arange(start, min(len(rr), start + celm_batch.size))
        started = time.perf_counter()
        crops = np.stack([img[margin + r * s : margin + r * s + p, margin + c * s : margin + c * s + p]
                          for r, c in zip(rr[sel], cc[sel], strict=False)])
        out = compute_celm(model, to_tensor(crops, device), params).celm
        cells = torch.nn.functional.adaptive_avg_pool2d(out[:, None], k)[:, 0].cpu().numpy()
        for (r, c), m in zip(zip(rr[sel], cc[sel], strict=False), cells, strict=True):
            # Window top-left in working px relative to the region, then evidence cells.
            ex = ((tile.col0 + c) * s - windows.offset) // evidence_cell
            ey = ((tile.row0 + r) * s - windows.offset) // evidence_cell
            x0, y0 = max(ex, 0), max(ey, 0)
            x1, y1 = min(ex + k, evidence.shape[1]), min(ey + k, evidence.shape[0])
            if x1 > x0 and y1 > y0:
                view = evidence[y0:y1, x0:x1]
                np.maximum(view, m[y0 - ey : y1 - ey, x0 - ex : x1 - ex], out=view)
        celm_batch.update(len(sel), time.perf_counter() - started)
        start += len(sel)
        yield start, len(rr)


def _assemble(slide, grid, windows, prob, evidence, evidence_cell, params, stats, checkpoint,
              device, stride, tile_cells) -> InferenceResult:
    maps = [SlideMap("tumour probability", prob, windows.cell_size, windows.origin,
                     colormap="inferno", metadata={"stride": stride, "patch": windows.patch})]
    points = []
    if evidence is not None:
        # Evidence cell (0, 0) starts at the region corner (window offsets are multiples of it).
        ev_cell = evidence_cell * grid.downsample
        ev_origin = grid.to_level0(0, 0)
        maps.append(SlideMap("CELM evidence", evidence, ev_cell, ev_origin, colormap="magma",
                             metadata={"alpha": params.alpha, "beta": params.beta}))
        mask = evidence_mask(evidence, params.mask_threshold, params.mask_sigma)
        maps.append(SlideMap("evidence mask", mask, ev_cell, ev_origin, kind="labels",
                             colormap="red", contrast_limits=None, opacity=0.5,
                             metadata={"threshold": params.mask_threshold}))
    rc, scores = nms_peaks(prob, params.nms_min_distance, params.nms_min_score, params.nms_max_peaks)
    points.append(SlidePoints("tumour peaks", windows.cell_centres(rc[:, 0], rc[:, 1]),
                              {"score": scores}, size_px=windows.patch * grid.downsample,
                              face_color="cyan",
                              metadata={"min_distance_cells": params.nms_min_distance}))
    score = float(prob.max()) if prob.size else 0.0
    summary = {
        "slide_score": score,
        "seconds": stats.seconds,
        "patches_read": stats.patches_read,
        "pixels_read": stats.pixels_read,
        "windows": int(prob.size),
        "region": [int(v) for v in grid.region],
        "level": grid.level,
        "working_mpp": grid.mpp,
        "mpp_assumed": grid.mpp_assumed,
        "resize": grid.zoom,
        "stride": stride,
        "tile_cells": tile_cells,
        "checkpoint": checkpoint,
        "device": device,
        "evidence": top_evidence(points[0].xy, scores),
    }
    return InferenceResult("celnet", slide.path, score, maps=maps, points=points,
                           summary=summary, mpp=slide.mpp)
