"""The one training loop: a generator of :class:`Progress` that returns the best checkpoint's path.

A method subclasses :class:`Trainer` with what is its own (reading the data, the model and
optimizer, one epoch, validation); :func:`fit` owns the rest: device and process group,
seeding, ``init`` and ``resume``, the best / last checkpoints, the epoch events and history.

Files written next to ``out`` (atomically, every epoch; rank 0 only under torchrun)::

    out                           the best epoch so far (validation score; without validation
                                  data, the lowest training loss)
    <out stem>.last.safetensors   the latest epoch, with optimizer / scheduler / RNG state

Reproducibility: a trainer draws the randomness of epoch ``e`` from generators seeded with
``(seed, e)``; weights, optimizer, scheduler, torch's RNG and :meth:`Trainer.state` are restored
bit for bit, so ``resume=True`` after an interruption (a kill, a cancelled generator) gives the
same weights as an uninterrupted run on the same machine and thread count.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Generator
from pathlib import Path

import torch

from ..errors import CheckpointError, GlimpseError
from .checkpoint import load_checkpoint, load_state_checked, save_checkpoint
from .device import resolve_device
from .distributed import DistContext, from_env, process_group
from .events import Progress

__all__ = ["Trainer", "fit", "last_path"]


def last_path(out: str | os.PathLike) -> Path:
    """Where the resumable latest-epoch checkpoint of ``out`` lives."""
    out = Path(out)
    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    return out.with_name(f"{stem}.last.safetensors")


class Trainer:
    """What a method brings to :func:`fit`: its data, model, optimizer, epoch and validation.

    Subclasses set ``self.model``, ``self.optimizer`` and ``self.scheduler`` (or None) in
    :meth:`setup`. Every epoch is a fresh call of :meth:`train_epoch`; its randomness must come
    from ``(seed, epoch)`` (or torch's global generator, which fit restores on resume) so that
    resumed runs repeat it.

    Parameters
    ----------
    config : dataclass
        The method's config; :func:`fit` reads ``epochs`` and ``mpp``.
    train_dir, val_dir : path-like or None
        The training and (optional) validation data.
    device : torch.device
        Where this process trains (under torchrun: this rank's GPU).
    ctx : DistContext
        This process's place in a torchrun job (rank 0 of 1 outside one).
    seed : int
        Seed of every random draw of the run.
    """

    #: whether the trainer runs under torchrun (fit refuses torchrun otherwise)
    supports_ddp: bool = False
    #: under torchrun, True: fit wraps the model in DistributedDataParallel (equal shares of a
    #: patch batch); False: the trainer splits each step's items itself and sums the gradients
    #: with ``ctx.sync_grads(model)`` before every optimiser step (slides, fields or tree levels:
    #: shares that may be uneven or empty), and fit averages the batch-norm statistics after
    #: each epoch
    ddp_wrap: bool = True
    #: class names stored in the checkpoint header
    classes: tuple[str, ...] = ("normal", "tumour")

    def __init__(self, config, train_dir, val_dir, device: torch.device, ctx: DistContext, seed: int):
        self.config = config
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.device = device
        self.ctx = ctx
        self.seed = seed
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None

    def setup(self) -> Generator[Progress, None, None]:
        """Read the data; build ``self.model``, ``self.optimizer`` and ``self.scheduler``."""
        raise NotImplementedError

    def train_epoch(self, epoch: int, net) -> Generator[Progress, None, dict]:
        """Train epoch ``epoch`` (0-based) through ``net`` (the model or its DDP wrapper).

        Returns the epoch's record: plain numbers (and strings) with ``train_loss`` (or ``loss``),
        the score of the best epoch when there is no validation data.
        """
        raise NotImplementedError

    def validate(self, epoch: int) -> Generator[Progress, None, dict | None]:
        """Validation metrics of the model after ``epoch``, with ``score`` (higher is better)
        and the metrics to record (``val_loss``, ``val_auc``, ...); None without validation data.
        Runs on rank 0 only."""
        return None
        yield  # pragma: no cover - makes this a generator

    def may_be_best(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) may become the best checkpoint (e.g. not in a warm-up)."""
        return True

    def epoch_note(self, record: dict) -> str:
        """Words after "epoch e/n" in the epoch event, e.g. ``" (warm-up C)"``."""
        return ""

    def data_summary(self) -> dict:
        """What was trained on, for the header's ``training`` field."""
        return {}

    def state(self) -> dict:
        """Further JSON state this trainer needs to resume (stored in the last checkpoint)."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""

    def close(self) -> None:
        """Release the data (open slides, ...); called also when the run fails or is cancelled."""


def _is_better(score: float, best: dict | None) -> bool:
    # a NaN score (e.g. an AUC over one class) never displaces a real one; a NaN best is displaced
    if best is None:
        return True
    if math.isnan(score):
        return False
    return math.isnan(best["score"]) or score > best["score"]


def _restore_scheduler(scheduler, saved: dict, epoch: int) -> None:
    fresh = scheduler.state_dict()
    if "base_lrs" in fresh and "base_lrs" not in saved:
        # a header from before this loop (CELNet stored milestones, gamma, last_epoch): an
        # epoch-stepped schedule needs only its epoch; the lr itself lives in the optimizer
        scheduler.last_epoch = int(saved.get("last_epoch", epoch))
        return
    state = dict(saved)
    for key, value in fresh.items():
        # JSON made int dict keys strings (MultiStepLR's milestone Counter): give them back
        if isinstance(value, dict) and isinstance(state.get(key), dict):
            restored = {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v
                        for k, v in state[key].items()}
            state[key] = collections.Counter(restored) if isinstance(value, collections.Counter) else restored
    scheduler.load_state_dict(state)


def fit(
    method: str,
    trainer_cls: type[Trainer],
    config,
    train_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_dir: str | os.PathLike | None = None,
    resume: bool = False,
    init: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    seed: int = 0,
) -> Generator[Progress, None, str]:
    """Train ``trainer_cls`` for ``config.epochs`` epochs; yields Progress, returns ``out``.

    Parameters
    ----------
    method : str
        Registry name, stored in the checkpoints (``init`` / ``resume`` refuse another method's).
    trainer_cls : type[Trainer]
        The method's trainer.
    config : dataclass
        The method's config (``epochs``, ``mpp`` and whatever the trainer reads).
    train_dir, val_dir : path-like
        Training and (optional) validation data, as the trainer reads them.
    out : path-like
        Best checkpoint; ``last_path(out)`` holds the latest epoch for ``resume``.
    resume : bool
        Continue from ``last_path(out)`` when it exists (else start afresh).
    init : path-like, optional
        Start from the weights of this checkpoint (same method and architecture) with a fresh
        optimizer and schedule: fine-tuning. Ignored when resuming.
    device : str or torch.device
        ``"auto"`` (CUDA, MPS, CPU), ``"cpu"``, ``"cuda:1"``, ...
    seed : int
        Seed of the initial weights and every epoch's randomness.

    Yields ``"resume"`` once when resuming and ``"epoch"`` after every epoch, with the epoch's
    record (``train_loss``, ``val_auc``, ...) as metrics, between the trainer's own events.
    Under ``torchrun`` (a trainer with ``supports_ddp``) every rank trains on its share of each
    step (through DistributedDataParallel, or the trainer's own gradient sums) and rank 0 alone
    validates and writes.

    Raises
    ------
    GlimpseError
        Under torchrun for a trainer without DDP support.
    CheckpointError
        ``resume`` with a best checkpoint but no ``.last`` companion; an ``init`` checkpoint of
        another method or architecture; no best checkpoint written (resumed after the end).
    """
    if from_env().enabled and not trainer_cls.supports_ddp:
        # N copies of a single-process loop would each write ``out``
        raise GlimpseError(f"{method} training runs in one process; start it without torchrun")
    out = Path(out)
    last = last_path(out)
    if resume and not last.exists() and out.exists():
        raise CheckpointError("cannot resume: this best checkpoint has no '.last' companion", out)
    resuming = resume and last.exists()
    with process_group(resolve_device(device)) as (ctx, dev):
        trainer = trainer_cls(config, train_dir, val_dir, dev, ctx, seed)
        try:
            return (yield from _loop(method, trainer, out, last, resuming, init, ctx, dev, seed))
        finally:
            trainer.close()


def _loop(method, trainer: Trainer, out: Path, last: Path, resuming: bool, init, ctx: DistContext, dev, seed):
    config = trainer.config
    torch.manual_seed(seed)  # the initial weights
    yield from trainer.setup()
    model, optimizer, scheduler = trainer.model, trainer.optimizer, trainer.scheduler
    start, best, history = 0, None, []
    if init is not None and not resuming:
        load_state_checked(model, load_checkpoint(init, expected_method=method))
    if resuming:
        ckpt = load_checkpoint(last, expected_method=method)
        load_state_checked(model, ckpt)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        if scheduler is not None:
            _restore_scheduler(scheduler, ckpt.header.get("scheduler") or {}, ckpt.epoch)
        if "torch" in ckpt.rng_state:
            torch.set_rng_state(ckpt.rng_state["torch"])
        trainer.load_state(ckpt.header.get("trainer") or {})
        start, best = ckpt.epoch, ckpt.header.get("best")
        history = list(ckpt.header.get("history", []))
        yield Progress("resume", start, config.epochs, f"resumed from {last} at epoch {start}")

    net = model  # what the training steps call: the DDP wrapper under torchrun
    if ctx.enabled and trainer.ddp_wrap:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    elif ctx.enabled:
        ctx.broadcast_module(model)  # every rank starts from rank 0's weights

    summary = {**trainer.data_summary(), "seed": seed, "device": str(dev), "world_size": ctx.world_size,
               "init": str(init) if init is not None else None}
    for epoch in range(start, config.epochs):
        record = yield from trainer.train_epoch(epoch, net)
        if ctx.enabled and not trainer.ddp_wrap:
            ctx.check_in_step(model)
            ctx.average_buffers(model)
        record = {"epoch": epoch + 1, **record}
        title = f"epoch {epoch + 1}/{config.epochs}{trainer.epoch_note(record)}"
        if not ctx.is_main:  # rank 0 validates and writes; the others go on to the next epoch
            yield Progress("epoch", epoch + 1, config.epochs, title, _numbers(record))
            continue
        metrics = yield from trainer.validate(epoch)
        if metrics is not None:
            metrics = dict(metrics)
            score = float(metrics.pop("score"))
            record.update(metrics)
        else:
            score = -float(record["train_loss"] if "train_loss" in record else record["loss"])
        history.append(record)
        improved = trainer.may_be_best(epoch) and _is_better(score, best)
        if improved:
            best = {"epoch": epoch + 1, "score": score}
        header = {
            "classes": list(trainer.classes), "mpp": float(config.mpp), "epoch": epoch + 1,
            "training": summary, "metrics": record, "history": history, "best": best,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
        }
        extra = trainer.state()
        save_checkpoint(last, method=method, config=config, model_state=model.state_dict(),
                        header={**header, "trainer": extra} if extra else header,
                        optimizer_state=optimizer.state_dict(), rng_state={"torch": torch.get_rng_state()})
        if improved:
            save_checkpoint(out, method=method, config=config, model_state=model.state_dict(), header=header)
        yield Progress("epoch", epoch + 1, config.epochs, title + (" (best)" if improved else ""), _numbers(record))
    ctx.barrier()  # the other ranks return once rank 0 has written the last checkpoint
    if not out.exists():  # resumed after the last epoch, or no epoch past a warm-up
        raise CheckpointError("training finished but no best checkpoint was written", out)
    return str(out)


def _numbers(record: dict) -> dict:
    """The record's numbers (what the GUI draws as curves), without strings and Nones."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}
