"""The MagNet configs: :class:`MagNetConfig` (network, sampling, training, what a checkpoint
hands to inference) and :class:`MagNetInferConfig` (one slide run). No torch here."""

from __future__ import annotations

from dataclasses import dataclass

from ...calls import SlideCallInfer, SlideCallParams
from ...config import check, param

__all__ = ["MagNetConfig", "MagNetInferConfig", "ENCODERS"]

#: encoders of :func:`napari_glimpse.encoders.load_encoder` the forms offer
ENCODERS = ("pcam", "small", "resnet18", "resnet34")


@dataclass
class MagNetConfig(SlideCallParams):
    """Everything that defines a MagNet and its training (METHODS.md section 3).

    Defaults are the paper's: patches (2, 3, 3) per magnifying layer (18 leaves), inputs of
    56 x 56, leaves of 224 x 224, s >= 0.05, the grey filter at 15, auxiliary ResNet-18s on
    layers 1 and 3 with the paradoxical loss, Adam 3e-5 with cosine annealing for 200 epochs,
    batch 16 (gradient accumulation over slides). The classifier's CNN starts from the encoder
    registry's PCam-trained weights (the paper: ImageNet InceptionNet-v3).
    """

    # --- data ----------------------------------------------------------------------------
    labels: str = param("labels.csv", "labels file in the data folders (slide,label with 0 / 1)")
    mpp: float = param(0.972, "um/px of the training slides' level 0 (recorded in the checkpoint)",
                       min=0.05, max=20.0, advanced=True)
    # --- magnifying layers -----------------------------------------------------------------
    patches: tuple[int, ...] = param((2, 3, 3), "patches per magnifying layer (P_l; leaves = their product); "
                                     "(2, 3, 3) is the paper's 3-layer MagNet, (2, 3, 3, 3) a 4-layer one")
    sampler: str = param("bilinear", "differentiable sampler: bilinear or linearized multi-sampling "
                         "(Jiang et al. 2019)", choices=("bilinear", "lms"))
    input_px: int = param(56, "input edge of a magnifying layer (I)", min=8, max=512, advanced=True)
    leaf_px: int = param(224, "edge of the last layer's patches (the classifier's input)", min=16, max=1024,
                         advanced=True)
    min_scale: float = param(0.05, "smallest scale s of a patch relative to its parent", min=0.001, max=1.0,
                             advanced=True)
    grey_threshold: int = param(15, "grey filter: pixels whose R, G, B lie within this of each other become "
                                "black (0: off)", min=0, max=255, advanced=True)
    inception_width: int = param(8, "channels per branch of the Inception-style blocks", min=1, max=256,
                                 advanced=True)
    lms_points: int = param(8, "linearized multi-sampling: auxiliary points per sample", min=2, max=64,
                            advanced=True)
    lms_noise_px: float = param(0.5, "linearized multi-sampling: std of the auxiliary offsets in input px",
                                min=0.01, max=16.0, advanced=True)
    # --- classification layer and auxiliaries ---------------------------------------------
    encoder: str = param("pcam", "CNN of the leaf patches (encoder registry)", choices=ENCODERS)
    gru_hidden: int = param(256, "GRU hidden units", min=1, max=4096, advanced=True)
    aux: bool = param(True, "auxiliary slide classifiers on the patches of layers 1 and 3, with the "
                      "paradoxical loss max(0, CE_3 - CE_1)")
    aux_encoder: str = param("resnet18", "CNN of the auxiliary classifiers (the paper's ResNet-18; pcam is "
                             "smaller: 0.29 M against 11 M parameters)", choices=ENCODERS)
    # --- training --------------------------------------------------------------------------
    epochs: int = param(200, "training epochs", min=1, max=10000)
    lr: float = param(3e-5, "Adam learning rate (cosine annealed over the epochs)", min=1e-8, max=1.0)
    batch_size: int = param(16, "slides per optimizer step (gradient accumulation; the paper's 16 for 3 "
                            "layers, 8 for 4)", min=1, max=1024)
    augment: bool = param(True, "random flips and 90-degree turns of the whole slide")

    def __post_init__(self):
        check(self)
        if not self.patches or any(p < 1 for p in self.patches):
            raise ValueError(f"MagNetConfig.patches must be positive counts, got {self.patches!r}")
        if len(self.patches) > 6:
            raise ValueError(f"MagNetConfig.patches: at most 6 magnifying layers, got {len(self.patches)}")
        if not self.labels.strip():
            raise ValueError("MagNetConfig.labels must name a file, e.g. labels.csv")

    @property
    def leaves(self) -> int:
        n = 1
        for p in self.patches:
            n *= int(p)
        return n


@dataclass
class MagNetInferConfig(SlideCallInfer):
    """The parameters of a MagNet slide run (the "Run model" form and ``infer`` flags)."""

    def __post_init__(self):
        check(self)
