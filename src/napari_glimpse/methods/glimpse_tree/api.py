"""What the registry calls: load a checkpoint, infer on a slide, evaluate on a labelled folder."""

from __future__ import annotations

import os
import time
from collections.abc import Generator

import numpy as np

from ...runtime.events import Progress
from ...runtime.run import top_evidence
from .config import GlimpseTreeConfig, GlimpseTreeInferConfig, branching_for_leaves

__all__ = ["load", "infer", "infer_slide", "evaluate", "leaves_branching", "score_source"]

METHOD = "glimpse-tree"


def load(path: str, device):
    """``(model in eval mode on device, its GlimpseTreeConfig)`` from a checkpoint."""
    from ...runtime.checkpoint import build_from_checkpoint
    from .model import build_model

    return build_from_checkpoint(path, METHOD, GlimpseTreeConfig, build_model, device)


def _branching(model_config: GlimpseTreeConfig, config: GlimpseTreeInferConfig) -> tuple[int, ...]:
    branching = leaves_branching(model_config, config.leaves) if config.leaves else tuple(config.branching)
    if len(branching) != model_config.levels:
        raise ValueError(f"branching {branching} needs {model_config.levels} entries "
                         f"(the model has L={model_config.levels})")
    return branching


def leaves_branching(config: GlimpseTreeConfig, leaves: int) -> tuple[int, ...]:
    """The branching for N_G = ``leaves``: the checkpoint's own when it has that many leaves.

    How N_G is split over the levels is not fixed by the paper; a checkpoint stores the split
    chosen for it on validation data (the shipped supervised tree: 8 as (4, 2)). Other N_G
    are split by :func:`branching_for_leaves` (8 -> (2, 4)).
    """
    if int(np.prod(config.branching)) == leaves:
        return tuple(config.branching)
    return branching_for_leaves(leaves, config.levels)


def infer(slide, model, config: GlimpseTreeInferConfig, region) -> Generator:
    """Glimpse-tree inference on one open slide: yields Progress per region, returns an
    InferenceResult with boxes per level, edges, Q maps (tree) or the tile map ('All'); the
    summary has slide_score, patches_read, pixels_read, regions, leaves, the tree and the
    evidence (the centres of the best-scored leaves)."""
    result = yield from infer_slide(
        model.model, slide, branching=_branching(model.config, config), temperature=config.temperature,
        seed=config.seed, dense=config.dense, tissue=config.tissue, tissue_min=config.tissue_min,
        region=region, show_q=config.show_q)
    return result


def infer_slide(model, slide, *, branching, temperature, seed, dense, tissue, tissue_min,
                region=None, show_q=True, t0=None) -> Generator:
    """:func:`infer` with the bare network and resolved parameters; ``slide`` is an open Slide
    or a path (opened and closed here)."""
    import contextlib

    import torch

    from ...results import InferenceResult
    from ...slides import open_slide
    from ...slides.tissue import tissue_mask
    from .inference import GlimpseReader, plan_regions, run_all, run_tree
    from .tree_result import all_map, tree_layers

    t0 = time.perf_counter() if t0 is None else t0
    config = model.config
    model.eval()
    is_path = isinstance(slide, (str, os.PathLike))
    with open_slide(slide) if is_path else contextlib.nullcontext(slide) as slide:
        slide_path = slide.path
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
            evidence = _tile_evidence(tiles, config, reader)
        else:
            leaf_scores = [n.score for n in nodes if n.level == config.levels]
            result.slide_score = float(max(leaf_scores)) if leaf_scores else 0.0
            b, lines, maps = tree_layers(nodes, config.levels, result_id, show_q=show_q)
            result.boxes, result.lines, result.maps = b, lines, maps
            n_leaves = len(leaf_scores)
            leaves = [n for n in nodes if n.level == config.levels]
            evidence = top_evidence([n.centre for n in leaves], [n.score for n in leaves])
        result.summary.update(evidence=evidence,
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


def _tile_evidence(tiles, config, reader) -> list:
    """Centres of the best-scored 'All' tiles (level-0 px), best first."""
    tile_px = config.glimpse_size * reader.downsample(config.levels)
    xy, scores = [], []
    for box, t in tiles:
        rr, cc = np.nonzero(np.isfinite(t))
        xy += [(box[0] + (c + 0.5) * tile_px, box[1] + (r + 0.5) * tile_px) for r, c in zip(rr, cc, strict=True)]
        scores += list(t[rr, cc])
    return top_evidence(xy, scores)


def evaluate(data_dir, model, config: GlimpseTreeInferConfig, *, limit: int = 0) -> Generator:
    """Slide AUC on a folder with ``labels.csv``: yields Progress, returns {auc, n,
    seconds_per_slide, patches_per_slide, scores, labels, ...}."""
    import dataclasses

    from ...evaluate import roc_auc
    from ...runtime.events import run_to_end
    from ...runtime.run import run_inference
    from .data import find_slides

    items = [i for i in find_slides(data_dir, need="labels") if i.label is not None]
    if limit:
        items = items[: int(limit)]
    quiet = dataclasses.replace(config, show_q=False)
    scores, labels, seconds, patches = [], [], [], []
    res = None
    for k, item in enumerate(items):
        t0 = time.perf_counter()
        from ...slides import open_slide

        with open_slide(item.path) as slide:
            res = run_to_end(run_inference(METHOD, slide, model, quiet))
        scores.append(res.slide_score)
        labels.append(item.label)
        seconds.append(time.perf_counter() - t0)
        patches.append(res.summary["patches_read"])
        yield Progress("evaluate", k + 1, len(items), f"slide {k + 1}/{len(items)}")
    from ...calls import call_summary

    return {"auc": roc_auc(np.array(labels), np.array(scores)), "n": len(items),
            **call_summary(labels, scores, config.slide_threshold), "threshold_rule": config.threshold_rule,
            "seconds_per_slide": float(np.mean(seconds)) if seconds else float("nan"),
            "patches_per_slide": float(np.mean(patches)) if patches else float("nan"),
            "mode": res.summary["mode"] if res else None, "leaves": res.summary["leaves"] if res else None,
            "checkpoint": model.checkpoint, "scores": [float(s) for s in scores], "labels": labels}


def score_source(result, config):
    """The scores a slide score is aggregated from (:mod:`napari_glimpse.calls`): the leaf
    classifications of the tree, or every tile of the 'All' baseline; no grid (leaves lie
    where the policies put them), so ``largest_region`` counts leaves at or above 0.5."""
    from ...calls import ScoreSource

    s = result.summary
    if s.get("mode") == "all":
        tiles = [np.asarray(m.data, np.float64) for m in result.maps if m.name == "All: leaf-tile probability"]
        values = np.concatenate([t[np.isfinite(t)] for t in tiles]) if tiles else np.zeros(0)
        cell = float(result.maps[0].cell_size) if tiles else 0.0
    else:
        nodes = s.get("tree", [])
        top = max((n["level"] for n in nodes), default=0)
        leaves = [n for n in nodes if n["level"] == top and n["score"] is not None]
        values = np.array([n["score"] for n in leaves], np.float64)
        cell = float(leaves[0]["box"][2] - leaves[0]["box"][0]) if leaves else 0.0
    um = float(np.mean(result.mpp)) if result.mpp is not None else 1.0
    return ScoreSource(values, None, (cell * um / 1000.0) ** 2, 0.5)
