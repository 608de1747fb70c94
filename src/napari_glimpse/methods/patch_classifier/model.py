"""The patch classifier network: an :class:`~napari_glimpse.encoders.Encoder` with a head."""

from __future__ import annotations

import torch
from torch import nn

from ...encoders import Encoder
from ...encoders.nets import ResNetTrunk, SmallTrunk
from .config import PatchClassifierConfig

__all__ = ["PatchClassifierNet", "build_model"]

_RESNET = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class PatchClassifierNet(nn.Module):
    """``forward`` returns ``{"logit": (N,)}`` (the training loop's contract); ``encoder`` is
    the trunk + head that the encoder registry hands to other methods."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logit": self.encoder.scores(x)}


def build_model(config: PatchClassifierConfig | None = None, *, name: str = "patch-classifier") -> PatchClassifierNet:
    cfg = config or PatchClassifierConfig()
    if cfg.arch == "small":
        trunk, k = SmallTrunk(cfg.width), 4 * cfg.width
    else:
        trunk, k = ResNetTrunk(_RESNET[cfg.arch]), 512
    enc = Encoder(trunk, k, name=name, patch_px=cfg.patch_size, mpp=cfg.mpp, head=nn.Linear(k, 1))
    return PatchClassifierNet(enc)
