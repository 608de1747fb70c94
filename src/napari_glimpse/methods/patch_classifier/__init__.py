"""Patch classifier: an encoder trunk plus a one-logit head, trained on a patch folder.

It is how the shared encoder registry's ``pcam`` encoder was made (``encoder_pcam``): its
checkpoint *is* an encoder (``napari_glimpse.encoders.load_encoder(path)``), so a user trains
one on their own patches and grid attention, MagNets and RAZN read features from it. On a
slide it gives the patch tumour-probability map on the same grid the feature cache uses.
"""

from ..registry import MethodSpec

SPEC = MethodSpec(
    name="patch-classifier",
    title="Patch classifier: the encoder's tumour probability per grid cell",
    train_config="napari_glimpse.methods.patch_classifier.config:PatchClassifierConfig",
    infer_config="napari_glimpse.methods.patch_classifier.config:PatchClassifierInferConfig",
    load="napari_glimpse.methods.patch_classifier.api:load",
    infer="napari_glimpse.methods.patch_classifier.api:infer",
    train="napari_glimpse.methods.patch_classifier.training:train_patch_classifier",
    evaluate="napari_glimpse.methods.patch_classifier.api:evaluate",
    data="patches",
    weights={"pcam": "encoder_pcam.safetensors"},
    score_source="napari_glimpse.methods.patch_classifier.api:score_source",
)
