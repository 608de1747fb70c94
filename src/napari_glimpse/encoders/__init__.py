"""Patch encoders shared by every method that needs pretrained patch features.

An encoder maps RGB patches (N, 3, S, S), float in [0, 1], to features (N, K); it normalises
its input itself. The registry names the architectures and the shipped weights:

========== ===================================================================================
``pcam``   the ``small`` encoder trained here on PCam train (the default; shipped weights)
``small``  the CPU-friendly CNN, untrained (tests, or a start for training)
``resnet18``, ``resnet34``  torchvision-layout ResNets (global average pool, K = 512);
           ``resnet34=/path/resnet34-xxx.pth`` loads a torchvision / compatible state dict
========== ===================================================================================

A path to a ``patch-classifier`` checkpoint (``.safetensors``) is an encoder too: its trunk
gives the features and its head the patch scores (``Encoder.scores``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Encoder", "EncoderSpec", "list_encoders", "load_encoder", "weights_checksum", "DEFAULT_ENCODER"]

DEFAULT_ENCODER = "pcam"


def weights_checksum(module: nn.Module) -> str:
    """sha256 (hex, first 16 digits) of a module's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class Encoder(nn.Module):
    """A trunk (images -> (N, K) features) with an optional patch-score head (K -> 1 logit).

    Attributes
    ----------
    name : str
        Registry name or checkpoint file stem.
    feature_dim : int
        K.
    patch_px : int
        The patch edge it was trained at; callers resize patches to it.
    mpp : float
        The um/px it was trained at (the default grid resolution).
    checksum : str
        :func:`weights_checksum` of the whole encoder (trunk and head): the feature cache key.
    """

    def __init__(self, trunk: nn.Module, feature_dim: int, *, name: str, patch_px: int, mpp: float,
                 mean=(0.70, 0.55, 0.70), std=(0.20, 0.25, 0.20), head: nn.Module | None = None):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.name = name
        self.feature_dim = int(feature_dim)
        self.patch_px = int(patch_px)
        self.mpp = float(mpp)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def has_scores(self) -> bool:
        return self.head is not None

    @property
    def checksum(self) -> str:
        # computed on every call (milliseconds for the small trunk, ~0.1 s for ResNet-34): weights
        # changed in place (fine-tuning in the same process) must never reuse a stale cache entry
        return weights_checksum(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float in [0, 1] -> (N, K) features."""
        return self.trunk((images - self.mean) / self.std)

    def features_and_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features and, with a head, patch logits (N,) from one pass."""
        f = self(images)
        return f, (self.head(f).squeeze(1) if self.head is not None else None)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tumour logits (N,); only for encoders with a head."""
        if self.head is None:
            raise ValueError(f"encoder {self.name!r} has no patch-score head")
        return self.features_and_scores(images)[1]


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry: ``build(device)`` gives the :class:`Encoder`."""

    name: str
    title: str
    build: str  # "module:attr", called as build(weights_path_or_None)
    weights: str | None = None  # shipped file in the package's weights folder


_ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec, *, replace: bool = False) -> EncoderSpec:
    if spec.name in _ENCODERS and not replace:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    _ENCODERS[spec.name] = spec
    return spec


def list_encoders() -> list[EncoderSpec]:
    return list(_ENCODERS.values())


def load_encoder(ref: str | os.PathLike = DEFAULT_ENCODER, device: str | torch.device = "cpu") -> Encoder:
    """The encoder ``ref`` names, in eval mode on ``device``.

    ``ref``: a registry name (``pcam``, ``small``, ``resnet18``, ``resnet34``), ``NAME=PATH``
    (that architecture with the weights at PATH), or a ``patch-classifier`` checkpoint path.

    Raises
    ------
    ValueError
        An unknown name.
    CheckpointError
        Unreadable or unfitting weights (the message names the file).
    """
    from ._build import build_encoder

    return build_encoder(os.fspath(ref), _ENCODERS).to(device).eval()


from . import _builtin  # noqa: E402,F401  (registers the built-in encoders)
