"""The plugin's dock widgets: "Run model" (inference), "Train model" (training) and "Compare".

Widgets only translate between the user and the core: the methods' generators run in a
worker thread (:mod:`._common`), their results become layers via :mod:`napari_glimpse.layers`.
"""

from ._compare import CompareWidget
from ._inference import InferenceWidget
from ._training import TrainingWidget

__all__ = ["CompareWidget", "InferenceWidget", "TrainingWidget"]
