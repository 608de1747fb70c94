"""CELNet's two configs: :class:`CELNetConfig` (the network, its training and the defaults a
checkpoint hands to inference) and :class:`CELNetInferConfig` (one slide run). No torch here:
the CLI and the forms read them without loading a model."""

from __future__ import annotations

from dataclasses import dataclass

from ...calls import AggregationInfer, AggregationParams, SlideCallInfer, SlideCallParams
from ...config import check, param, same_as

__all__ = ["CELNetConfig", "CELNetInferConfig"]


@dataclass
class CELNetConfig(SlideCallParams, AggregationParams):
    """Everything that defines a CELNet model, its training and its slide inference.

    Defaults are the paper's (PCam, 10x); every field is validated in ``__post_init__``.
    """

    # --- network -------------------------------------------------------------------------
    widths: tuple[int, ...] = param((16, 32, 64), "channels of the three MA-ResModules", advanced=True)
    blocks: int = param(3, "building blocks per MA-ResModule", min=1, max=8, advanced=True)
    stem_stride: int = param(
        1,
        "stride of the 3x3 head conv: 1 as in the paper; 2 runs the modules at half resolution, "
        "a quarter of the positions to compute (how the shipped CPU model affords the paper's 3 blocks)",
        min=1,
        max=2, advanced=True,
    )
    reduction: int = param(4, "channel-attention bottleneck reduction", min=1, max=64, advanced=True)
    spatial_kernels: tuple[int, ...] = param(
        (3, 5, 7), "kernel sizes of the spatial-attention branches (odd)", advanced=True
    )
    channel_window: int | None = param(
        7,
        "channel-attention pooling window in cells (odd); None = global pooling as in the "
        "paper, which makes dense slide inference inexact",
        min=1,
        max=99, advanced=True,
    )
    # --- training ------------------------------------------------------------------------
    aux_loss_weight: float = param(0.5, "weight of each companion (deep-supervision) loss", min=0.0, max=10.0)
    weight_decay: float = param(1e-5, "L2 regularisation (SGD weight decay)", min=0.0, max=1.0)
    lr: float = param(1e-4, "initial learning rate", min=1e-7, max=10.0)
    momentum: float = param(0.9, "SGD Nesterov momentum", min=0.0, max=0.999)
    lr_milestones: tuple[float, ...] = param(
        (0.5, 0.75), "fractions of the epochs at which the learning rate is multiplied by lr_gamma"
    )
    lr_gamma: float = param(0.5, "learning-rate factor at each milestone", min=0.0, max=1.0)
    batch_size: int = param(64, "training batch size", min=1, max=4096)
    epochs: int = param(100, "training epochs", min=1, max=10000)
    augment: bool = param(True, "random 90-degree rotations and flips during training")
    color_jitter: float = param(
        0.0,
        "strength of random stain / colour jitter during training (0 = off, the paper's "
        "rotations and flips only; ~0.1 helps across slides)",
        min=0.0,
        max=1.0,
    )
    # --- data / resolution ---------------------------------------------------------------
    patch_size: int = param(96, "input patch size in pixels (multiple of 4 x stem_stride)", min=16, max=1024, advanced=True)
    mpp: float = param(0.972, "working resolution in um/px (PCam is 10x, 0.972 um/px)", min=0.05, max=20.0, advanced=True)
    # --- slide inference / CELM (used by the inference code) ------------------------------
    threshold: float = param(0.5, "patch (window) tumour probability threshold: CELM, peaks, largest_region",
                             min=0.0, max=1.0, group="inference", advanced=True)
    celm_a: float = param(0.5, "CELM: weight of CAM3 against CAM2 (a)", min=0.0, max=1.0, group="inference", advanced=True)
    celm_b: float = param(0.5, "CELM: weight of CAM x saliency against CAM (b)", min=0.0, max=1.0, group="inference", advanced=True)
    evidence_threshold: float = param(0.5, "CELM threshold for the evidence mask", min=0.0, max=1.0, group="inference", advanced=True)
    saliency_sigma: float = param(2.0, "Gaussian smoothing of the saliency map (px)", min=0.0, max=50.0, group="inference", advanced=True)

    # --- the training loop's data options (runtime/fit.py) -------------------------------------
    epoch_size: int = param(0, "patches drawn per epoch (0 = all); smaller epochs validate and checkpoint more often",
                            min=0, max=10**9, advanced=True)
    val_limit: int = param(0, "validate on a class-stratified subset of this many patches (0 = all)",
                           min=0, max=10**9, advanced=True)
    workers: int = param(0, "image decoding threads when loading patch folders", min=0, max=64, advanced=True)

    def __post_init__(self):
        check(self)
        if len(self.widths) != 3 or any(w < 1 for w in self.widths):
            raise ValueError(f"CELNetConfig.widths must be three positive integers, got {self.widths}")
        if not self.spatial_kernels or any(k < 1 or k % 2 == 0 for k in self.spatial_kernels):
            raise ValueError(f"CELNetConfig.spatial_kernels must be odd and positive, got {self.spatial_kernels}")
        if self.channel_window is not None and (self.channel_window < 1 or self.channel_window % 2 == 0):
            raise ValueError(f"CELNetConfig.channel_window must be odd and positive or None, got {self.channel_window}")
        if self.patch_size % (4 * self.stem_stride):
            raise ValueError(
                f"CELNetConfig.patch_size must be a multiple of {4 * self.stem_stride} "
                f"(4 x stem_stride), got {self.patch_size}"
            )
        if any(not 0.0 < m < 1.0 for m in self.lr_milestones):
            raise ValueError(f"CELNetConfig.lr_milestones must lie in (0, 1), got {self.lr_milestones}")
        if any(w // self.reduction < 1 for w in self.widths):
            raise ValueError(f"CELNetConfig.reduction={self.reduction} leaves no channels for width {min(self.widths)}")


@dataclass
class CELNetInferConfig(SlideCallInfer, AggregationInfer):
    """The parameters of a CELNet slide run (the "Run model" form and ``infer celnet`` flags).

    Fields named like a :class:`CELNetConfig` field (threshold, CELM a / b, ...) default to the
    checkpoint's value.
    """

    stride: int = param(
        32, "px between windows at the working resolution (multiple of the model's stride: 4, or 8 with stem_stride 2)",
        min=4, max=1024,
    )
    tile_size: int = param(1536, "tile input px, context included (bounds memory; smaller regions "
                                "get smaller tiles)", min=128, max=8192, advanced=True)
    batch_size: int = param(1, "tiles per forward pass", min=1, max=64, advanced=True)
    tissue: str = param("otsu", "tissue detection; tiles without tissue are skipped",
                       choices=("otsu", "grey", "none"))
    celm: bool = param(True, "CELM evidence map, mask and peaks (needs gradients: slower)")
    tta: bool = param(False, "average the probability map over the 8 rotations / flips of every window (8x the "
                            "feature cost; what evaluate --tta measures)")
    celm_batch: int = param(0, "windows per CELM pass (0: as many as take about a second)", min=0, max=1024,
                            advanced=True)
    evidence_cell: int = param(8, "working px per evidence-map cell", min=1, max=96, advanced=True)
    threshold: float = same_as(CELNetConfig, "threshold", advanced=False)
    celm_a: float = same_as(CELNetConfig, "celm_a")
    celm_b: float = same_as(CELNetConfig, "celm_b")
    evidence_threshold: float = same_as(CELNetConfig, "evidence_threshold", advanced=False)
    saliency_sigma: float = same_as(CELNetConfig, "saliency_sigma")
    mask_sigma: float = param(1.0, "Gaussian smoothing (evidence cells) before thresholding", min=0.0, max=20.0, advanced=True)
    nms_min_distance: float = param(3.0, "peaks closer than this (map cells) to a stronger one are dropped",
                                   min=0.0, max=1000.0, advanced=True)
    nms_max_peaks: int = param(100, "at most this many tumour peaks", min=0, max=100000, advanced=True)

    def __post_init__(self):
        check(self)
