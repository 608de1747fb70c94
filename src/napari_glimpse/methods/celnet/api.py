"""What the registry calls for CELNet: load a checkpoint, run a slide, evaluate on patches."""

from __future__ import annotations

from collections.abc import Generator

from .config import CELNetInferConfig

__all__ = ["load", "infer", "evaluate", "score_source"]


def load(path: str, device):
    """``(CELNet in eval mode on device, its CELNetConfig)`` from a checkpoint (never unpickles)."""
    from ...runtime.checkpoint import build_from_checkpoint
    from .config import CELNetConfig
    from .model import build_model

    return build_from_checkpoint(path, "celnet", CELNetConfig, build_model, device)


def infer(slide, model, config: CELNetInferConfig, region) -> Generator:
    """:func:`.inference.infer_celnet` with the run's config: probability map, CELM evidence,
    NMS peaks (the evidence points) and the slide score (the map's maximum)."""
    from .celm import CELMParams
    from .inference import infer_celnet

    params = CELMParams.from_config(
        model.config, alpha=config.celm_a, beta=config.celm_b, csm_sigma=config.saliency_sigma,
        mask_threshold=config.evidence_threshold, prob_threshold=config.threshold,
        nms_min_score=config.threshold, mask_sigma=config.mask_sigma,
        nms_min_distance=config.nms_min_distance, nms_max_peaks=config.nms_max_peaks)
    return (yield from infer_celnet(
        slide, model.model, region=region, stride=config.stride, tile_size=config.tile_size,
        batch_size=config.batch_size, tissue=None if config.tissue == "none" else config.tissue,
        celm=config.celm, celm_batch=config.celm_batch or None, evidence_cell=config.evidence_cell,
        params=params, tta=config.tta, checkpoint=model.checkpoint))


def evaluate(data_dir, model, config: CELNetInferConfig, *, limit: int = 0) -> Generator:
    """Accuracy (at ``config.threshold``), AUC and loss on a patch folder; ``config.tta``
    averages each patch's 8 rotations / flips."""
    from .training import evaluate as evaluate_patches

    metrics = yield from evaluate_patches(model.model, data_dir, device=model.device, batch_size=128,
                                          limit=limit or None, threshold=config.threshold, tta=config.tta)
    return {**metrics, "checkpoint": model.checkpoint}


def score_source(result, config):
    """The windows a slide score is aggregated from: the tumour probability map over tissue
    (:mod:`napari_glimpse.calls`); ``config.threshold`` is the patch threshold."""
    from ...calls import source_from_map

    return source_from_map(result, "tumour probability", config.threshold)
