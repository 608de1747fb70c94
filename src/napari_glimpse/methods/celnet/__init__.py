"""CELNet (METHODS.md section 5): a fully convolutional tumour-probability map and CELM evidence.

Modules: :mod:`.config` (the training and inference configs, no torch), :mod:`.model` (the
network), :mod:`.dense` (the banded dense path), :mod:`.celm` (evidence localisation),
:mod:`.inference` (a slide run), :mod:`.training` (its step and validation on patch folders).
"""

from ..registry import MethodSpec

SPEC = MethodSpec(
    name="celnet",
    title="CELNet: tumour probability map + CELM evidence",
    train_config="napari_glimpse.methods.celnet.config:CELNetConfig",
    infer_config="napari_glimpse.methods.celnet.config:CELNetInferConfig",
    load="napari_glimpse.methods.celnet.api:load",
    infer="napari_glimpse.methods.celnet.api:infer",
    train="napari_glimpse.methods.celnet.training:train_celnet",
    evaluate="napari_glimpse.methods.celnet.api:evaluate",
    data="patches",
    weights={"pcam": "celnet_pcam.safetensors"},
    score_source="napari_glimpse.methods.celnet.api:score_source",
)
