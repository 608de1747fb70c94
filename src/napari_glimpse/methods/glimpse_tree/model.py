"""Networks of the glimpse tree: the leaf classifier C and the policy U-Nets P_l.

All take float RGB in [0, 1], (N, 3, S, S), and normalise themselves. C returns one logit
per glimpse; P_l returns a logit map of the glimpse's size (q = sigmoid of it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import GlimpseTreeConfig

__all__ = ["GlimpseClassifier", "PolicyUNet", "GlimpseTree", "build_model"]

_MEAN = (0.70, 0.55, 0.70)
_STD = (0.20, 0.25, 0.20)


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2 if stride == 1 else
                                   (k - stride + 1) // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Normalise(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallGlimpseCNN(nn.Module):
    """A CPU-friendly glimpse classifier (about 0.2 M parameters at width 32).

    A 4 x 4 stride-4 stem, three conv stages (x1, x2, x4 width; stride 1, 2, 2), then average-
    and max-pooled features: max pooling lets one tumour cell anywhere in the glimpse count.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = _cbr(3, w // 2, k=4, stride=4)
        self.layer1 = nn.Sequential(_cbr(w // 2, w), _cbr(w, w))
        self.layer2 = nn.Sequential(_cbr(w, 2 * w, stride=2), _cbr(2 * w, 2 * w))
        self.layer3 = nn.Sequential(_cbr(2 * w, 2 * w, stride=2), _cbr(2 * w, 2 * w))
        self.out_channels = 4 * w
        self.fc = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.layer3(self.layer2(self.layer1(self.stem(x))))
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], 1)
        return self.fc(pooled)


class GlimpseClassifier(nn.Module):
    """C: glimpse -> logit (N,). ``backbone`` holds torchvision-compatible names for ResNets."""

    def __init__(self, config: GlimpseTreeConfig):
        super().__init__()
        self.norm = _Normalise()
        if config.backbone == "small":
            self.backbone = SmallGlimpseCNN(config.classifier_width)
        elif config.backbone in ("resnet18", "resnet34"):
            from ..backbones import build_backbone

            self.backbone = build_backbone(config.backbone, num_classes=1)
        elif config.backbone == "inception_v3":
            from .inception import inception_v3

            self.backbone = inception_v3(num_classes=1)
        else:  # the config validates the name; this guards a new name without a builder
            raise ValueError(f"no builder for backbone {config.backbone!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.norm(x)).reshape(-1)


class PolicyUNet(nn.Module):
    """A light U-Net P_l: a stride-4 stem, a three-scale U-Net, the q logits upsampled x4.

    The box kernel K smooths q over a child's extent (a quarter of the glimpse) before it is
    used, so q at a quarter of the glimpse's resolution loses nothing; about 30 M
    multiply-adds per 304 px glimpse at width 8.
    """

    def __init__(self, width: int = 8):
        super().__init__()
        w = width
        self.norm = _Normalise()
        self.stem = _cbr(3, w, k=4, stride=4)
        self.enc1 = _cbr(w, w)
        self.enc2 = nn.Sequential(_cbr(w, 2 * w), _cbr(2 * w, 2 * w))
        self.enc3 = nn.Sequential(_cbr(2 * w, 4 * w), _cbr(4 * w, 4 * w))
        self.dec2 = _cbr(6 * w, 2 * w)
        self.dec1 = _cbr(3 * w, w)
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        e1 = self.enc1(self.stem(self.norm(x)))
        e2 = self.enc2(F.max_pool2d(e1, 2, ceil_mode=True))
        e3 = self.enc3(F.max_pool2d(e2, 2, ceil_mode=True))
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        return F.interpolate(self.head(d1), size=size, mode="bilinear", align_corners=False)[:, 0]


class GlimpseTree(nn.Module):
    """The whole model: ``classifier`` (C) and ``policies[l]`` (P_l, l = 0 .. L - 1)."""

    def __init__(self, config: GlimpseTreeConfig | None = None):
        super().__init__()
        self.config = config or GlimpseTreeConfig()
        self.classifier = GlimpseClassifier(self.config)
        self.policies = nn.ModuleList(PolicyUNet(self.config.policy_width) for _ in range(self.config.levels))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Leaf logits (N,) of glimpses (N, 3, S, S) in [0, 1]."""
        return self.classifier(x)

    def q_map(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """q = sigmoid(P_level(x)): (N, S, S) in [0, 1]."""
        return torch.sigmoid(self.policies[level](x))


def build_model(config: GlimpseTreeConfig | None = None) -> GlimpseTree:
    """The registry's ``build_model``."""
    return GlimpseTree(config or GlimpseTreeConfig())
