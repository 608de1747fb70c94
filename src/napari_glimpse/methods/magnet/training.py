"""MagNet training on slide-labelled folders, driven by :func:`napari_glimpse.runtime.fit.fit`.

Slides are read on the fly: every step opens the slide, samples the fields the current
weights select (each layer's sibling fields decoded by a thread pool: what a layer reads
depends on the layer before, so no loader can read ahead) and closes it; nothing is cached
between epochs. One slide per forward pass, the gradients of ``batch_size`` slides summed per
Adam step (the paper's batch), the learning rate cosine-annealed over the epochs. Epoch ``e``
draws its slide order and its flips / 90-degree turns from ``(seed, e)``. Validation gives the
slide AUC; its threshold (``threshold_rule``) goes into the checkpoint.

The encoders' batch-norm statistics stay frozen (eval mode) during training: their batches are
the 2-18 patches of one slide.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator

import numpy as np
import torch

from ...calls import choose_threshold
from ...errors import DatasetError
from ...evaluate import roc_auc
from ...runtime.data import find_slides
from ...runtime.distributed import item_steps
from ...runtime.events import Progress
from ...runtime.fit import Trainer, fit
from ...slides import open_slide
from .config import MagNetConfig
from .model import build_model, loss_part_names, magnet_loss
from .sampling import TURNS, PyramidReader

__all__ = ["MagNetTrainer", "train", "labelled_slides", "run_slide", "READ_THREADS"]

METHOD = "magnet"
#: threads decoding one layer's crops
READ_THREADS = 4


def labelled_slides(folder, config: MagNetConfig) -> list:
    """The slides of ``folder`` with a 0 / 1 label in ``config.labels``."""
    items = find_slides(folder, need="labels", binary=True, labels=config.labels)
    return [i for i in items if i.label is not None]


def run_slide(net, path, config: MagNetConfig, device, *, turn=None, with_aux=False, region=None,
              sampler: str | None = None) -> tuple[dict, dict]:
    """One forward pass of ``net`` on the slide at ``path`` (or an open slide): (output, read counts)."""
    own = not hasattr(path, "read_level_box")
    slide = open_slide(path) if own else path
    try:
        with PyramidReader(slide, device, sampler or config.sampler, config.grey_threshold, turn=turn,
                           threads=READ_THREADS, region=region) as reader:
            out = net(reader, with_aux=with_aux)
            return out, {"patches_read": reader.reads, "pixels_read": reader.pixels_read}
    finally:
        if own:
            slide.close()


def _freeze_encoder_stats(net) -> None:
    for enc in [net.encoder] + [a.encoder for a in net.aux.values()]:
        for m in enc.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


class MagNetTrainer(Trainer):
    """MagNet on folders of slides with a labels file (``config.labels``).

    Reads every field of :class:`MagNetConfig`; sets ``slide_threshold`` (by ``threshold_rule``,
    per validation) on the config the checkpoints store. Under torchrun the slides of every
    optimiser step are split between the ranks.
    """

    supports_ddp = True
    ddp_wrap = False

    def setup(self) -> Generator[Progress, None, None]:
        cfg = self.config
        self.train_items = labelled_slides(self.train_dir, cfg)
        self.val_items = labelled_slides(self.val_dir, cfg) if self.val_dir is not None and self.ctx.is_main else []
        labels = {int(i.label) for i in self.train_items}
        if len(labels) < 2:
            raise DatasetError(f"training slides hold only one class ({cfg.labels})", self.train_dir)
        self.model = build_model(cfg).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        yield Progress("setup", 1, 1, f"{len(self.train_items)} training, {len(self.val_items)} validation slides")

    def data_summary(self) -> dict:
        pos = sum(int(i.label) for i in self.train_items)
        return {"train": str(self.train_dir), "train_slides": len(self.train_items), "train_positive": pos,
                "val_slides": len(self.val_items), "labels": self.config.labels}

    def train_epoch(self, epoch: int, net) -> Generator[Progress, None, dict]:
        cfg, ctx, items = self.config, self.ctx, self.train_items
        t0 = time.time()
        order = np.random.default_rng([self.seed, epoch]).permutation(len(items))
        self.model.train()
        _freeze_encoder_stats(self.model)
        total, parts_sum, reads, done = 0.0, {}, 0, 0
        # a step is ``batch_size`` slides; under torchrun each rank takes every N-th of them
        for j, size, rng in item_steps(ctx, len(order), cfg.batch_size, self.model, self.optimizer, self.seed, epoch):
            item = items[order[j]]
            turn = TURNS[int(rng.integers(len(TURNS)))] if cfg.augment else None
            out, counts = run_slide(net, item.path, cfg, self.device, turn=turn, with_aux=True)
            loss, parts = magnet_loss(out, int(item.label))
            (loss / size).backward()
            total += float(loss.detach())
            reads += counts["patches_read"]
            done += 1
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            yield Progress("train", j + 1, len(order), f"epoch {epoch + 1}/{cfg.epochs}", {"loss": total / done})
        self.scheduler.step()
        keys = loss_part_names(cfg)  # the same on every rank, also one that had no slide
        total, reads, done, *sums = ctx.all_reduce_sum(total, reads, done, *(parts_sum.get(k, 0.0) for k in keys))
        n = max(done, 1)
        return {"train_loss": total / n, **{k: v / n for k, v in zip(keys, sums, strict=True)}, "slides": int(done),
                "patches_per_slide": reads / n, "seconds": time.time() - t0}

    def validate(self, epoch: int) -> Generator[Progress, None, dict | None]:
        if not self.val_items:
            return None
        cfg = self.config
        self.model.eval()
        scores, losses = [], []
        with torch.no_grad():
            for k, item in enumerate(self.val_items):
                out, _ = run_slide(self.model, item.path, cfg, self.device)
                scores.append(float(torch.softmax(out["logits"], -1)[1]))
                losses.append(float(magnet_loss(out, int(item.label))[0]))
                yield Progress("validate", k + 1, len(self.val_items), f"validation slide {k + 1}")
        labels = np.array([int(i.label) for i in self.val_items])
        auc = roc_auc(labels, scores)
        if len(set(labels)) > 1:
            cfg.slide_threshold = choose_threshold(labels, scores, cfg.threshold_rule)
        return {"score": auc, "val_auc": auc, "val_loss": float(np.mean(losses)), "threshold": cfg.slide_threshold}


def train(
    train_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_dir: str | os.PathLike | None = None,
    config: MagNetConfig | None = None,
    resume: bool = False,
    device: str | None = "auto",
    seed: int = 0,
    init: str | os.PathLike | None = None,
) -> Generator[Progress, None, str]:
    """Train a MagNet on slide folders with ``config.labels``; yields Progress, returns ``out``.

    See :func:`napari_glimpse.runtime.fit.fit` for the files written, ``resume`` and ``init``.
    """
    return (yield from fit(METHOD, MagNetTrainer, config or MagNetConfig(), train_dir, out,
                           val_dir=val_dir, resume=resume, init=init, device=device or "auto", seed=seed))
