"""Registration of the built-in methods (imported by ``napari_glimpse.methods``): each
method's folder defines its ``SPEC``; none of them imports torch."""

from __future__ import annotations

from . import attention_grid, celnet, glimpse_tree, magnet, patch_classifier, razn
from .registry import register

for _spec in (celnet.SPEC, glimpse_tree.SPEC, attention_grid.SPEC, patch_classifier.SPEC, magnet.SPEC, razn.SPEC):
    register(_spec, replace=True)
