"""The RAZN networks (METHODS.md section 4): the policy g_phi, one FCN f_theta_i per zoom level,
and the per-tile losses the reward is made of."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import RAZNConfig

__all__ = ["PolicyNet", "SegNet", "RAZN", "build_model", "tile_ce", "bounded", "split_tiles", "stitch_tiles"]


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class PolicyNet(nn.Module):
    """g_phi: the ResNet-18 layout with each two-block stage replaced by one 3x3 conv + BN + ReLU
    (7x7 stem, max pool, stages of 64 / 128 / 256 / 512 channels at strides 1 / 2 / 2 / 2,
    global average pool, one logit)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1, self.layer2 = _cbr(64, 64), _cbr(64, 128, 2)
        self.layer3, self.layer4 = _cbr(128, 256, 2), _cbr(256, 512, 2)
        self.fc = nn.Linear(512, 1)
        self.register_buffer("mean", torch.tensor((0.70, 0.55, 0.70)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor((0.20, 0.25, 0.20)).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> p = sigmoid(g(x)), (N,)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1((x - self.mean) / self.std))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.sigmoid(self.fc(x.mean(dim=(2, 3))).squeeze(1))


def bounded(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """The bounded Bernoulli parameter p~ = alpha p + (1 - alpha)(1 - p), in [1 - alpha, alpha]."""
    return alpha * p + (1.0 - alpha) * (1.0 - p)


class SegNet(nn.Module):
    """f_theta: an FCN on a dilated encoder of the registry (output stride 8) with torchvision's
    FCN head (3x3 conv to a quarter of the channels, BN, ReLU, dropout 0.1, 1x1 conv to C),
    upsampled bilinearly to the input size."""

    def __init__(self, encoder_name: str, n_classes: int):
        super().__init__()
        from ...encoders import load_encoder
        from ..backbones import dilate_resnet

        enc = load_encoder(encoder_name)
        if encoder_name.startswith("resnet"):
            self.backbone = enc.trunk.net
            self.backbone.fc = nn.Identity()
            dilate_resnet(self.backbone)
            self._features = self.backbone.forward_features
            channels = 512
        else:  # the small trunk: strides 4 (stem), 1, 2, 2 -> the last stride becomes dilation 2
            self.backbone = enc.trunk
            for cbr in self.backbone.layer3:
                conv = cbr[0]
                conv.stride, conv.dilation, conv.padding = (1, 1), (2, 2), (2, 2)
            t = self.backbone
            self._features = lambda x: t.layer3(t.layer2(t.layer1(t.stem(x))))
            channels = t.out_channels
        self.register_buffer("mean", enc.mean.clone(), persistent=False)
        self.register_buffer("std", enc.std.clone(), persistent=False)
        inter = max(channels // 4, 16)
        self.head = nn.Sequential(nn.Conv2d(channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
                                  nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Conv2d(inter, n_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> logits (N, C, H, W)."""
        h, w = x.shape[-2:]
        f = self.head(self._features((x - self.mean) / self.std))
        return F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)


class RAZN(nn.Module):
    """``policies[i]`` decides whether a tile at zoom level i zooms; ``segs[i]`` segments tiles
    at zoom level i (m policies, m + 1 independent segmentation networks)."""

    def __init__(self, config: RAZNConfig):
        super().__init__()
        self.config = config
        m = int(config.zoom_levels)
        self.policies = nn.ModuleList([PolicyNet() for _ in range(m)])
        self.segs = nn.ModuleList([SegNet(config.encoder, config.n_classes) for _ in range(m + 1)])

    def p_tilde(self, level: int, x: torch.Tensor) -> torch.Tensor:
        return bounded(self.policies[level](x), float(self.config.alpha))


def split_tiles(x: torch.Tensor, r: int) -> torch.Tensor:
    """(N, C, rH, rW) -> (N r^2, C, H, W), row-major tiles of each field."""
    n, c, hh, ww = x.shape
    h, w = hh // r, ww // r
    return x.reshape(n, c, r, h, r, w).permute(0, 2, 4, 1, 3, 5).reshape(n * r * r, c, h, w)


def stitch_tiles(t: torch.Tensor, r: int) -> torch.Tensor:
    """The inverse of :func:`split_tiles`."""
    nr, c, h, w = t.shape
    n = nr // (r * r)
    return t.reshape(n, r, r, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, r * h, r * w)


def tile_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-tile cross entropy J (eq. 1): the mean over the tile's pixels, (N,)."""
    return F.cross_entropy(logits, y, reduction="none").mean(dim=(1, 2))


def build_model(config: RAZNConfig) -> RAZN:
    """The RAZN of ``config``; segmentation encoders start from the registry's weights (a
    checkpoint's weights replace them on load)."""
    return RAZN(config)
