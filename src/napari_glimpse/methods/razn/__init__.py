"""RAZN: reinforced auto-zoom segmentation (METHODS.md section 4; Dong et al.).

Modules: :mod:`.config` (no torch), :mod:`.model` (policy, dilated FCNs, per-tile loss),
:mod:`.data` (annotated images, fields at every zoom scale), :mod:`.training` (Algorithm 1),
:mod:`.api` (load, whole-slide segmentation into zarr, evaluate with the single-scale baselines).
"""

from ..registry import MethodSpec

SPEC = MethodSpec(
    name="razn",
    title="RAZN: reinforced auto-zoom segmentation (zoom decisions and label map)",
    train_config="napari_glimpse.methods.razn.config:RAZNConfig",
    infer_config="napari_glimpse.methods.razn.config:RAZNInferConfig",
    load="napari_glimpse.methods.razn.api:load",
    infer="napari_glimpse.methods.razn.api:infer",
    train="napari_glimpse.methods.razn.training:train",
    evaluate="napari_glimpse.methods.razn.api:evaluate",
    data="annotated",
    # no shipped weights yet (docs/razn.md: trained on CPU for 8 epochs only)
    napari_hook="napari_glimpse._napari.razn_areas:install",
)
