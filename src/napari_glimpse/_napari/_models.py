"""The models ``napari-glimpse view`` runs on the sample mosaic, with a result cache.

Every registered method that ships a default checkpoint runs through the same registry
``infer`` generator the "Run model" widget uses. A finished result is saved under
``<mosaic cache>/results/<method>-<hash>``, the hash covering the checkpoint's bytes and the
inference parameters, so a second start loads it instead of recomputing.

Nothing here imports Qt: :func:`run_models` is a Progress generator that the viewer wraps
in a ``thread_worker`` (interactive) or drains in the main thread (headless).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class MethodRun:
    """One method's result on the sample mosaic and how it was obtained."""

    method: str
    checkpoint: str
    result: Any  # InferenceResult
    cache_dir: str
    cached: bool
    seconds_wall: float
    info: dict[str, Any] = field(default_factory=dict)


def default_methods() -> list[tuple[str, str]]:
    """(name, checkpoint path) of every registered method with a bundled checkpoint on disk."""
    from ..methods.registry import get_method, list_methods

    out = []
    for name in list_methods():
        ckpt = get_method(name).default_checkpoint()
        if ckpt:
            out.append((name, ckpt))
    return out


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(method: str, checkpoint: str, params: dict[str, Any]) -> str:
    """Folder name for a result: method, then a hash of the checkpoint bytes, the parameters
    and the package version (an upgrade may change what a method computes)."""
    from .. import __version__

    h = hashlib.sha256(_file_hash(checkpoint).encode())
    h.update(__version__.encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return f"{method}-{h.hexdigest()[:12]}"


def run_models(
    slide_path: str,
    results_root: str | os.PathLike,
    methods: list[tuple[str, str]] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    rerun: bool = False,
) -> Generator:
    """Run (or load from the cache) each method on ``slide_path``.

    Yields
    ------
    Progress
        While a method runs (its own progress reports, passed on).
    MethodRun
        When a method is done (also yielded, so a GUI can add its layers at once).

    Returns
    -------
    list of MethodRun
        Also holds a ``MethodRun`` with ``result=None`` and ``info["error"]`` for a method
        that failed: one broken method must not hide the others.
    """
    from ..errors import GlimpseError
    from ..methods.registry import get_method, load_model
    from ..runtime.results_io import load_result, save_result
    from ..runtime.run import run_inference

    methods = default_methods() if methods is None else methods
    params = params or {}
    runs = []
    for name, ckpt in methods:
        kw = dict(params.get(name, {}))
        folder = Path(results_root) / cache_key(name, ckpt, kw)
        t0 = time.perf_counter()
        try:
            if not rerun and (folder / "summary.json").is_file():
                result, cached = load_result(folder), True
            else:
                spec = get_method(name)
                result = yield from run_inference(spec, slide_path, load_model(spec, ckpt), overrides=kw)
                save_result(result, folder)
                cached = False
        except (GlimpseError, RuntimeError, ValueError, OSError) as exc:
            run = MethodRun(name, ckpt, None, str(folder), False, time.perf_counter() - t0,
                            {"error": f"{type(exc).__name__}: {exc}"})
        else:
            run = MethodRun(name, ckpt, result, str(folder), cached, time.perf_counter() - t0)
        runs.append(run)
        yield run
    return runs


# ------------------------------------------------------------------------ truth check


def _in_mask(mask, xy: np.ndarray) -> np.ndarray:
    """Whether level-0 (x, y) points fall on a labelled pixel of a LabelMask."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if not len(xy):
        return np.zeros(0, bool)
    m = mask.mask
    col = np.clip((xy[:, 0] / mask.downsample).astype(int), 0, m.shape[1] - 1)
    row = np.clip((xy[:, 1] / mask.downsample).astype(int), 0, m.shape[0] - 1)
    inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0)
    return inside & (m[row, col] > 0)


def truth_check(result, mask, label: int | None) -> dict[str, Any]:
    """How a result agrees with the mosaic's truth (tumour mask, slide label).

    Points layers (e.g. CELNet's NMS peaks): how many fall in tumour. Boxes with a
    ``score`` (glimpse-tree leaves): whether the top-scored box's centre is in tumour, and
    how many leaves are. Maps: whether the argmax cell of the first heatmap is in tumour;
    label maps (evidence masks): their Dice with the tumour mask, at the map's cells.
    """
    out: dict[str, Any] = {"mosaic_label": label}
    if result.slide_score is not None and label is not None:
        out["slide_call"] = int(result.slide_score >= 0.5)
        out["slide_call_correct"] = out["slide_call"] == label
    for p in result.points:
        hit = _in_mask(mask, p.xy)
        out[f"{p.name}: in tumour"] = f"{int(hit.sum())}/{len(hit)}"
        if len(hit):
            out["points_in_tumour_fraction"] = round(float(hit.mean()), 3)
    scored = [b for b in result.boxes if "score" in b.properties and len(b.boxes)]
    leaves = [b for b in scored if "leaves" in b.name] or scored[-1:]
    for b in leaves:
        boxes = np.asarray(b.boxes, dtype=float).reshape(-1, 4)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        hit = _in_mask(mask, centres)
        top = int(np.argmax(np.asarray(b.properties["score"], dtype=float)))
        out[f"{b.name}: centre in tumour"] = f"{int(hit.sum())}/{len(hit)}"
        out["top_glimpse_in_tumour"] = bool(hit[top])
        out["top_glimpse_score"] = round(float(b.properties["score"][top]), 4)
    # A method's first heatmap is its tumour map unless it scores boxes (glimpse-tree's
    # maps are policy Q maps: where to look, not where tumour is).
    heat = [] if scored else [m for m in result.maps if m.kind != "labels" and np.ndim(m.data) == 2]
    if heat:
        m = heat[0]
        data = np.nan_to_num(np.asarray(m.data, dtype=float), nan=-np.inf)
        r, c = np.unravel_index(int(np.argmax(data)), data.shape)
        sx, sy = (m.cell_size, m.cell_size) if np.isscalar(m.cell_size) else m.cell_size
        xy = np.array([[m.origin[0] + (c + 0.5) * sx, m.origin[1] + (r + 0.5) * sy]])
        out[f"argmax of {m.name!r} in tumour"] = bool(_in_mask(mask, xy)[0])
    for m in result.maps:  # label maps (e.g. CELNet's evidence mask): overlap with the tumour
        if m.kind != "labels" or np.ndim(m.data) != 2 or not np.size(m.data):
            continue
        rows, cols = np.shape(m.data)
        sx, sy = (m.cell_size, m.cell_size) if np.isscalar(m.cell_size) else m.cell_size
        yy, xx = np.mgrid[0:rows, 0:cols]
        centres = np.stack([m.origin[0] + (xx.ravel() + 0.5) * sx, m.origin[1] + (yy.ravel() + 0.5) * sy], 1)
        truth, pred = _in_mask(mask, centres), np.asarray(m.data).ravel() > 0
        total = int(truth.sum() + pred.sum())
        out[f"{m.name}: Dice with tumour"] = round(2 * int((truth & pred).sum()) / total, 3) if total else None
    return out
