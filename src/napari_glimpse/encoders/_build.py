"""Building encoders from registry names, ``NAME=PATH`` references and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..methods.backbones import ResNet, load_torchvision_weights
from . import Encoder
from .nets import ResNetTrunk, SmallTrunk

_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
_PCAM_MPP = 0.972


def small(weights: str | None = None) -> Encoder:
    if weights is not None:
        return from_checkpoint(weights)
    # untrained: a fixed initialisation, so its checksum (the feature cache key) is the same on every load
    with torch.random.fork_rng():
        torch.manual_seed(0)
        trunk = SmallTrunk(32)
    return Encoder(trunk, trunk.out_channels, name="small", patch_px=96, mpp=_PCAM_MPP)


def _resnet(layers, name: str, weights: str | None) -> Encoder:
    net = ResNet(layers)
    if weights is not None:
        if str(weights).endswith(".safetensors"):
            return from_checkpoint(weights)
        missing = [m for m in load_torchvision_weights(net, weights) if not m.startswith("fc.")]
        if missing:
            raise CheckpointError(f"{len(missing)} parameters missing, e.g. {missing[0]!r}", weights)
        name = f"{name}={Path(weights).name}"
    trunk = ResNetTrunk(layers, net)
    # torchvision's ImageNet models: 224 px patches at about 2 um/px in the grid-attention paper
    return Encoder(trunk, 512, name=name, patch_px=224, mpp=2.0, **_IMAGENET)


def resnet18(weights: str | None = None) -> Encoder:
    return _resnet((2, 2, 2, 2), "resnet18", weights)


def resnet34(weights: str | None = None) -> Encoder:
    return _resnet((3, 4, 6, 3), "resnet34", weights)


def from_checkpoint(path: str | os.PathLike, *, name: str | None = None) -> Encoder:
    """A ``patch-classifier`` checkpoint as an encoder (trunk + score head); never unpickles."""
    from ..methods.patch_classifier.api import load

    net, _ = load(os.fspath(path), "cpu")
    enc = net.encoder
    enc.name = name or Path(path).stem
    return enc


def build_encoder(ref: str, registry: dict) -> Encoder:
    from ..methods.registry import WEIGHTS_DIR, resolve

    name, sep, path = ref.partition("=")
    if sep:
        if name not in registry:
            raise ValueError(f"unknown encoder {name!r}; known: {', '.join(registry)}")
        if not Path(path).is_file():
            raise CheckpointError("no such file", path)
        return resolve(registry[name].build)(path)
    if ref in registry:
        spec = registry[ref]
        weights = None
        if spec.weights:
            weights = os.fspath(WEIGHTS_DIR / spec.weights)
            if not os.path.isfile(weights):
                raise CheckpointError(f"the shipped weights of encoder {ref!r} are not installed", weights)
        enc = resolve(spec.build)(weights)
        enc.name = ref
        return enc
    if ref.endswith(".safetensors") or os.path.sep in ref or Path(ref).is_file():
        if not Path(ref).is_file():
            raise CheckpointError("no such file", ref)
        return from_checkpoint(ref)
    raise ValueError(f"unknown encoder {ref!r}; known: {', '.join(registry)} (or NAME=PATH, or a checkpoint)")
