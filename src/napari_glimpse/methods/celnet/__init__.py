"""CELNet (METHODS.md section 5): a fully convolutional tumour-probability map and CELM evidence.

Modules: :mod:`.config` (the training and inference configs, no torch), :mod:`.model` (the
network), :mod:`.dense` (the banded dense path), :mod:`.celm` (evidence localisation),
:mod:`.inference` (a slide run), :mod:`.training` (its step and validation on patch folders).
"""
