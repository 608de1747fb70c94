"""Hierarchical glimpse tree (METHODS.md section 1): classifier C on leaf glimpses, U-Net
policies P_l choosing where to look at each finer level, Boltzmann sampling with suppression.

Modules: :mod:`.config` (the config dataclass), :mod:`.model` (C and P_l), :mod:`.sampling`
(box smoothing, Q, drawing children), :mod:`.inference` (regions, the tree, 'All'),
:mod:`.tree_result` (result dataclasses, :func:`subtree`), :mod:`.api` (load / infer /
evaluate), :mod:`.training` (supervised and MIL), :mod:`.data` (slide folders).
Importing this package imports no torch: the spec names its callables lazily.
"""

from ..registry import MethodSpec

SPEC = MethodSpec(
    name="glimpse-tree",
    title="Glimpse tree: policies pick where to look, C classifies the leaf glimpses",
    train_config="napari_glimpse.methods.glimpse_tree.config:GlimpseTreeConfig",
    infer_config="napari_glimpse.methods.glimpse_tree.config:GlimpseTreeInferConfig",
    load="napari_glimpse.methods.glimpse_tree.api:load",
    infer="napari_glimpse.methods.glimpse_tree.api:infer",
    train="napari_glimpse.methods.glimpse_tree.training:train",
    evaluate="napari_glimpse.methods.glimpse_tree.api:evaluate",
    data="slides",
    weights={"supervised": "glimpse_tree_supervised.safetensors", "mil": "glimpse_tree_mil.safetensors"},
    score_source="napari_glimpse.methods.glimpse_tree.api:score_source",
    # click a glimpse box -> select its subtree, show only its Q maps
    napari_hook="napari_glimpse._napari.glimpse_select:attach_glimpse_select",
)
