"""Training a patch classifier: CELNet's patch loop (:class:`CELNetTrainer`, driven by
:func:`napari_glimpse.runtime.fit.fit`) with this network, AdamW and a cosine schedule."""

from __future__ import annotations

import os
from collections.abc import Generator

import torch

from ...runtime.events import Progress
from ...runtime.fit import fit
from ..celnet.training import CELNetTrainer
from .config import PatchClassifierConfig
from .model import build_model

__all__ = ["PatchClassifierTrainer", "train_patch_classifier"]

METHOD = "patch-classifier"


class PatchClassifierTrainer(CELNetTrainer):
    """The same data, augmentation, validation (AUC) and DDP as CELNet; another network."""

    def build(self):
        cfg = self.config
        model = build_model(cfg).to(self.device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)


def train_patch_classifier(
    train_dir: str | os.PathLike, out: str | os.PathLike, *, val_dir: str | os.PathLike | None = None,
    config: PatchClassifierConfig | None = None, resume: bool = False, device: str | None = "auto",
    seed: int = 0, init: str | os.PathLike | None = None,
) -> Generator[Progress, None, str]:
    """Train on patch folders (``0/`` normal, ``1/`` tumour); yields Progress, returns ``out``."""
    return (yield from fit(METHOD, PatchClassifierTrainer, config or PatchClassifierConfig(), train_dir, out,
                           val_dir=val_dir, resume=resume, init=init, device=device or "auto", seed=seed))
