"""Backbones built from ``torch.nn`` (no weights can be downloaded here).

``resnet18`` / ``resnet34`` use torchvision's parameter names (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``layer2.0.downsample.0``, ``fc``), so a user's ImageNet
``resnet18-*.pth`` loads with :func:`load_torchvision_weights`.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["ResNet", "resnet18", "resnet34", "build_backbone", "load_torchvision_weights", "dilate_resnet"]


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (same attribute names)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with basic blocks and torchvision-compatible state-dict names.

    Parameters
    ----------
    layers : tuple of int
        Blocks per stage: (2, 2, 2, 2) = ResNet-18, (3, 4, 6, 3) = ResNet-34.
    num_classes : int
        Outputs of ``fc`` (1000 matches ImageNet checkpoints; replace ``fc`` afterwards).
    """

    def __init__(self, layers: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        cin = 64
        for i, (w, n) in enumerate(zip(widths, layers, strict=True), 1):
            stride = 1 if i == 1 else 2
            blocks = [BasicBlock(cin, w, stride)] + [BasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self.out_channels = 512
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before global pooling, (N, 512, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes)


def dilate_resnet(net: ResNet) -> ResNet:
    """Replace the strides of ``layer3`` and ``layer4`` by dilation (2 and 4), in place: the
    DeepLab / FCN output stride 8 of torchvision's ``replace_stride_with_dilation=[False, True,
    True]``, with the same parameter names and shapes (so the same weights load)."""
    dilation = 1
    for name in ("layer3", "layer4"):
        previous, dilation = dilation, dilation * 2
        for j, block in enumerate(getattr(net, name)):
            d1 = previous if j == 0 else dilation
            block.conv1.stride, block.conv1.dilation, block.conv1.padding = (1, 1), (d1, d1), (d1, d1)
            block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
    return net


_BACKBONES = {"resnet18": resnet18, "resnet34": resnet34}


def build_backbone(name: str, num_classes: int = 1000) -> nn.Module:
    """``"resnet18"`` or ``"resnet34"``."""
    try:
        return _BACKBONES[name](num_classes=num_classes)
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(_BACKBONES)}") from None


def load_torchvision_weights(model: nn.Module, path: str | os.PathLike, strict_fc: bool = False) -> list[str]:
    """Load a torchvision ResNet state dict (``.pth``) safely (``weights_only=True``).

    The ``fc`` layer is skipped when its shape differs (a new task head), unless
    ``strict_fc``. Returns the names of the parameters that were not loaded.

    Raises
    ------
    CheckpointError
        Unreadable/unsafe file, or names/shapes that do not fit ``model``.
    """
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, ...)
        raise CheckpointError(f"cannot read torchvision weights safely ({type(exc).__name__}: {exc})", path) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    skipped = []
    for name, t in list(state.items()):
        if name not in own:
            raise CheckpointError(f"parameter {name!r} is not in {type(model).__name__}", path)
        if tuple(t.shape) != tuple(own[name].shape):
            if name.startswith("fc.") and not strict_fc:
                skipped.append(name)
                del state[name]
                continue
            raise CheckpointError(f"parameter {name!r} has shape {tuple(t.shape)}, the model {tuple(own[name].shape)}", path)
    missing = sorted(set(own) - set(state))
    model.load_state_dict(state, strict=False)
    return missing
