"""Generic epoch loop for patch classifiers: a generator of :class:`Progress` that returns the
path of the best checkpoint.

Files written next to ``out`` (all atomically, every epoch)::

    out                    best epoch so far by validation AUC (the training set's when no val)
    <out stem>.last.safetensors   the latest epoch, with optimizer/scheduler/RNG state for resume

Reproducibility: the order of patches and the augmentation of epoch ``e`` come from a
generator seeded with ``(seed, e)``, and the weights, optimizer and scheduler state are
restored bit for bit, so ``resume=True`` after an interruption gives the same weights as an
uninterrupted run on the same machine and thread count.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, DatasetError
from .checkpoint import load_checkpoint, load_state_checked, save_checkpoint
from .datasets import PatchFolder, augment_batch, dihedral, iterate_patch_folder
from .device import autocast, resolve_device, run_in_chunks
from .distributed import DistContext, process_group
from .events import Progress

__all__ = ["train", "evaluate", "roc_auc", "deep_supervision_loss", "last_path"]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank of each run of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    avg = (starts + ends + 1) / 2.0  # ranks are 1-based
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def deep_supervision_loss(outputs: dict, target: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """BCE on ``outputs["logit"]`` plus ``aux_weight`` x BCE on every ``aux*`` companion logit."""
    loss = F.binary_cross_entropy_with_logits(outputs["logit"].float(), target)
    for key, value in outputs.items():
        if key.startswith("aux"):
            loss = loss + aux_weight * F.binary_cross_entropy_with_logits(value.float(), target)
    return loss


def _main_bce(outputs, target: torch.Tensor, loss: torch.Tensor) -> float:
    """BCE of the main output (``outputs["logit"]``) alone, for logging next to the objective;
    the objective itself when the model has no separate main logit."""
    if isinstance(outputs, dict) and "logit" in outputs:
        with torch.no_grad():
            return F.binary_cross_entropy_with_logits(outputs["logit"].float(), target).item()
    return loss.item()


def last_path(out: str | os.PathLike) -> Path:
    """Where the resumable latest-epoch checkpoint of ``out`` lives."""
    out = Path(out)
    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    return out.with_name(f"{stem}.last.safetensors")


def _to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


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
                x = _to_tensor(data.images[lo + s : lo + e], device)
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
    return {
        "n": int(len(labels)),
        "accuracy": float(np.mean((probs >= threshold) == labels.astype(bool))),
        "auc": roc_auc(labels, probs),
        "loss": float(loss),
    }


def _load_folder(root, workers, limit, seed, what) -> Iterator[Progress]:
    data = yield from iterate_patch_folder(root, workers=workers, limit=limit, seed=seed)
    if len(np.unique(data.labels)) < 2:
        raise DatasetError(f"{what} data holds only one class", root)
    return data


def train(
    method: str,
    config,
    build_model: Callable,
    train_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str = "auto",
    seed: int = 0,
    workers: int = 0,
    epoch_size: int | None = None,
    val_limit: int | None = None,
    train_limit: int | None = None,
    loss_fn: Callable | None = None,
    classes: tuple[str, ...] = ("normal", "tumour"),
    init: str | os.PathLike | None = None,
) -> Iterator[Progress]:
    """Train ``build_model(config)`` with SGD (Nesterov) and BCE; yields progress, returns ``out``.

    Parameters
    ----------
    method : str
        Registry name, stored in the checkpoint.
    config : dataclass
        Needs ``lr, momentum, weight_decay, batch_size, epochs, lr_milestones, lr_gamma,
        augment, mpp`` and optionally ``aux_loss_weight``.
    train_dir, val_dir : path-like
        Patch folders with class sub-folders ``0/`` and ``1/``.
    out : path-like
        Best checkpoint; ``last_path(out)`` holds the latest epoch for ``resume``.
    resume : bool
        Continue from ``last_path(out)`` (epoch, weights, optimizer, scheduler) when it exists.
    epoch_size : int, optional
        Patches drawn (without replacement) per epoch; default all. Smaller epochs give more
        frequent validation and checkpoints on slow machines.
    val_limit, train_limit : int, optional
        Class-stratified seeded subsets of the validation / training folders.
    init : path-like, optional
        Start from these weights (a checkpoint of the same method and architecture) with a
        fresh optimizer and schedule: fine-tuning. Ignored when resuming.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks share every batch and average gradients
    (:mod:`.distributed`); rank 0 alone validates and writes ``out``.
    """
    with process_group(resolve_device(device)) as (ctx, dev):
        return (yield from _train(
            method, config, build_model, train_dir, out, val_dir=val_dir, resume=resume, dev=dev, ctx=ctx,
            seed=seed, workers=workers, epoch_size=epoch_size, val_limit=val_limit, train_limit=train_limit,
            loss_fn=loss_fn, classes=classes, init=init,
        ))


def _train(method, config, build_model, train_dir, out, *, val_dir, resume, dev, ctx: DistContext, seed, workers,
           epoch_size, val_limit, train_limit, loss_fn, classes, init=None) -> Iterator[Progress]:
    out = Path(out)
    last = last_path(out)
    if resume and not last.exists() and out.exists():
        raise CheckpointError("cannot resume: this best checkpoint has no '.last' companion", out)
    aux_weight = float(getattr(config, "aux_loss_weight", 0.0))
    color_jitter = float(getattr(config, "color_jitter", 0.0))
    loss_fn = loss_fn or (lambda outputs, target: deep_supervision_loss(outputs, target, aux_weight))

    train_data = yield from _load_folder(train_dir, workers, train_limit, seed, "training")
    val_data = None
    if val_dir is not None and ctx.is_main:
        val_data = yield from _load_folder(val_dir, workers, val_limit, seed, "validation")

    torch.manual_seed(seed)
    model = build_model(config).to(dev).to(memory_format=torch.channels_last)
    net = model  # what the training steps call: the DDP wrapper under torchrun
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    milestones = sorted({max(1, round(f * config.epochs)) for f in config.lr_milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.lr_gamma)
    start_epoch, best, history = 0, None, []
    if init is not None and not (resume and last.exists()):
        load_state_checked(model, load_checkpoint(init, expected_method=method))
    if resume and last.exists():
        ckpt = load_checkpoint(last, expected_method=method)
        load_state_checked(model, ckpt)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        # The optimizer's param groups carry the current lr; the scheduler needs only its epoch.
        scheduler.last_epoch = ckpt.epoch
        start_epoch = ckpt.epoch
        best = ckpt.header.get("best")
        history = list(ckpt.header.get("history", []))
        yield Progress("resume", start_epoch, config.epochs, f"resumed from {last} at epoch {start_epoch}")

    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    n = len(train_data)
    per_epoch = min(epoch_size or n, n)
    n_batches = math.ceil(per_epoch / config.batch_size)
    if ctx.enabled and per_epoch % config.batch_size and per_epoch % config.batch_size < ctx.world_size:
        n_batches -= 1  # a last batch too small to give every rank a patch (DDP needs all of them)
    if n_batches < 1:
        raise DatasetError(f"{per_epoch} training patches cannot be split over {ctx.world_size} processes", train_dir)
    micro = config.batch_size
    summary = {"train": train_data.summary(), "val": val_data.summary() if val_data else None,
               "seed": seed, "epoch_size": per_epoch, "device": str(dev), "world_size": ctx.world_size,
               "init": str(init) if init is not None else None}
    for epoch in range(start_epoch, config.epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)[:per_epoch].numpy()
        model.train()
        running, running_bce, seen = 0.0, 0.0, 0
        for b in range(n_batches):
            idx = ctx.shard(np.sort(order[b * config.batch_size : (b + 1) * config.batch_size]))
            x = _to_tensor(train_data.images[idx], dev)
            if config.augment:
                x = augment_batch(x, gen, color_jitter).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(train_data.labels[idx]).float().to(dev)
            optimizer.zero_grad(set_to_none=True)

            def step(s, e, x=x, y=y):
                with autocast(dev):
                    out = net(x[s:e])
                    loss = loss_fn(out, y[s:e])
                (loss * (e - s) / len(y)).backward()
                return loss.item() * (e - s), _main_bce(out, y[s:e], loss) * (e - s)

            # Under DDP every rank must run the same number of backward passes, so a rank may
            # not shrink its micro-batches alone on out-of-memory: it fails instead of hanging.
            losses, micro = run_in_chunks(step, len(y), micro, min_chunk=micro if ctx.enabled else 1)
            optimizer.step()
            running += sum(t for t, _ in losses)
            running_bce += sum(b for _, b in losses)
            seen += len(y)
            yield Progress(
                "train", b + 1, n_batches, f"epoch {epoch + 1}/{config.epochs}",
                {"loss": running / seen, "lr": optimizer.param_groups[0]["lr"]},
            )
        scheduler.step()
        running, running_bce, seen = ctx.all_reduce_sum(running, running_bce, seen)
        # train_loss is the training objective (with deep supervision: main + companion losses);
        # train_bce is the main output's BCE alone, the quantity val_loss measures
        record = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "train_bce": running_bce / max(seen, 1),
                  "patches": int(seen), "seconds": time.time() - t0}
        if not ctx.is_main:  # rank 0 validates and writes; the others go on to the next epoch
            yield Progress("epoch", epoch + 1, config.epochs, f"epoch {epoch + 1}/{config.epochs}", dict(record))
            continue
        if val_data is not None:
            probs, vloss = yield from _predict(model, val_data, dev, max(config.batch_size, 64), "validate")
            m = _metrics(val_data.labels, probs, vloss, getattr(config, "threshold", 0.5))
            record.update(val_loss=m["loss"], val_accuracy=m["accuracy"], val_auc=m["auc"])
            score = m["auc"]
        else:
            score = -record["train_loss"]
        history.append(record)
        improved = best is None or score > best["score"]
        if improved:
            best = {"epoch": epoch + 1, "score": score}
        header = {
            "classes": list(classes), "mpp": float(config.mpp), "epoch": epoch + 1,
            "training": summary, "metrics": record, "history": history, "best": best,
            "scheduler": {"milestones": milestones, "gamma": config.lr_gamma, "last_epoch": epoch + 1},
        }
        rng = {"torch": torch.get_rng_state()}
        save_checkpoint(last, method=method, config=config, model_state=model.state_dict(), header=header,
                        optimizer_state=optimizer.state_dict(), rng_state=rng)
        if improved:
            save_checkpoint(out, method=method, config=config, model_state=model.state_dict(), header=header)
        yield Progress("epoch", epoch + 1, config.epochs, f"epoch {epoch + 1}/{config.epochs}"
                       + (" (best)" if improved else ""), dict(record))
    ctx.barrier()  # the other ranks return once rank 0 has written the last checkpoint
    if not out.exists():  # resumed after the last epoch had already finished
        raise CheckpointError("training finished but no best checkpoint was written", out)
    return str(out)


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
