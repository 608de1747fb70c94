"""The patch classifier's configs (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

from ...calls import AggregationInfer, AggregationParams, SlideCallInfer, SlideCallParams
from ...config import check, param, same_as

__all__ = ["PatchClassifierConfig", "PatchClassifierInferConfig"]


@dataclass
class PatchClassifierConfig(SlideCallParams, AggregationParams):
    """An encoder trunk, its head and its training on patches (0/ normal, 1/ tumour)."""

    arch: str = param("small", "encoder trunk", choices=("small", "resnet18", "resnet34"))
    width: int = param(32, "small trunk: channels of its first stage (features K = 4 x width)", min=4, max=256,
                       advanced=True)
    patch_size: int = param(96, "input patch size in pixels", min=16, max=1024, advanced=True)
    mpp: float = param(0.972, "working resolution in um/px (PCam: 0.972)", min=0.05, max=20.0, advanced=True)
    lr: float = param(2e-3, "AdamW peak learning rate (cosine decay to 0 over the epochs)", min=1e-7, max=1.0)
    weight_decay: float = param(1e-4, "AdamW weight decay", min=0.0, max=1.0, advanced=True)
    batch_size: int = param(128, "training batch size", min=1, max=4096)
    epochs: int = param(30, "training epochs", min=1, max=10000)
    augment: bool = param(True, "random 90-degree rotations and flips during training")
    color_jitter: float = param(0.1, "strength of random stain / colour jitter (0 = off)", min=0.0, max=1.0)
    threshold: float = param(0.5, "patch tumour probability threshold (evidence cells, largest_region)", min=0.0,
                             max=1.0, group="inference", advanced=True)
    epoch_size: int = param(0, "patches drawn per epoch (0 = all)", min=0, max=10**9, advanced=True)
    val_limit: int = param(0, "validate on a class-stratified subset of this many patches (0 = all)",
                           min=0, max=10**9, advanced=True)
    workers: int = param(0, "image decoding threads when loading patch folders", min=0, max=64, advanced=True)

    def __post_init__(self):
        check(self)


@dataclass
class PatchClassifierInferConfig(SlideCallInfer, AggregationInfer):
    """One slide run: the tumour probability of every grid cell over the tissue."""

    tissue_min: float = param(0.25, "cells with less tissue than this fraction are background (not read)",
                              min=0.0, max=1.0)
    batch_size: int = param(256, "patches per forward pass", min=1, max=8192, advanced=True)
    threshold: float = same_as(PatchClassifierConfig, "threshold")

    def __post_init__(self):
        check(self)
