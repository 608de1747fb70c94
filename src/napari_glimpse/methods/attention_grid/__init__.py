"""Grid attention with min / max attention maps (METHODS.md section 2; Brancati et al.).

Modules: :mod:`.config` (the training and inference configs, no torch), :mod:`.grids` (the one
door to the feature grids of slides, grid padding and augmentation), :mod:`.model` (the
attention-based classifier, its ablation and the ABMIL baseline, Grad-CAM), :mod:`.training`
(one slide per step on slide-labelled folders), :mod:`.api` (load, infer, evaluate).
"""

from ..registry import MethodSpec

SPEC = MethodSpec(
    name="attention-grid",
    title="Grid attention: min / max attention maps over slide features",
    train_config="napari_glimpse.methods.attention_grid.config:AttentionGridConfig",
    infer_config="napari_glimpse.methods.attention_grid.config:AttentionGridInferConfig",
    load="napari_glimpse.methods.attention_grid.api:load",
    infer="napari_glimpse.methods.attention_grid.api:infer",
    train="napari_glimpse.methods.attention_grid.training:train",
    evaluate="napari_glimpse.methods.attention_grid.api:evaluate",
    data="slides",
    weights={"pcam": "attention_grid_pcam.safetensors"},
)
