"""MagNets: a slide classified from a few dozen magnified patches (METHODS.md section 3;
Dimitriou et al., magnifying networks).

Modules: :mod:`.config` (no torch), :mod:`.sampling` (fields of view on the pyramid, the
bilinear and linearized multi-sampling samplers, the grey filter), :mod:`.model` (magnifying
layers, GRU classification layer, auxiliary classifiers, loss), :mod:`.training` (slide
labels, on-the-fly reads), :mod:`.api` (load, infer, evaluate, the result's layers).
"""

from ..registry import MethodSpec

SPEC = MethodSpec(
    name="magnet",
    title="MagNet: magnifying networks (ROI tree and running probability)",
    train_config="napari_glimpse.methods.magnet.config:MagNetConfig",
    infer_config="napari_glimpse.methods.magnet.config:MagNetInferConfig",
    load="napari_glimpse.methods.magnet.api:load",
    infer="napari_glimpse.methods.magnet.api:infer",
    train="napari_glimpse.methods.magnet.training:train",
    evaluate="napari_glimpse.methods.magnet.api:evaluate",
    data="slides",
    # no shipped weights yet: no run on PCam mosaics has beaten chance (docs/magnet.md)
    napari_hook="napari_glimpse._napari.magnet_plot:install",
)
