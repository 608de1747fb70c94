"""Registration of the built-in methods (imported by ``napari_glimpse.methods``)."""

from __future__ import annotations

from .celnet import CELNetConfig, build_model, default_checkpoint, evaluate_celnet, train_celnet
from .celnet_infer import CELNetInferConfig  # torch and numpy only; slide readers load on call
from .registry import MethodSpec, register


def _infer_celnet(
    slide_path,
    checkpoint=None,
    *,
    device: str | None = None,
    region=None,
    stride: int = 32,
    tile_size: int = 1536,
    batch_size: int = 1,
    tissue: str | None = "otsu",
    celm: bool = True,
    celm_batch: int = 0,
    evidence_cell: int = 8,
    threshold: float | None = None,
    celm_a: float | None = None,
    celm_b: float | None = None,
    evidence_threshold: float | None = None,
    saliency_sigma: float | None = None,
    mask_sigma: float = 1.0,
    nms_min_distance: float = 3.0,
    nms_max_peaks: int = 100,
    model=None,
):
    """See :func:`.celnet_infer.infer` (parameters: :class:`.celnet_infer.CELNetInferConfig`)."""
    # Imported on call: slide inference pulls in the slide readers.
    from .celnet_infer import infer

    return (yield from infer(
        slide_path, checkpoint, device=device, region=region, stride=stride, tile_size=tile_size,
        batch_size=batch_size, tissue=tissue, celm=celm, celm_batch=celm_batch,
        evidence_cell=evidence_cell, threshold=threshold, celm_a=celm_a, celm_b=celm_b,
        evidence_threshold=evidence_threshold, saliency_sigma=saliency_sigma, mask_sigma=mask_sigma,
        nms_min_distance=nms_min_distance, nms_max_peaks=nms_max_peaks, model=model))


register(
    MethodSpec(
        name="celnet",
        description="CELNet: tumour probability map (fully convolutional) + CELM evidence localisation",
        config_cls=CELNetConfig,
        build_model=build_model,
        train=train_celnet,
        infer=_infer_celnet,
        evaluate=evaluate_celnet,
        default_checkpoint=default_checkpoint,
        # The "Run model" form: stride, tiles, tissue, CELM and NMS settings with help/ranges.
        extra={"infer_config_cls": CELNetInferConfig},
    ),
    replace=True,
)

# glimpse-tree: config only at import; torch loads when one of its callables runs.
from .glimpse_tree import method_spec as _glimpse_tree_spec  # noqa: E402

register(_glimpse_tree_spec(), replace=True)
