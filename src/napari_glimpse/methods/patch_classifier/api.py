"""What the registry calls for the patch classifier."""

from __future__ import annotations

from collections.abc import Generator

from .config import PatchClassifierInferConfig

__all__ = ["load", "infer", "evaluate", "score_source"]


def load(path: str, device):
    """``(PatchClassifierNet in eval mode, its config)`` from a checkpoint (never unpickles)."""
    from ...runtime.checkpoint import build_from_checkpoint
    from .config import PatchClassifierConfig
    from .model import build_model

    return build_from_checkpoint(path, "patch-classifier", PatchClassifierConfig, build_model, device)


def infer(slide, model, config: PatchClassifierInferConfig, region) -> Generator:
    """The tumour probability of every tissue cell of the feature grid (the cells grid attention
    reads); slide score = its maximum, evidence = the most probable cells."""
    import numpy as np

    from ...features.grid import iter_grid_features
    from ...results import InferenceResult, SlideMap, SlidePoints
    from ...runtime.run import top_evidence

    grid = yield from iter_grid_features(slide, model.model.encoder, tissue_min=config.tissue_min,
                                         batch_size=config.batch_size, device=model.device, region=region)
    prob = np.zeros(grid.shape, np.float32)
    prob[grid.tissue] = 1.0 / (1.0 + np.exp(-grid.scores[grid.tissue]))
    rc = np.argwhere(grid.tissue)
    order = np.argsort(-prob[grid.tissue], kind="stable")
    xy, scores = grid.cell_centres(rc[order]), prob[grid.tissue][order]
    score = float(scores[0]) if len(scores) else 0.0
    keep = min(10, int(np.count_nonzero(scores >= config.threshold))) or min(1, len(scores))
    points = [SlidePoints("most probable cells", xy[:keep], {"score": scores[:keep]}, size_px=grid.cell_size / 3,
                          face_color="cyan")]
    summary = {
        "slide_score": score,
        "patches_read": grid.meta["patches_read"], "pixels_read": grid.meta["pixels_read"],
        "grid": list(grid.shape), "tissue_cells": int(grid.tissue.sum()), "cell_size": grid.cell_size,
        "evidence": top_evidence(xy, scores),
    }
    maps = [SlideMap("tumour probability", prob, grid.cell_size, grid.origin, colormap="inferno")]
    return InferenceResult("patch-classifier", slide.path, score, maps=maps, points=points, summary=summary,
                           mpp=slide.mpp)


def evaluate(data_dir, model, config: PatchClassifierInferConfig, *, limit: int = 0) -> Generator:
    """Accuracy (at ``config.threshold``), AUC and loss on a patch folder."""
    from ..celnet.training import evaluate as evaluate_patches

    metrics = yield from evaluate_patches(model.model, data_dir, device=model.device, batch_size=256,
                                          limit=limit or None, threshold=config.threshold)
    return {**metrics, "checkpoint": model.checkpoint}


def score_source(result, config):
    """The windows a slide score is aggregated from: the tumour probability map over tissue
    (:mod:`napari_glimpse.calls`); ``config.threshold`` is the patch threshold."""
    from ...calls import source_from_map

    return source_from_map(result, "tumour probability", config.threshold)
