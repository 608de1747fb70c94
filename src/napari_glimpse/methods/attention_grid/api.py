"""What the registry calls for grid attention: load a checkpoint, run a slide, evaluate a folder."""

from __future__ import annotations

import time
from collections.abc import Generator

import numpy as np
import torch

from ...runtime.events import Progress
from .config import AttentionGridConfig, AttentionGridInferConfig

__all__ = ["load", "infer", "evaluate", "result_from_grid"]

METHOD = "attention-grid"


def load(path: str, device):
    """``(GridAttention in eval mode on device, its AttentionGridConfig)`` (never unpickles)."""
    from ...runtime.checkpoint import build_from_checkpoint
    from .model import build_model

    return build_from_checkpoint(path, METHOD, AttentionGridConfig, build_model, device)


def _top_cells(values: np.ndarray, tissue: np.ndarray, limit: int = 10) -> np.ndarray:
    """(row, col) of the ``limit`` highest tissue cells, best first."""
    v = np.where(tissue, values, -np.inf).ravel()
    order = np.argsort(-v, kind="stable")[:limit]
    order = order[np.isfinite(v[order])]
    return np.stack(np.unravel_index(order, values.shape), 1)


def result_from_grid(grid, model, config: AttentionGridInferConfig, slide_path: str, mpp=None):
    """The InferenceResult of a model on a :class:`~napari_glimpse.features.FeatureGrid`.

    Maps (cropped to the grid, level-0 cells of ``grid.cell_size`` from ``grid.origin``): the
    H max- and H min-attention maps as stacks (H, M, N), their channel means and the Grad-CAM
    map (scaled to its maximum); for ABMIL its one attention map. Evidence points: the centres
    of the top tissue cells by Grad-CAM or mean max attention (``config.evidence``).
    """
    from ...results import InferenceResult, SlideMap, SlidePoints
    from ...runtime.run import top_evidence
    from .model import grad_cam, slide_score

    net, cfg = model.model, model.config
    dev = next(net.parameters()).device
    feats = torch.from_numpy(np.asarray(grid.features, np.float32)).to(dev)
    tissue = torch.from_numpy(np.asarray(grid.tissue, bool)).to(dev)
    net.eval()
    out, cam = grad_cam(net, feats, tissue)
    m, n = grid.tissue.shape
    score = slide_score(out["out"], cfg)
    attention = {k: a.detach()[:, :m, :n].cpu().numpy().astype(np.float32) for k, a in out["maps"].items()}
    cam = cam[:m, :n].cpu().numpy().astype(np.float32)
    cam = cam / cam.max() if cam.max() > 0 else cam

    def cells(name, data, **kw):
        return SlideMap(name, data, float(grid.cell_size), tuple(float(v) for v in grid.origin), **kw)

    maps = []
    for key, title in (("max", "max attention"), ("min", "min attention")):
        if key in attention:
            # the min branch's mean starts hidden: three stacked heat maps hide the tissue
            maps.append(cells(f"{title} (mean)", attention[key].mean(0), contrast_limits=None, colormap="viridis",
                              visible=key == "max"))
            maps.append(cells(title, attention[key], contrast_limits=None, colormap="viridis", visible=False,
                              metadata={"channels": int(attention[key].shape[0])}))
    if "abmil" in attention:
        maps.append(cells("ABMIL attention", attention["abmil"][0], contrast_limits=None, colormap="viridis"))
    if out["conv"] is not None:
        maps.append(cells("Grad-CAM", cam, colormap="inferno", metadata={"scaled_to_max": True}))
    by = "gradcam" if config.evidence == "gradcam" and out["conv"] is not None else "attention"
    if by == "gradcam":
        ranking = cam
    else:
        ranking = attention["abmil"][0] if "abmil" in attention else attention["max"].mean(0)
    top = _top_cells(ranking, grid.tissue)
    xy = grid.cell_centres(top)
    evidence = top_evidence(xy)
    points = [SlidePoints("evidence", np.asarray(evidence, float).reshape(-1, 2),
                          {"score": ranking[top[:, 0], top[:, 1]].astype(np.float32), "rank": np.arange(len(top))},
                          size_px=float(grid.cell_size) / 2, metadata={"ranked_by": by})]
    classification = cfg.task == "classification"
    summary = {
        "slide_score": score,
        **({} if classification else {"slide_call": None, "threshold": None}),  # the runtime calls the slide
        "task": cfg.task, "head": cfg.head, "variant": cfg.variant, "encoder": cfg.encoder,
        "grid": [int(m), int(n)], "evidence_by": by, "evidence": evidence,
        "patches_read": int(grid.meta.get("patches_read", int(np.count_nonzero(grid.tissue)))),
        "pixels_read": int(grid.meta.get("pixels_read", 0)),
    }
    return InferenceResult(METHOD, str(slide_path), score, maps=maps, points=points, summary=summary, mpp=mpp)


def infer(slide, model, config: AttentionGridInferConfig, region) -> Generator:
    """The slide's feature grid (cached for whole slides), one forward pass with Grad-CAM, the
    attention maps and the evidence points (:func:`result_from_grid`)."""
    from .grids import GridParams, slide_grid

    params = GridParams.from_config(model.config, cache=config.feature_cache or None,
                                    batch_size=config.batch_size)
    grid = yield from slide_grid(slide, params, model.device, region)
    yield Progress("attention", 0, 1, "attention maps and Grad-CAM")
    result = result_from_grid(grid, model, config, getattr(slide, "path", slide), getattr(slide, "mpp", None))
    yield Progress("attention", 1, 1, "attention maps and Grad-CAM")
    return result


def evaluate(data_dir, model, config: AttentionGridInferConfig, *, limit: int = 0) -> Generator:
    """Slide metrics on a folder with the checkpoint's labels file: classification -> ``auc``,
    ``auc_interval`` (stratified bootstrap 95 %), ``n``, ``seconds_per_slide``; regression ->
    ``spearman``, ``n``, ``seconds_per_slide``; both with the scores and labels."""
    from ...calls import call_summary, choose_threshold
    from ...evaluate import bootstrap_auc_interval, roc_auc, spearman
    from ...slides import open_slide
    from .training import labelled_slides

    items = labelled_slides(data_dir, model.config)
    if limit:
        items = items[: int(limit)]
    scores, labels, seconds = [], [], []
    for k, item in enumerate(items):
        t0 = time.perf_counter()
        with open_slide(item.path) as slide:
            gen = infer(slide, model, config, None)
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    res = stop.value
                    break
        scores.append(float(res.slide_score))
        labels.append(item.label)
        seconds.append(time.perf_counter() - t0)
        yield Progress("evaluate", k + 1, len(items), f"slide {k + 1}/{len(items)}")
    out = {"n": len(items), "seconds_per_slide": float(np.mean(seconds)) if seconds else float("nan"),
           "task": model.config.task, "head": model.config.head, "checkpoint": model.checkpoint,
           "scores": scores, "labels": labels}
    if model.config.task == "regression":
        return {"spearman": spearman(labels, scores), **out}
    lo, hi = bootstrap_auc_interval(labels, scores)
    preds = np.asarray(scores) >= config.slide_threshold
    return {"auc": roc_auc(labels, scores), "auc_interval": [lo, hi],
            "accuracy": float(np.mean(preds == np.asarray(labels, bool))) if labels else float("nan"),
            **call_summary(labels, scores, config.slide_threshold), "threshold_rule": config.threshold_rule,
            "youden_threshold": choose_threshold(labels, scores, "youden") if len(set(labels)) > 1 else None, **out}
