"""CELNet on a whole slide (or a region): dense tumour probability, CELM evidence, peaks.

Fully convolutional (CELNet docstring, "Contract for fully-convolutional slide inference"):
a tile of ``tile_cells`` x ``tile_cells`` windows is read at the working resolution with
``context_margin`` px of slide around it, F2/F3 are computed once, and the companion
GAP/GMP pooling runs over every 96-px window ``stride`` px apart with ``avg_pool2d`` /
``max_pool2d`` on the feature maps. Each map cell therefore equals
``model.classify_with_context`` of the window centred on it. Tiles overlap only by the
context the network needs, and tiles without tissue are never read.

Outputs (level-0 coordinates): the probability map (one cell per stride, centred on its
window), the CELM evidence map (per window above ``prob_threshold``, on a lattice of
non-overlapping windows, pasted with max at ``evidence_cell`` working px), the thresholded
evidence mask (labels), NMS peaks (points with ``score``) and the slide score (the map's max).
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Sequence

import numpy as np
import torch

from ..results import InferenceResult, SlideMap, SlidePoints
from ..runtime.inference import (
    RunStats,
    WindowGrid,
    batched,
    plan_tiles,
    progress,
    read_tile,
    run_with_oom_retry,
    tissue_on_cells,
    working_grid,
)
from .celm import CELMParams, compute_celm, evidence_mask, nms_peaks


def _to_tensor(images: np.ndarray, device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] (CELNet normalises itself)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255)


def tile_cells_for(model, stride: int, tile_size: int) -> int:
    """Windows per tile side so that a tile's input (with context) is about ``tile_size`` px."""
    p, m = model.config.patch_size, model.context_margin
    return max(1, (tile_size - p - 2 * m) // stride + 1)


@torch.no_grad()
def dense_tile_probabilities(model, tiles: np.ndarray, tile_cells: int, stride: int) -> np.ndarray:
    """Probabilities (N, tile_cells, tile_cells) of the windows of tiles read with context.

    ``tiles`` is (N, S, S, 3) uint8 with S = (tile_cells - 1) * stride + patch + 2 * margin;
    cell (r, c) is the window whose top-left is (margin + r * stride, margin + c * stride).
    """
    m = model.context_margin
    device = next(model.parameters()).device
    f2, f3 = model.features(_to_tensor(tiles, device))
    # Drop the margin so window (0, 0) starts at feature cell 0; windows near the far border
    # fall off because window_logits only returns windows that fit inside the features.
    f2 = f2[:, :, m // 2 :, m // 2 :]
    f3 = f3[:, :, m // 4 :, m // 4 :]
    logits = model.window_logits(f2, f3, stride)
    if logits.shape[1] < tile_cells or logits.shape[2] < tile_cells:
        raise RuntimeError(f"tile gave {tuple(logits.shape[1:])} windows, expected {tile_cells}")
    return torch.sigmoid(logits[:, :tile_cells, :tile_cells]).float().cpu().numpy()


def _check_stride(model, stride: int) -> None:
    if stride <= 0 or stride % model.stride:
        raise ValueError(f"stride must be a positive multiple of {model.stride} px, got {stride}")
    if model.context_margin is None:
        raise ValueError("this CELNet uses global channel attention (channel_window=None): "
                         "it has no finite context, so dense slide inference cannot be exact")


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
    celm_batch: int = 32,
    evidence_cell: int = 8,
    params: CELMParams | None = None,
    checkpoint: str | None = None,
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
    evidence_cell
        Working px per evidence-map cell.
    params
        CELM / NMS settings; from ``model.config`` when None.
    checkpoint
        Recorded in the summary.

    Yields
    ------
    Progress

    Returns
    -------
    InferenceResult
    """
    if isinstance(slide, (str, os.PathLike)):
        from ..slides import open_slide

        with open_slide(slide) as opened:
            return (yield from infer_celnet(
                opened, model, region=region, stride=stride, tile_size=tile_size,
                batch_size=batch_size, tissue=tissue, celm=celm, celm_batch=celm_batch,
                evidence_cell=evidence_cell, params=params, checkpoint=checkpoint))

    _check_stride(model, stride)
    params = params or CELMParams.from_config(model.config)
    stats = RunStats()
    patch, margin = model.config.patch_size, model.context_margin
    grid = working_grid(slide, model.config.mpp, region)
    windows = WindowGrid(grid, patch, stride)
    if isinstance(tissue, str):
        from ..slides.tissue import tissue_mask

        tissue = tissue_mask(slide, method=tissue)
    on = tissue_on_cells(windows, tissue)
    n = tile_cells_for(model, stride, tile_size)
    tiles = plan_tiles(on, n)
    prob = np.zeros(windows.shape, np.float32)
    ev_shape = tuple(math.ceil(s * stride / evidence_cell) for s in windows.shape)
    evidence = np.zeros(ev_shape, np.float32) if celm else None
    lattice = max(1, patch // stride)  # windows this many cells apart do not overlap
    total = len(tiles)
    done = 0
    for group in batched(tiles, batch_size):
        reads = [read_tile(slide, windows, t, n, context=margin) for t in group]
        stats.pixels_read += sum(px for _, px in reads)
        stats.patches_read += len(group)
        images = np.stack([img for img, _ in reads])
        probs = run_with_oom_retry(lambda b: dense_tile_probabilities(model, b, n, stride), images)
        for t, img, p in zip(group, images, probs, strict=True):
            keep = on[t.row0 : t.row0 + t.rows, t.col0 : t.col0 + t.cols]
            prob[t.row0 : t.row0 + t.rows, t.col0 : t.col0 + t.cols] = np.where(
                keep, p[: t.rows, : t.cols], 0.0)
            if celm:
                _paste_evidence(model, img, t, prob, keep, windows, evidence, evidence_cell,
                                lattice, margin, params, celm_batch)
        stats.batches += 1
        done += len(group)
        yield progress("inference", done, total, f"tile {done}/{total}",
                       max_probability=float(prob.max()) if prob.size else 0.0)

    return _assemble(slide, grid, windows, prob, evidence, evidence_cell, params, stats,
                     checkpoint, str(next(model.parameters()).device), stride, n)


def _paste_evidence(model, img, tile, prob, keep, windows, evidence, evidence_cell, lattice,
                    margin, params, celm_batch):
    """CELM of the tile's windows above the probability threshold, max-pasted into ``evidence``."""
    s, p = windows.stride, windows.patch
    sub = prob[tile.row0 : tile.row0 + tile.rows, tile.col0 : tile.col0 + tile.cols]
    rr, cc = np.nonzero(keep & (sub > params.prob_threshold))
    on_lattice = ((tile.row0 + rr) % lattice == 0) & ((tile.col0 + cc) % lattice == 0)
    rr, cc = rr[on_lattice], cc[on_lattice]
    device = next(model.parameters()).device
    k = p // evidence_cell
    for sel in batched(np.arange(len(rr)), celm_batch):
        crops = np.stack([img[margin + r * s : margin + r * s + p, margin + c * s : margin + c * s + p]
                          for r, c in zip(rr[sel], cc[sel], strict=False)])
        out = compute_celm(model, _to_tensor(crops, device), params).celm
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
    }
    return InferenceResult("celnet", slide.path, score, maps=maps, points=points,
                           summary=summary, mpp=slide.mpp)


def infer(slide_path, checkpoint=None, *, device=None, region=None, stride=32, **kwargs) -> Generator:
    """Registry entry point: load the checkpoint (or the registry default) and run
    :func:`infer_celnet` on ``slide_path``. Yields Progress, returns InferenceResult."""
    model, ckpt = load_celnet(checkpoint, device)
    return (yield from infer_celnet(slide_path, model, region=region, stride=stride,
                                    checkpoint=ckpt, **kwargs))


def load_celnet(checkpoint=None, device=None):
    """(model in eval mode on ``device``, checkpoint path) from a checkpoint file.

    Prefers the model helpers' ``runtime.checkpoint.load_model`` and the registry's default
    checkpoint; until those exist, reads a safetensors file whose metadata holds the
    ``config`` as JSON (see :func:`save_celnet`). Never unpickles.
    """
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        from ..runtime.checkpoint import load_model
    except ImportError:
        load_model = None
    if checkpoint is None:
        try:
            from .registry import get_method

            checkpoint = get_method("celnet").default_checkpoint
            checkpoint = checkpoint() if callable(checkpoint) else checkpoint
        except ImportError:
            checkpoint = None
        if checkpoint is None:
            from ..errors import CheckpointError

            raise CheckpointError("no checkpoint given and celnet has no default checkpoint")
    if load_model is not None:
        model = load_model(checkpoint, method="celnet", device=dev)
    else:
        model = _load_safetensors(checkpoint).to(dev)
    return model.eval(), str(checkpoint)


def save_celnet(model, path) -> None:
    """Weights + JSON config in one safetensors file (the format :func:`load_celnet` reads)."""
    import dataclasses
    import json

    from safetensors.torch import save_file

    meta = {"method": "celnet", "config": json.dumps(dataclasses.asdict(model.config))}
    tmp = f"{path}.tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp, metadata=meta)
    os.replace(tmp, path)


def _load_safetensors(path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..errors import CheckpointError
    from .celnet import CELNet, CELNetConfig

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("method") != "celnet":
            raise CheckpointError(f"not a celnet checkpoint (method={meta.get('method')!r})", path)
        model = CELNet(CELNetConfig(**json.loads(meta["config"])))
        model.load_state_dict(load_file(str(path)))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"cannot load checkpoint: {exc}", path) from exc
    return model
