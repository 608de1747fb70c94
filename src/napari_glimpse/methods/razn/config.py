"""The RAZN configs: :class:`RAZNConfig` (networks, scales, training, what a checkpoint hands to
inference) and :class:`RAZNInferConfig` (one slide run). No torch here."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import check, param

__all__ = ["RAZNConfig", "RAZNInferConfig", "SEG_ENCODERS"]

#: segmentation backbones: the paper's dilated ResNet-18 FCN, or the small CNN (``pcam``: its
#: PCam-trained weights from the encoder registry; ``small``: untrained, for tests)
SEG_ENCODERS = ("resnet18", "pcam", "small")


@dataclass
class RAZNConfig:
    """Everything that defines a RAZN and its training (METHODS.md section 4).

    Defaults are the paper's: tiles x0 of 256 x 256, zoom rate r = 2, m = 1 zoom level, the
    bounded Bernoulli with alpha = 0.8, FCNs on a dilated ResNet-18, Adam at lr 0.01 with a
    step decay of 0.1 every 50,000 iterations. ``mpp`` is the coarse scale (x0); zoom level i
    reads the same field at ``mpp / r**i``. Images without a pixel size of their own are taken
    to be at the finest scale.
    """

    mpp: float = param(1.0, "um/px of the coarse tiles x0 (scale 1); zoom level i reads at mpp / r^i",
                       min=0.05, max=64.0)
    tile_px: int = param(256, "edge of the tiles x0 (H = W) every network sees", min=8, max=1024)
    zoom_rate: int = param(2, "zoom rate r: a zoomed field is read at r times the resolution and cut "
                           "into r^2 tiles", min=2, max=4)
    zoom_levels: int = param(1, "m: how many times a tile may zoom (1 is the paper)", min=1, max=3)
    alpha: float = param(0.8, "bounded Bernoulli: p~ = alpha p + (1 - alpha)(1 - p)", min=0.5, max=1.0)
    encoder: str = param("resnet18", "segmentation backbone (dilated FCN)", choices=SEG_ENCODERS)
    classes: tuple[str, ...] = param((), "class names, index = label value (set from the training data)",
                                     advanced=True)
    # --- training --------------------------------------------------------------------------
    epochs: int = param(50, "training epochs", min=1, max=10000)
    tiles_per_epoch: int = param(512, "x0 tiles drawn per epoch (over annotated tissue)", min=1, max=10**7)
    batch_size: int = param(8, "x0 tiles per step", min=1, max=1024)
    lr: float = param(0.01, "Adam learning rate of every network (the paper's 0.01)", min=1e-8, max=1.0)
    lr_step: int = param(50000, "iterations between learning-rate decays (x 0.1)", min=1, max=10**9)
    foreground_fraction: float = param(0.5, "share of training tiles centred on a pixel of a class other "
                                       "than 0 (the rest anywhere on tissue)", min=0.0, max=1.0, advanced=True)
    augment: bool = param(True, "random flips and 90-degree turns of the tiles")

    def __post_init__(self):
        check(self)

    @property
    def n_classes(self) -> int:
        return max(len(self.classes), 2)


@dataclass
class RAZNInferConfig:
    """The parameters of a RAZN slide run (the "Run model" form and ``infer`` / ``evaluate`` flags)."""

    policy: str = param("sample", "zoom decisions: greedy (zoom when p~ >= 0.5), sample (a ~ Bernoulli(p~), "
                        "as the paper) or the baselines never (scale 1 only) / always (finest only)",
                        choices=("greedy", "sample", "never", "always"))
    image_mpp: float | None = param(None, "um/px of images that carry none (default: the model's finest "
                                    "scale)", min=0.01, max=64.0)
    batch_size: int = param(16, "tiles per forward pass", min=1, max=4096, advanced=True)
    seed: int = param(0, "seed of the sampled zoom decisions", min=0, max=2**31 - 1, advanced=True)

    def __post_init__(self):
        check(self)
