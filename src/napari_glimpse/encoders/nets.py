"""Encoder trunks: the small CPU CNN and torchvision-layout ResNets, each ending in global
average pooling (the features the grid-attention paper uses)."""

from __future__ import annotations

import torch
from torch import nn

from ..methods.backbones import ResNet

__all__ = ["SmallTrunk", "ResNetTrunk"]


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    pad = (k - 1) // 2 if stride == 1 else (k - stride + 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallTrunk(nn.Module):
    """A CPU-friendly CNN for 96 px patches: 4 x 4 stride-4 stem, three conv stages (x1, x2, x4
    width; strides 1, 2, 2), global average pool: K = 4 * width."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = _cbr(3, w // 2, k=4, stride=4)
        self.layer1 = nn.Sequential(_cbr(w // 2, w), _cbr(w, w))
        self.layer2 = nn.Sequential(_cbr(w, 2 * w, stride=2), _cbr(2 * w, 2 * w))
        self.layer3 = nn.Sequential(_cbr(2 * w, 4 * w, stride=2), _cbr(4 * w, 4 * w))
        self.out_channels = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x)))).mean(dim=(2, 3))


class ResNetTrunk(nn.Module):
    """A torchvision-layout ResNet without its ``fc``: ``net.<torchvision names>``."""

    def __init__(self, layers: tuple[int, int, int, int], net: ResNet | None = None):
        super().__init__()
        self.net = net if net is not None else ResNet(layers)
        self.net.fc = nn.Identity()  # the trunk ends in the pooled features; a loaded fc is dropped
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x).mean(dim=(2, 3))
