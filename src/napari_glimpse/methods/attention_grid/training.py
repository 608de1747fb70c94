"""Grid-attention training on slide-labelled folders, driven by :func:`napari_glimpse.runtime.fit.fit`.

Every slide's feature grid is computed (or read from the feature cache) once in ``setup`` and
kept in memory; epochs read only those arrays. One slide per step (grids differ in size), the
gradients of ``accumulate`` slides summed per Adam step; random flips, 90-degree turns and
shifts of 0-2 cells. Epoch ``e`` draws its slide order and augmentations from ``(seed, e)``.
Validation gives the slide AUC (classification; its threshold of highest sensitivity +
specificity goes into the checkpoint) or the Spearman correlation (regression).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...calls import choose_threshold
from ...errors import DatasetError
from ...evaluate import roc_auc, spearman
from ...runtime.data import find_slides
from ...runtime.distributed import item_steps
from ...runtime.events import Progress
from ...runtime.fit import Trainer, fit
from . import grids
from .config import AttentionGridConfig
from .model import build_model, slide_score

__all__ = ["AttentionGridTrainer", "train", "load_grids", "SlideGrid", "labelled_slides"]

METHOD = "attention-grid"


@dataclass
class SlideGrid:
    """One labelled slide's feature grid, held in memory for the whole run."""

    stem: str
    features: np.ndarray  # (M, N, K) float16
    tissue: np.ndarray  # (M, N) bool
    label: float


def labelled_slides(folder, config: AttentionGridConfig) -> list:
    """The slides of ``folder`` with a label in ``config.labels`` (0 / 1 for classification)."""
    items = find_slides(folder, need="labels", binary=config.task == "classification", labels=config.labels)
    return [i for i in items if i.label is not None]


def load_grids(items, params: grids.GridParams, device, what: str) -> Generator[Progress, None, list[SlideGrid]]:
    """The feature grid of every slide (through :func:`grids.slide_grid`, hence the cache)."""
    out = []
    for k, item in enumerate(items):
        gen = grids.slide_grid(item.path, params, device)
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                grid = stop.value
                break
            yield Progress("features", k, len(items), f"{what} slide {k + 1}/{len(items)}: {p.message}")
        out.append(SlideGrid(item.stem, np.asarray(grid.features, np.float16), np.asarray(grid.tissue, bool),
                             float(item.label)))
        yield Progress("features", k + 1, len(items), f"{what} slide {k + 1}/{len(items)}: {item.stem}")
    return out


def _tensors(features: np.ndarray, tissue: np.ndarray, device):
    return (torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device),
            torch.from_numpy(np.ascontiguousarray(tissue)).to(device))


class AttentionGridTrainer(Trainer):
    """Grid attention on folders of slides with a labels file (``config.labels``).

    Under torchrun the slides of every optimiser step are split between the ranks (see
    :meth:`train_epoch`); rank 0 alone reads the validation slides.

    Reads ``task, labels, encoder, patch_px, mpp, tissue_min, feature_cache, epochs, lr,
    weight_decay, accumulate, augment`` and the network fields; sets ``feature_dim``,
    ``target_mean`` / ``target_std`` (regression) and ``slide_threshold`` (classification, by ``threshold_rule``, per
    validation) on the config the checkpoints store.
    """

    supports_ddp = True
    ddp_wrap = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.classes = ("normal", "tumour") if self.config.task == "classification" else ("value",)

    def setup(self) -> Generator[Progress, None, None]:
        cfg = self.config
        params = grids.GridParams.from_config(cfg)
        train_items = labelled_slides(self.train_dir, cfg)
        val_items = labelled_slides(self.val_dir, cfg) if self.val_dir is not None and self.ctx.is_main else []
        if self.ctx.enabled and params.cache_arg() is not False:
            # each rank encodes its share of the slides into the feature cache; then all read all
            yield from load_grids(self.ctx.shard(train_items), params, self.device, "training (this rank's share)")
            self.ctx.barrier()
        self.train_grids = yield from load_grids(train_items, params, self.device, "training")
        self.val_grids = (yield from load_grids(val_items, params, self.device, "validation")) or None
        dims = {g.features.shape[2] for g in self.train_grids + (self.val_grids or [])}
        if len(dims) != 1:
            raise DatasetError(f"feature grids of different lengths K {sorted(dims)}", self.train_dir)
        cfg.feature_dim = dims.pop()
        y = np.array([g.label for g in self.train_grids])
        if cfg.task == "classification" and len(np.unique(y)) < 2:
            raise DatasetError(f"training slides hold only one class ({cfg.labels})", self.train_dir)
        if cfg.task == "regression":
            cfg.target_mean, cfg.target_std = float(y.mean()), float(y.std()) if y.std() > 0 else 1.0
        self.model = build_model(cfg).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = None

    def data_summary(self) -> dict:
        def cells(gs):
            return [list(g.tissue.shape) for g in gs]

        return {"train": str(self.train_dir), "train_slides": len(self.train_grids),
                "val_slides": len(self.val_grids or []), "train_grids": cells(self.train_grids),
                "labels": self.config.labels, "task": self.config.task}

    def _loss(self, out: torch.Tensor, label: float) -> torch.Tensor:
        cfg = self.config
        if cfg.task == "classification":
            return F.cross_entropy(out[None], torch.tensor([int(label)], device=out.device))
        target = (label - cfg.target_mean) / cfg.target_std
        return F.mse_loss(out[0], torch.tensor(target, dtype=out.dtype, device=out.device))

    def train_epoch(self, epoch: int, net) -> Generator[Progress, None, dict]:
        cfg, ctx, data = self.config, self.ctx, self.train_grids
        t0 = time.time()
        order = np.random.default_rng([self.seed, epoch]).permutation(len(data))
        self.model.train()
        total, done = 0.0, 0
        # a step is ``accumulate`` slides; under torchrun each rank takes every N-th of them
        for j, size, rng in item_steps(ctx, len(order), cfg.accumulate, self.model, self.optimizer, self.seed, epoch):
            g = data[order[j]]
            f, t = grids.augment_grid(g.features, g.tissue, rng) if cfg.augment else (g.features, g.tissue)
            loss = self._loss(net(*_tensors(f, t, self.device))["out"], g.label)
            (loss / size).backward()
            total += loss.item()
            done += 1
            yield Progress("train", j + 1, len(order), f"epoch {epoch + 1}/{cfg.epochs}", {"loss": total / done})
        total, done = ctx.all_reduce_sum(total, done)
        return {"train_loss": total / max(done, 1), "slides": int(done), "seconds": time.time() - t0}

    def validate(self, epoch: int) -> Generator[Progress, None, dict | None]:
        if self.val_grids is None:
            return None
        cfg = self.config
        self.model.eval()
        scores, losses = [], []
        with torch.no_grad():
            for k, g in enumerate(self.val_grids):
                out = self.model(*_tensors(g.features, g.tissue, self.device))["out"]
                scores.append(slide_score(out, cfg))
                losses.append(self._loss(out, g.label).item())
                yield Progress("validate", k + 1, len(self.val_grids), f"validation slide {k + 1}")
        labels = np.array([g.label for g in self.val_grids])
        if cfg.task == "regression":
            rho = spearman(labels, scores)
            return {"score": rho, "val_spearman": rho, "val_loss": float(np.mean(losses))}
        auc = roc_auc(labels, scores)
        if len(set(labels)) > 1:
            cfg.slide_threshold = choose_threshold(labels, scores, cfg.threshold_rule)
        return {"score": auc, "val_auc": auc, "val_loss": float(np.mean(losses)), "threshold": cfg.slide_threshold}


def train(
    train_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_dir: str | os.PathLike | None = None,
    config: AttentionGridConfig | None = None,
    resume: bool = False,
    device: str | None = "auto",
    seed: int = 0,
    init: str | os.PathLike | None = None,
) -> Generator[Progress, None, str]:
    """Train grid attention on slide folders with ``config.labels``; yields Progress, returns ``out``.

    See :func:`napari_glimpse.runtime.fit.fit` for the files written, ``resume`` and ``init``.
    """
    return (yield from fit(METHOD, AttentionGridTrainer, config or AttentionGridConfig(), train_dir, out,
                           val_dir=val_dir, resume=resume, init=init, device=device or "auto", seed=seed))
