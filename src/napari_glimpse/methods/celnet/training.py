"""CELNet training (a patch classifier driven by :func:`napari_glimpse.runtime.fit.fit`) and
patch-folder evaluation.

Training: SGD with Nesterov momentum, a MultiStepLR schedule, BCE on the main output plus
``aux_loss_weight`` x BCE on each deep-supervision companion, random rotations / flips and
colour jitter. Epoch ``e`` draws its patch order and augmentation from a generator seeded with
``(seed, e)``. Under torchrun every global batch is split between the ranks (DDP).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import DatasetError
from ...evaluate import roc_auc
from ...runtime.augment import augment_batch, dihedral
from ...runtime.data import PatchFolder, iterate_patch_folder
from ...runtime.device import autocast, resolve_device, run_in_chunks
from ...runtime.events import Progress
from ...runtime.fit import Trainer, fit
from ...runtime.regions import to_tensor
from .config import CELNetConfig
from .model import build_model

__all__ = ["CELNetTrainer", "train_celnet", "evaluate", "deep_supervision_loss"]

METHOD = "celnet"


def deep_supervision_loss(outputs: dict, target: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """BCE on ``outputs["logit"]`` plus ``aux_weight`` x BCE on every ``aux*`` companion logit."""
    loss = F.binary_cross_entropy_with_logits(outputs["logit"].float(), target)
    for key, value in outputs.items():
        if key.startswith("aux"):
            loss = loss + aux_weight * F.binary_cross_entropy_with_logits(value.float(), target)
    return loss


def _main_bce(outputs: dict, target: torch.Tensor) -> float:
    """BCE of the main output alone, logged next to the objective (what val_loss measures)."""
    with torch.no_grad():
        return F.binary_cross_entropy_with_logits(outputs["logit"].float(), target).item()


def _predict(model, data: PatchFolder, device, batch_size: int, stage: str, tta: bool = False) -> Iterator[Progress]:
    """Probabilities and mean loss over a folder (eval mode); returns (probs, loss).

    ``tta`` averages the probabilities of the 8 rotations / flips of every patch (test-time
    augmentation; 8x the cost).
    """
    ops = range(8) if tta else (0,)
    model.eval()
    n = len(data)
    probs = np.empty(n, dtype=np.float64)
    total_loss = 0.0
    n_batches = math.ceil(n / batch_size)
    with torch.inference_mode():
        for b in range(n_batches):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n)

            def run(s, e, lo=lo):
                x = to_tensor(data.images[lo + s : lo + e], device)
                p = 0.0
                with autocast(device):
                    for op in ops:
                        xo = dihedral(x, op).contiguous(memory_format=torch.channels_last)
                        p = p + torch.sigmoid(model(xo)["logit"].float())
                return p / len(ops)

            parts, _ = run_in_chunks(run, hi - lo, hi - lo)
            prob = torch.cat(parts).cpu().double()
            target = torch.from_numpy(data.labels[lo:hi]).double()
            total_loss += F.binary_cross_entropy(prob.clamp(1e-7, 1 - 1e-7), target, reduction="sum").item()
            probs[lo:hi] = prob.numpy()
            yield Progress(stage, b + 1, n_batches, f"{stage} {hi}/{n} patches")
    return probs, total_loss / max(n, 1)


def _metrics(labels: np.ndarray, probs: np.ndarray, loss: float, threshold: float = 0.5) -> dict:
    """Accuracy at ``threshold``, AUC, loss, and the patch threshold of highest sensitivity +
    specificity on these patches (what to store as the patch threshold when they are validation)."""
    from ...calls import choose_threshold

    both = len(np.unique(labels)) > 1
    return {
        "n": int(len(labels)),
        "accuracy": float(np.mean((probs >= threshold) == labels.astype(bool))),
        "threshold": float(threshold),
        "auc": roc_auc(labels, probs),
        "loss": float(loss),
        "youden_threshold": choose_threshold(labels, probs, "youden") if both else None,
    }


def _load_folder(root, workers: int, limit: int, seed: int, what: str) -> Iterator[Progress]:
    data = yield from iterate_patch_folder(root, workers=workers, limit=limit or None, seed=seed)
    if len(np.unique(data.labels)) < 2:
        raise DatasetError(f"{what} data holds only one class", root)
    return data


class CELNetTrainer(Trainer):
    """CELNet on patch folders with class sub-folders ``0/`` (normal) and ``1/`` (tumour).

    Reads ``lr, momentum, weight_decay, batch_size, epochs, lr_milestones, lr_gamma, augment,
    color_jitter, aux_loss_weight, threshold, epoch_size, val_limit, workers`` from the config.
    A batch that runs out of memory is split into micro-batches (gradient accumulation, see
    :func:`~napari_glimpse.runtime.device.run_in_chunks`); under DDP it fails instead, since
    every rank must run the same number of backward passes.
    """

    supports_ddp = True

    def setup(self) -> Generator[Progress, None, None]:
        cfg, ctx = self.config, self.ctx
        self.train_data = yield from _load_folder(self.train_dir, cfg.workers, 0, self.seed, "training")
        self.val_data = None
        if self.val_dir is not None and ctx.is_main:
            self.val_data = yield from _load_folder(self.val_dir, cfg.workers, cfg.val_limit, self.seed, "validation")
        self.model, self.optimizer, self.scheduler = self.build()

        n = len(self.train_data)
        self.per_epoch = min(cfg.epoch_size or n, n)
        self.n_batches = math.ceil(self.per_epoch / cfg.batch_size)
        if ctx.enabled and self.per_epoch % cfg.batch_size and self.per_epoch % cfg.batch_size < ctx.world_size:
            self.n_batches -= 1  # a last batch too small to give every rank a patch (DDP needs all of them)
        if self.n_batches < 1:
            raise DatasetError(f"{self.per_epoch} training patches cannot be split over {ctx.world_size} processes",
                               self.train_dir)
        self.micro = cfg.batch_size  # shrinks for good after an out-of-memory

    def build(self):
        """The model (on the device, channels-last), its optimiser and its schedule; a
        subclass training another patch classifier on the same loop replaces this."""
        cfg = self.config
        model = build_model(cfg).to(self.device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                    weight_decay=cfg.weight_decay)
        milestones = sorted({max(1, round(f * cfg.epochs)) for f in cfg.lr_milestones})
        return model, optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.lr_gamma)

    def data_summary(self) -> dict:
        return {"train": self.train_data.summary(), "val": self.val_data.summary() if self.val_data else None,
                "epoch_size": self.per_epoch}

    def train_epoch(self, epoch: int, net) -> Generator[Progress, None, dict]:
        cfg, ctx, dev, data = self.config, self.ctx, self.device, self.train_data
        t0 = time.time()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(data), generator=gen)[: self.per_epoch].numpy()
        self.model.train()
        running, running_bce, seen = 0.0, 0.0, 0
        for b in range(self.n_batches):
            idx = ctx.shard(np.sort(order[b * cfg.batch_size : (b + 1) * cfg.batch_size]))
            x = to_tensor(data.images[idx], dev)
            if cfg.augment:
                x = augment_batch(x, gen, cfg.color_jitter).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(data.labels[idx]).float().to(dev)
            self.optimizer.zero_grad(set_to_none=True)

            def step(s, e, x=x, y=y):
                with autocast(dev):
                    out = net(x[s:e])
                    loss = deep_supervision_loss(out, y[s:e], getattr(cfg, "aux_loss_weight", 0.0))
                (loss * (e - s) / len(y)).backward()
                return loss.item() * (e - s), _main_bce(out, y[s:e]) * (e - s)

            losses, self.micro = run_in_chunks(step, len(y), self.micro, min_chunk=self.micro if ctx.enabled else 1)
            self.optimizer.step()
            running += sum(t for t, _ in losses)
            running_bce += sum(m for _, m in losses)
            seen += len(y)
            yield Progress("train", b + 1, self.n_batches, f"epoch {epoch + 1}/{cfg.epochs}",
                           {"loss": running / seen, "lr": self.optimizer.param_groups[0]["lr"]})
        self.scheduler.step()
        running, running_bce, seen = ctx.all_reduce_sum(running, running_bce, seen)
        # train_loss is the training objective (with deep supervision: main + companion losses);
        # train_bce is the main output's BCE alone, the quantity val_loss measures
        return {"train_loss": running / max(seen, 1), "train_bce": running_bce / max(seen, 1),
                "patches": int(seen), "seconds": time.time() - t0}

    def validate(self, epoch: int) -> Generator[Progress, None, dict | None]:
        if self.val_data is None:
            return None
        probs, loss = yield from _predict(self.model, self.val_data, self.device, max(self.config.batch_size, 64),
                                          "validate")
        m = _metrics(self.val_data.labels, probs, loss, self.config.threshold)
        return {"score": m["auc"], "val_loss": m["loss"], "val_accuracy": m["accuracy"], "val_auc": m["auc"]}


def train_celnet(
    train_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_dir: str | os.PathLike | None = None,
    config: CELNetConfig | None = None,
    resume: bool = False,
    device: str | None = "auto",
    seed: int = 0,
    init: str | os.PathLike | None = None,
) -> Generator[Progress, None, str]:
    """Train CELNet on patch folders (``0/`` normal, ``1/`` tumour); yields Progress, returns ``out``.

    Epochs, learning rate, batch size, ``epoch_size``, ``val_limit`` and ``workers`` are config
    fields. ``init`` starts from a CELNet checkpoint's weights (fine-tuning). See
    :func:`napari_glimpse.runtime.fit.fit` for the files written and ``resume``.
    """
    return (yield from fit(METHOD, CELNetTrainer, config or CELNetConfig(), train_dir, out, val_dir=val_dir,
                           resume=resume, init=init, device=device or "auto", seed=seed))


def evaluate(model, data_dir: str | os.PathLike, *, device: str = "auto", batch_size: int = 128,
             workers: int = 0, limit: int | None = None, threshold: float = 0.5,
             tta: bool = False) -> Iterator[Progress]:
    """Accuracy, AUC and loss of ``model`` on a patch folder; yields progress, returns a dict.

    ``tta``: average over the 8 rotations / flips of each patch.
    """
    dev = resolve_device(device)
    data = yield from iterate_patch_folder(data_dir, workers=workers, limit=limit)
    model = model.to(dev).to(memory_format=torch.channels_last)
    probs, loss = yield from _predict(model, data, dev, batch_size, "evaluate", tta=tta)
    return {**_metrics(data.labels, probs, loss, threshold), "tta": bool(tta)}


