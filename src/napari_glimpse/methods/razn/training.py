"""RAZN training on annotated images (Algorithm 1), driven by :func:`napari_glimpse.runtime.fit.fit`.

Each step reads ``batch_size`` fields at every zoom scale (threads decode them), cuts each scale
into its tiles (tile k of level i + 1 is a child of tile k // r^2 of level i), and computes the
per-tile cross entropy J_i of every level's network. At level i < m the policy samples
a ~ Bernoulli(p~); the reward is R = a (J_i - J_zoom) / J_i (J_zoom: the mean J of the r^2
children), the policy loss -R log(a p~ + (1 - a)(1 - p~)); f_theta_{i+1} learns from the
children of tiles that zoomed and f_theta_i from tiles that broke. For m = 1 this is exactly
Algorithm 1; for m > 1 every level's tiles are used whether or not their parent zoomed.

Validation: a fixed set of fields (seeded) segmented greedily; the score is the mean IoU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ...errors import DatasetError
from ...runtime.events import Progress
from ...runtime.fit import Trainer, fit
from ...runtime.regions import to_tensor
from .config import RAZNConfig
from .data import discover, field_px, label_crop, open_sources, read_field, tissue_tiles
from .model import build_model, split_tiles, tile_ce

__all__ = ["RAZNTrainer", "train", "draw_fields", "level_tiles", "razn_losses", "READ_THREADS", "iou_table", "confusion_counts"]

METHOD = "razn"
READ_THREADS = 4


def draw_fields(sources, tiles, config: RAZNConfig, rng: np.random.Generator, n: int) -> list[tuple[int, float, float]]:
    """``n`` (source, x0, y0) fields: ``foreground_fraction`` centred near a pixel of a class
    other than 0, the rest at a random place in a random tissue tile."""
    out = []
    for _ in range(n):
        s = int(rng.integers(len(sources)))
        src = sources[s]
        fpx = field_px(config, src.mpp0)
        if len(src.foreground) and rng.random() < config.foreground_fraction:
            r, c = src.foreground[int(rng.integers(len(src.foreground)))]
            cx, cy = (c + 0.5) * src.label_ds, (r + 0.5) * src.label_ds
            x0, y0 = cx - fpx * rng.uniform(0.2, 0.8), cy - fpx * rng.uniform(0.2, 0.8)
        elif len(tiles[s]):
            tx, ty = tiles[s][int(rng.integers(len(tiles[s])))]
            x0, y0 = tx + fpx * rng.uniform(-0.5, 0.5), ty + fpx * rng.uniform(-0.5, 0.5)
        else:
            w, h = src.slide.dimensions
            x0, y0 = rng.uniform(0, max(w - fpx, 1)), rng.uniform(0, max(h - fpx, 1))
        out.append((s, float(x0), float(y0)))
    return out


def _augment(images, labels, k: int, flip: bool):
    f = (lambda a: a[:, ::-1]) if flip else (lambda a: a)
    return ([np.ascontiguousarray(np.rot90(f(a), k)) for a in images],
            [np.ascontiguousarray(np.rot90(f(a), k)) for a in labels])


def read_batch(sources, fields, config, pool, turns=None):
    """Images and labels per level as tensors: xs[i] (B, 3, T r^i, T r^i), ys[i] (B, T r^i, T r^i).

    ``turns``: one (quarter turns, flip) per field, or None (as read).
    """
    reads = list(pool.map(lambda f: read_field(sources[f[0]], config, f[1], f[2]), fields))
    if turns is not None:
        reads = [_augment(im, lb, *t) for (im, lb), t in zip(reads, turns, strict=True)]
    m = config.zoom_levels
    xs = [to_tensor(np.stack([r[0][i] for r in reads])) for i in range(m + 1)]
    ys = [torch.from_numpy(np.stack([r[1][i] for r in reads]).astype(np.int64)) for i in range(m + 1)]
    return xs, ys


def level_tiles(x: torch.Tensor, level: int, r: int) -> torch.Tensor:
    """The tiles of a level-``level`` field batch in tree order (children of tile k at k r^2 ...)."""
    for _ in range(level):
        x = split_tiles(x, r)
    return x


def razn_losses(net, xs, ys, config: RAZNConfig, generator=None, decide=None) -> tuple[torch.Tensor, dict]:
    """The training loss of one batch (policy gradient + the alternating segmentation losses)."""
    r, m = config.zoom_rate, config.zoom_levels
    J = []
    for i in range(m + 1):
        t = level_tiles(xs[i], i, r)
        y = level_tiles(ys[i][:, None].float(), i, r)[:, 0].long()
        J.append(tile_ce(net.segs[i](t), y))
    total = torch.zeros((), device=xs[0].device)
    parts: dict = {}
    weights = [torch.zeros_like(j) for j in J]
    for i in range(m):
        tiles = level_tiles(xs[i], i, r)
        pt = net.p_tilde(i, tiles)
        a = decide(pt) if decide is not None else torch.bernoulli(pt.detach(), generator=generator)
        j_zoom = J[i + 1].detach().reshape(-1, r * r).mean(1)
        j0 = J[i].detach()
        reward = a * (j0 - j_zoom) / j0.clamp_min(1e-6)
        logp = torch.log(a * pt + (1 - a) * (1 - pt))
        total = total - (reward * logp).mean()
        weights[i] = weights[i] + (1 - a)
        weights[i + 1] = weights[i + 1] + a.repeat_interleave(r * r)
        parts[f"zoom_rate{i}"] = float(a.mean())
        parts[f"reward{i}"] = float(reward.mean())
    for i in range(m + 1):
        total = total + (weights[i] * J[i]).mean()
        parts[f"J{i}"] = float(J[i].detach().mean())
    return total, parts


def confusion_counts(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) pixel counts, row = true class, column = predicted (bincount: fast on many pixels)."""
    t = np.asarray(truth, np.int64).ravel()
    p = np.asarray(pred, np.int64).ravel()
    return np.bincount(t * n + p, minlength=n * n)[: n * n].reshape(n, n)


def iou_table(cm: np.ndarray) -> dict:
    """Per-class IoU, mean IoU (classes in truth or prediction) and frequency-weighted IoU."""
    from ...evaluate import frequency_weighted_iou, iou_per_class, mean_iou

    return {"iou": iou_per_class(cm).tolist(), "miou": mean_iou(cm), "fwiou": frequency_weighted_iou(cm)}


class RAZNTrainer(Trainer):
    """RAZN on folders of annotated images; sets ``classes`` on the config the checkpoints store.

    Under torchrun the fields of every batch are split between the ranks (each rank's batch
    norm sees its share, as under DistributedDataParallel); rank 0 alone reads the validation
    images.
    """

    supports_ddp = True
    ddp_wrap = False

    #: (p~) -> actions; None samples a ~ Bernoulli(p~) (the method). Baselines override it.
    decide = None
    #: the inference policy whose validation mean IoU picks the best epoch
    val_mode = "greedy"

    def setup(self) -> Generator[Progress, None, None]:
        cfg = self.config
        items, classes, self.binary = discover(self.train_dir)
        if not cfg.classes:
            cfg.classes = classes
        self.classes = tuple(cfg.classes)
        yield Progress("setup", 0, 1, f"{len(items)} training images, classes {', '.join(cfg.classes)}")
        self.sources = open_sources(items, cfg, binary=self.binary, n_classes=cfg.n_classes)
        self.tiles = [tissue_tiles(s.slide, field_px(cfg, s.mpp0)) for s in self.sources]
        self.val_sources = (open_sources(discover(self.val_dir)[0], cfg, binary=self.binary, n_classes=cfg.n_classes)
                            if self.val_dir is not None and self.ctx.is_main else [])
        if self.val_sources:
            vt = [tissue_tiles(s.slide, field_px(cfg, s.mpp0)) for s in self.val_sources]
            self.val_fields = draw_fields(self.val_sources, vt, cfg, np.random.default_rng(12345),
                                          max(32, min(256, cfg.tiles_per_epoch // 4)))
        if not any(len(s.foreground) for s in self.sources):
            raise DatasetError("the training annotations hold only class 0", self.train_dir)
        self.pool = ThreadPoolExecutor(READ_THREADS)
        self.model = build_model(cfg).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.lr_step, gamma=0.1)
        yield Progress("setup", 1, 1, f"{len(self.sources)} training, {len(self.val_sources)} validation images")

    def data_summary(self) -> dict:
        return {"train": str(self.train_dir), "train_images": len(self.sources), "classes": list(self.classes),
                "val_images": len(self.val_sources)}

    def train_epoch(self, epoch: int, net) -> Generator[Progress, None, dict]:
        cfg, ctx = self.config, self.ctx
        t0 = time.time()
        rng = np.random.default_rng([self.seed, epoch])
        # the zoom actions' draws: one stream per rank (a rank's share of a batch is its own)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)) + 7919 * ctx.rank)
        fields = draw_fields(self.sources, self.tiles, cfg, rng, cfg.tiles_per_epoch)
        rest = len(fields) % cfg.batch_size
        if rest and rest < 2 * ctx.world_size and len(fields) > cfg.batch_size:
            # a last batch that would leave a rank one field: the zoom policy's batch norm needs two
            fields = fields[: len(fields) - rest]
        self.model.train()
        steps = max(1, int(np.ceil(len(fields) / cfg.batch_size)))
        total, sums, done = 0.0, {}, 0
        for k in range(steps):
            batch = fields[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            # under torchrun each rank takes every N-th field of the batch; its mean loss is
            # weighted by its share, and the summed gradients are the whole batch's
            mine = ctx.shard(range(len(batch)))
            # every rank draws the whole batch's augmentation: one process's draws, whatever N
            turns = [(int(rng.integers(4)), bool(rng.integers(2))) for _ in batch] if cfg.augment else None
            self.optimizer.zero_grad(set_to_none=True)
            if len(mine):
                xs, ys = read_batch(self.sources, [batch[i] for i in mine], cfg, self.pool,
                                    turns and [turns[i] for i in mine])
                xs, ys = [x.to(self.device) for x in xs], [y.to(self.device) for y in ys]
                loss, parts = razn_losses(net, xs, ys, cfg, generator=gen if self.device.type == "cpu" else None,
                                          decide=self.decide)
                (loss * len(mine) / len(batch)).backward()
                total += float(loss.detach()) * len(mine)
                done += len(mine)
                for key, v in parts.items():
                    sums[key] = sums.get(key, 0.0) + v * len(mine)
            ctx.sync_grads(self.model)
            self.optimizer.step()
            self.scheduler.step()
            yield Progress("train", k + 1, steps, f"epoch {epoch + 1}/{cfg.epochs}", {"loss": total / max(done, 1)})
        keys = [f"{name}{i}" for i in range(cfg.zoom_levels) for name in ("zoom_rate", "reward")]
        keys += [f"J{i}" for i in range(cfg.zoom_levels + 1)]  # what razn_losses reports, on every rank
        total, done, *vals = ctx.all_reduce_sum(total, done, *(sums.get(key, 0.0) for key in keys))
        n = max(done, 1)
        return {"train_loss": total / n, **{key: v / n for key, v in zip(keys, vals, strict=True)},
                "fields": int(done), "seconds": time.time() - t0}

    def validate(self, epoch: int) -> Generator[Progress, None, dict | None]:
        if not self.val_sources:
            return None
        from .api import segment_fields

        cfg = self.config
        self.model.eval()
        c = cfg.n_classes
        cms = {mode: np.zeros((c, c), np.int64) for mode in ("greedy", "never", "always")}
        zoomed = 0
        bs = cfg.batch_size
        with torch.no_grad():
            for k in range(0, len(self.val_fields), bs):
                batch = self.val_fields[k : k + bs]
                tf = cfg.tile_px * cfg.zoom_rate ** cfg.zoom_levels
                truth = np.stack([label_crop(self.val_sources[s], x, y, tf) for s, x, y in batch])
                for mode in cms:
                    labels, dec, _ = segment_fields(self.model, cfg, [(self.val_sources[s], x, y) for s, x, y in batch],
                                                    mode, self.device, pool=self.pool)
                    cms[mode] += confusion_counts(truth, labels, c)
                    if mode == "greedy":
                        zoomed += int(sum(d["zoom"] for d in dec if d["level"] == 0))
                yield Progress("validate", min(k + bs, len(self.val_fields)), len(self.val_fields), "validation fields")
        t = {mode: iou_table(cm) for mode, cm in cms.items()}
        return {"score": t[self.val_mode]["miou"], "val_miou": t["greedy"]["miou"], "val_fwiou": t["greedy"]["fwiou"],
                "val_miou_scale1": t["never"]["miou"], "val_miou_finest": t["always"]["miou"],
                "val_zoom_rate": zoomed / max(len(self.val_fields), 1)}


def train(
    train_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_dir: str | os.PathLike | None = None,
    config: RAZNConfig | None = None,
    resume: bool = False,
    device: str | None = "auto",
    seed: int = 0,
    init: str | os.PathLike | None = None,
    trainer: type = RAZNTrainer,
) -> Generator[Progress, None, str]:
    """Train a RAZN on folders of annotated images; yields Progress, returns ``out``."""
    return (yield from fit(METHOD, trainer, config or RAZNConfig(), train_dir, out,
                           val_dir=val_dir, resume=resume, init=init, device=device or "auto", seed=seed))
