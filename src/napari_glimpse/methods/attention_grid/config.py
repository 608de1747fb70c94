"""The grid-attention configs: :class:`AttentionGridConfig` (the network, its features, its
training and what a checkpoint hands to inference) and :class:`AttentionGridInferConfig` (one
slide run). No torch here: the CLI and the forms read them without loading a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...calls import SlideCallInfer, SlideCallParams
from ...config import check, param

__all__ = ["AttentionGridConfig", "AttentionGridInferConfig", "ENCODERS"]

#: Encoders of :func:`napari_glimpse.encoders.load_encoder` the forms offer.
ENCODERS = ("pcam", "small", "resnet18", "resnet34")


@dataclass
class AttentionGridConfig(SlideCallParams):
    """Everything that defines a grid-attention model, its features and its training.

    Defaults are the paper's where it gives them (H = 64, 35 epochs, batch 64 as gradient
    accumulation over slides, Adam 1e-4); the features default to the project's encoder.
    """

    #: checkpoints written before the shared slide call stored its threshold as ``threshold``
    renamed_fields: ClassVar[dict] = {"threshold": "slide_threshold"}

    # --- task and features -------------------------------------------------------------
    task: str = param("classification", "slide classification (cross entropy) or regression of a number (MSE)",
                      choices=("classification", "regression"))
    labels: str = param("labels.csv", "labels file in the data folders (slide,label); e.g. tumour_fraction.csv "
                        "for regression")
    encoder: str = param("pcam", "patch encoder of the feature grid", choices=ENCODERS)
    patch_px: int = param(96, "patch edge in px at mpp (the pcam encoder's 96)", min=16, max=1024, advanced=True)
    mpp: float = param(0.972, "feature grid resolution in um/px (the pcam encoder's 0.972)", min=0.05, max=20.0,
                       advanced=True)
    tissue_min: float = param(0.25, "tissue fraction a cell needs to be encoded (else zero features)",
                              min=0.0, max=1.0, advanced=True)
    feature_cache: str = param("", "feature cache folder (empty: the default; 'none': no cache)", advanced=True)
    # --- network -------------------------------------------------------------------------
    head: str = param("minmax", "minmax: the paper's min + max attention; max: the ablation (max branch only); "
                      "abmil: gated attention MIL (Ilse et al. 2018), a baseline", choices=("minmax", "max", "abmil"))
    variant: str = param("faithful", "faithful: unpooled zeros keep softmax weight e^0 (the authors' code); "
                         "masked: only the pooled cells share the attention", choices=("faithful", "masked"),
                         advanced=True)
    channels: int = param(64, "attention maps per branch (H)", min=1, max=1024, advanced=True)
    kernel: int = param(3, "spatial size n of the n x n x K convolution (odd)", min=1, max=15, advanced=True)
    dropout: float = param(0.5, "dropout before the linear read-out", min=0.0, max=0.95, advanced=True)
    abmil_hidden: int = param(128, "hidden units of the ABMIL gated attention", min=1, max=4096, advanced=True)
    # --- training ------------------------------------------------------------------------
    epochs: int = param(35, "training epochs", min=1, max=10000)
    lr: float = param(1e-4, "Adam learning rate", min=1e-7, max=1.0)
    weight_decay: float = param(1e-3, "Adam weight decay", min=0.0, max=1.0, advanced=True)
    accumulate: int = param(64, "slides per optimizer step (gradient accumulation; the paper's batch of 64)",
                            min=1, max=4096)
    augment: bool = param(True, "random flips, 90-degree turns and shifts of 0-2 cells of the grid")
    # --- set by training, handed to inference -------------------------------------------
    feature_dim: int = param(0, "K, features per grid cell (set by training from the grids)", min=0, max=65536,
                             group="inference")
    target_mean: float = param(0.0, "regression: mean of the training targets (set by training)", group="inference")
    target_std: float = param(1.0, "regression: std of the training targets (set by training)", min=1e-12,
                              group="inference")

    def __post_init__(self):
        check(self)
        if self.kernel % 2 == 0:
            raise ValueError(f"AttentionGridConfig.kernel must be odd, got {self.kernel}")
        if not self.labels.strip():
            raise ValueError("AttentionGridConfig.labels must name a file, e.g. labels.csv")


@dataclass
class AttentionGridInferConfig(SlideCallInfer):
    """The parameters of a grid-attention slide run (the "Run model" form and ``infer`` flags)."""

    evidence: str = param("attention", "evidence points: the top tissue cells of the mean max attention or of the Grad-CAM "
                          "map", choices=("attention", "gradcam"))
    feature_cache: str = param("", "feature cache folder (empty: the default; 'none': no cache)", advanced=True)
    batch_size: int = param(128, "patches per encoder pass", min=1, max=4096, advanced=True)

    def __post_init__(self):
        check(self)
