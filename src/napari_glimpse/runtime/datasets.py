"""Former home of the patch-folder reader and augmentation, kept for importers not yet moved.

The reader is :mod:`napari_glimpse.runtime.data`, the augmentation
:mod:`napari_glimpse.runtime.augment`; ``runtime/training.py`` and
``methods/glimpse_tree/training.py`` still import from here.
"""

from .augment import augment_batch, dihedral, dihedral_inverse
from .data import (
           IMAGE_SUFFIXES,
           PatchFolder,
           iterate_patch_folder,
           list_patch_files,
           load_patch_folder,
)

__all__ = ["PatchFolder", "load_patch_folder", "iterate_patch_folder", "list_patch_files", "augment_batch",
           "dihedral", "dihedral_inverse", "IMAGE_SUFFIXES"]
