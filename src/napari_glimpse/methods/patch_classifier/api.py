"""What the registry calls for the patch classifier."""

from __future__ import annotations

from collections.abc import Generator

from .config import PatchClassifierInferConfig

__all__ = ["load", "infer", "evaluate"]


def load(path: str, device):
    """``(PatchClassifierNet in eval mode, its config)`` from a checkpoint (never unpickles)."""
    from ...runtime.checkpoint import build_from_checkpoint
    from .config import PatchClassifierConfig
    from .model import build_model

    return build_from_checkpoint(path, "patch-classifier", PatchClassifierConfig, build_model, device)


def infer(slide, model, config: PatchClassifierInferConfig, region) -> Generator:
    """The tumour probability of every tissue cell of the feature grid; slide score = its max."""
    raise NotImplementedError("written once the feature grid lands")  # replaced in the merge


def evaluate(data_dir, model, config: PatchClassifierInferConfig, *, limit: int = 0) -> Generator:
    """Accuracy (at ``config.threshold``), AUC and loss on a patch folder."""
    from ..celnet.training import evaluate as evaluate_patches

    metrics = yield from evaluate_patches(model.model, data_dir, device=model.device, batch_size=256,
                                          limit=limit or None, threshold=config.threshold)
    return {**metrics, "checkpoint": model.checkpoint}
