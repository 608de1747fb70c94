"""What the registry calls: load a checkpoint, infer on a slide, evaluate on a labelled folder."""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np

from ...errors import CheckpointError
from ...runtime.events import Progress
from .config import GlimpseTreeConfig, branching_for_leaves

__all__ = ["default_checkpoint", "shipped_checkpoint", "load_model", "infer", "infer_slide", "evaluate"]

METHOD = "glimpse-tree"
_WEIGHTS = Path(__file__).resolve().parents[2] / "_sample_data" / "weights"
SHIPPED = {"supervised": "glimpse_tree_supervised.safetensors", "mil": "glimpse_tree_mil.safetensors"}


def shipped_checkpoint(strategy: str = "supervised") -> str | None:
    """Path of the bundled supervised or MIL weights, None when not installed."""
    path = _WEIGHTS / SHIPPED[strategy]
    return str(path) if path.is_file() else None


def default_checkpoint() -> str | None:
    """The registry's default: the supervised weights."""
    return shipped_checkpoint("supervised")


def load_model(checkpoint: str | os.PathLike | None = None, device: str | None = None):
    """``(model, config, checkpoint path)``; ``checkpoint`` may be a path, None (shipped
    supervised weights) or the words ``"supervised"`` / ``"mil"`` (the shipped weights of that
    strategy)."""
    from ...runtime.checkpoint import config_from_checkpoint, load_checkpoint, load_state_checked
    from ...runtime.device import resolve_device
    from .model import build_model

    if checkpoint is None or str(checkpoint) in SHIPPED:
        name = "supervised" if checkpoint is None else str(checkpoint)
        checkpoint = shipped_checkpoint(name)
        if checkpoint is None:
            raise CheckpointError(f"no shipped {name} glimpse-tree weights; pass --checkpoint",
                                  str(_WEIGHTS / SHIPPED[name]))
    ckpt = load_checkpoint(checkpoint, expected_method=METHOD)
    config = config_from_checkpoint(GlimpseTreeConfig, ckpt)
    model = build_model(config)
    load_state_checked(model, ckpt)
    dev = resolve_device(device or "auto")
    model = model.to(dev).eval()
    return model, config, ckpt.path


def _resolve(config: GlimpseTreeConfig, branching, leaves, temperature, seed, dense, tissue, tissue_min):
    if leaves:  # N_G wins over an explicit branching (the GUI form always sends one)
        branching = leaves_branching(config, int(leaves))
    branching = tuple(int(b) for b in branching) if branching else config.branching
    if len(branching) != config.levels:
        raise ValueError(f"branching {branching} needs {config.levels} entries (the model has L={config.levels})")
    return (branching, config.temperature if temperature is None else float(temperature),
            config.seed if seed is None else int(seed), config.dense if dense is None else bool(dense),
            tissue or config.tissue, config.tissue_min if tissue_min is None else float(tissue_min))


def leaves_branching(config: GlimpseTreeConfig, leaves: int) -> tuple[int, ...]:
    """The branching for N_G = ``leaves``: the checkpoint's own when it has that many leaves.

    How N_G is split over the levels is not fixed by the paper; a checkpoint stores the split
    chosen for it on validation data (the shipped supervised tree: 8 as (4, 2)). Other N_G
    are split by :func:`branching_for_leaves` (8 -> (2, 4)).
    """
    if int(np.prod(config.branching)) == leaves:
        return tuple(config.branching)
    return branching_for_leaves(leaves, config.levels)


def infer(
    slide_path: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    region: Sequence[float] | None = None,
    leaves: int = 0,
    branching: Sequence[int] | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    dense: bool | None = None,
    tissue: str | None = None,
    tissue_min: float | None = None,
    show_q: bool = True,
    model=None,
) -> Generator:
    """Glimpse-tree inference on one slide: yields Progress per region, returns an InferenceResult.

    Parameters
    ----------
    slide_path
        Any slide :func:`~napari_glimpse.slides.open_slide` reads.
    checkpoint
        Path, None (shipped supervised weights), ``"supervised"`` or ``"mil"``.
    region
        Level-0 box (x0, y0, x1, y1) to restrict the regions to.
    leaves
        N_G; split into the branching per level (the checkpoint's own split when it has N_G
        leaves, else 8 -> (2, 4); :func:`leaves_branching`); overrides ``branching``. 0 keeps it.
    branching, temperature, seed, dense, tissue, tissue_min
        Override the checkpoint config's inference fields; ``dense`` runs 'All'.
    model
        An already loaded model (``load_model``); skips loading (timings then exclude it).

    Returns
    -------
    InferenceResult
        Boxes per level, edges, Q maps (tree) or the tile map ('All'); ``summary`` has
        slide_score, seconds (slide opening and reading included), patches_read, pixels_read,
        regions, leaves and the tree (node id, parent, level, box, score).
    """
    t0 = time.perf_counter()
    if model is None:
        model, _, ckpt_path = load_model(checkpoint, device)
    else:
        ckpt_path = str(checkpoint) if checkpoint else None
    config = model.config
    branching, temperature, seed, dense, tissue, tissue_min = _resolve(
        config, branching, leaves, temperature, seed, dense, tissue, tissue_min)
    result = yield from infer_slide(model, slide_path, branching=branching, temperature=temperature, seed=seed,
                                    dense=dense, tissue=tissue, tissue_min=tissue_min, region=region,
                                    show_q=show_q, t0=t0)
    result.summary["checkpoint"] = ckpt_path
    return result


def infer_slide(model, slide_path, *, branching, temperature, seed, dense, tissue, tissue_min,
                region=None, show_q=True, t0=None) -> Generator:
    """:func:`infer` with a loaded model and resolved parameters."""
    import torch

    from ...results import InferenceResult
    from ...slides import open_slide
    from ...slides.tissue import tissue_mask
    from .inference import GlimpseReader, plan_regions, run_all, run_tree
    from .tree_result import all_map, tree_layers

    t0 = time.perf_counter() if t0 is None else t0
    config = model.config
    model.eval()
    with open_slide(slide_path) as slide:
        reader = GlimpseReader(slide, config)
        mask = tissue_mask(slide, tissue, max_size=config.tissue_size)
        region_px = config.region_size * reader.working_downsample
        boxes = plan_regions(slide.dimensions, mask, region_px, within=region)
        result_id = f"{os.path.basename(str(slide_path))}:{'all' if dense else 'tree'}:{seed}:{time.time_ns()}"
        nodes, tiles = [], []
        rng_seed = int(seed)
        for r, box in enumerate(boxes):
            if dense:
                tiles.append((box, run_all(model, reader, box, mask, tissue_min)))
            else:
                rng = np.random.default_rng([rng_seed, r])
                nodes += run_tree(model, reader, box, r, rng, branching, temperature, first_id=len(nodes),
                                  tissue=mask)
            yield Progress("region", r + 1, len(boxes), f"region {r + 1}/{len(boxes)}",
                           {"patches_read": reader.patches_read})
        result = InferenceResult(method=METHOD, slide_path=str(slide_path), slide_score=None, mpp=slide.mpp)
        if dense:
            scores = [s for _, t in tiles for s in t[np.isfinite(t)].ravel()]
            result.slide_score = float(max(scores)) if scores else 0.0
            if tiles:
                result.maps += _all_maps(tiles, config, reader, result_id, all_map)
            n_leaves = len(scores)
        else:
            leaf_scores = [n.score for n in nodes if n.level == config.levels]
            result.slide_score = float(max(leaf_scores)) if leaf_scores else 0.0
            b, lines, maps = tree_layers(nodes, config.levels, result_id, show_q=show_q)
            result.boxes, result.lines, result.maps = b, lines, maps
            n_leaves = len(leaf_scores)
        result.summary.update(
            slide_score=result.slide_score, seconds=time.perf_counter() - t0,
            patches_read=reader.patches_read, pixels_read=reader.pixels_read, regions=len(boxes),
            leaves_classified=n_leaves, mode="all" if dense else "tree",
            branching=list(branching), leaves=int(np.prod(branching)), temperature=temperature, seed=seed,
            tissue=tissue, working_mpp=config.mpp, mpp_assumed=reader.mpp_assumed,
            threads=torch.get_num_threads(), result_id=result_id,
            tree=[n.as_dict() for n in nodes],
        )
    return result


def _all_maps(tiles, config, reader, result_id, all_map):
    tile_px = config.glimpse_size * reader.downsample(config.levels)
    return [all_map(t, (box[0], box[1]), tile_px, result_id) for box, t in tiles]


def evaluate(data_dir, checkpoint=None, *, device: str | None = "auto", leaves: int = 0,
             branching=None, temperature: float | None = None, seed: int | None = None,
             dense: bool | None = None, limit: int | None = None, model=None, **_ignored) -> Generator:
    """Slide AUC on a folder with ``labels.csv``: yields Progress, returns {auc, n, seconds_per_slide, ...}."""
    from ...runtime.training import roc_auc
    from .data import find_slides

    items = [i for i in find_slides(data_dir, need="labels") if i.label is not None]
    if limit:
        items = items[: int(limit)]
    if model is None:
        model, _, checkpoint = load_model(checkpoint, device)
    scores, labels, seconds, patches, mode, n_leaves = [], [], [], [], None, None
    for k, item in enumerate(items):
        res = yield from _quiet(infer(item.path, checkpoint, model=model, leaves=leaves, branching=branching,
                                      temperature=temperature, seed=seed, dense=dense, show_q=False))
        scores.append(res.slide_score)
        labels.append(item.label)
        seconds.append(res.summary["seconds"])
        patches.append(res.summary["patches_read"])
        mode, n_leaves = res.summary["mode"], res.summary["leaves"]
        yield Progress("evaluate", k + 1, len(items), f"slide {k + 1}/{len(items)}")
    return {"auc": roc_auc(np.array(labels), np.array(scores)), "n": len(items),
            "seconds_per_slide": float(np.mean(seconds)) if seconds else float("nan"),
            "patches_per_slide": float(np.mean(patches)) if patches else float("nan"),
            "mode": mode, "leaves": n_leaves, "checkpoint": checkpoint,
            "scores": [float(s) for s in scores], "labels": labels}


def _quiet(gen):
    """Run a generator to its result without re-yielding its progress."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
        if False:  # pragma: no cover - makes this a generator so callers can ``yield from``
            yield
