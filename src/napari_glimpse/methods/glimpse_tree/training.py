"""Training the glimpse tree, supervised (pixel annotations) or MIL (slide labels).

Schedule (paper, section 2.3 / 3.2): ``warmup_epochs`` of C alone on uniformly sampled
glimpses (supervised: positives and negatives from the annotations; MIL: glimpses anywhere
in the tissue, labelled with their slide's label), then C and the policies alternate by
epoch. A C epoch runs the tree at the current temperature and trains C on the sampled
leaves (supervised: labels from the annotation mask; MIL: the slide label), mixed with as many
glimpses replayed from the warm-up set (MIL replays only glimpses of negative slides, the
only ones whose label is certainly right). A P epoch (``policy_passes`` passes over the
regions, ``policy_branching`` children per glimpse: policy steps are cheap, and more
trajectories give eq. 5 more terms per U-Net pass) runs the tree with gradients through q
and minimises eq. 5: for every root-to-leaf trajectory, the sum over levels of
((K * q_l)(c_{l+1}) - y_hat_leaf)^2 with y_hat C's score. The temperature starts high (near
uniform sampling) and decays by ``temperature_decay`` per alternating epoch down to
``temperature_min``. With ``train_classifier=False`` every epoch is a P epoch and C stays as
``init`` gave it (fine-tuning the policies of a trained tree); with a dense policy target, C's
score maps are then computed once and reused.

The loop, checkpoints and resume are :func:`napari_glimpse.runtime.fit.fit`'s: ``out`` (best
validation slide AUC, warm-up epochs excluded) and ``<stem>.last.safetensors`` (every epoch,
with optimizer / scheduler state). Randomness per epoch comes from generators seeded with
(seed, epoch), so ``resume=True`` continues exactly where an interrupted run stopped.
Under torchrun, see :class:`GlimpseTreeTrainer` for what the ranks share.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Generator

import numpy as np

from ...errors import DatasetError
from ...runtime.events import Progress
from ...runtime.fit import Trainer, fit
from .config import GlimpseTreeConfig

__all__ = ["GlimpseTreeTrainer", "train", "temperature_at"]

METHOD = "glimpse-tree"


def temperature_at(config: GlimpseTreeConfig, epoch: int) -> float:
    """Training temperature of ``epoch`` (0-based): infinite (uniform) during the warm-up."""
    if config.train_classifier and epoch < config.warmup_epochs:
        return float("inf")
    if not config.train_classifier:  # policies only: no warm-up epochs to skip
        return max(config.temperature_min, config.temperature_start * config.temperature_decay ** epoch)
    return max(config.temperature_min, config.temperature_start * config.temperature_decay ** (epoch - config.warmup_epochs))


@dataclasses.dataclass
class _TrainSlide:
    item: object
    slide: object
    reader: object
    regions: list
    label: int
    tissue: object
    mask: np.ndarray | None = None
    mask_ds: float = 1.0


def _open_slides(items, config, strategy: str):
    from ...slides import open_slide
    from ...slides.tissue import tissue_mask
    from .data import tumour_mask
    from .inference import GlimpseReader, plan_regions

    out = []
    for item in items:
        slide = open_slide(item.path)
        reader = GlimpseReader(slide, config)
        tissue = tissue_mask(slide, config.tissue, max_size=config.tissue_size)
        regions = plan_regions(slide.dimensions, tissue, config.region_size * reader.working_downsample)
        mask, mask_ds = None, 1.0
        if strategy == "supervised":
            mask, mask_ds = tumour_mask(item, slide.dimensions)
            label = int(mask.any()) if item.label is None else int(item.label)
        else:
            label = int(item.label)
        if regions:
            out.append(_TrainSlide(item, slide, reader, regions, label, tissue, mask, mask_ds))
        else:
            slide.close()
    return out


def _leaf_label(ts: _TrainSlide, box, config) -> int:
    from .data import mask_fraction

    if ts.mask is None:
        return ts.label
    return int(mask_fraction(ts.mask, ts.mask_ds, box) >= max(config.leaf_positive_fraction, 1e-9))


def _warmup_set(slides, config, strategy, rng) -> Generator:
    """Uniformly sampled glimpses: (images uint8 (N, S, S, 3), labels (N,), from_negative_slide (N,))."""
    s = config.glimpse_size
    per_class = config.warmup_glimpses
    images, labels, neg_slide = [], [], []
    counts = {0: 0, 1: 0}
    want = {0: per_class, 1: per_class}
    tries = 0
    while (counts[0] < want[0] or counts[1] < want[1]) and tries < 40 * per_class:
        tries += 1
        ts = slides[int(rng.integers(len(slides)))]
        leaf = s * ts.reader.downsample(config.levels)
        if strategy == "supervised" and counts[1] < want[1] and ts.mask is not None and ts.mask.any() and rng.random() < 0.5:
            rows, cols = np.nonzero(ts.mask)
            k = int(rng.integers(len(rows)))
            cx, cy = (cols[k] + rng.random()) * ts.mask_ds, (rows[k] + rng.random()) * ts.mask_ds
            x0, y0 = cx - rng.uniform(0.1, 0.9) * leaf, cy - rng.uniform(0.1, 0.9) * leaf
        else:
            rows, cols = np.nonzero(ts.tissue.mask)
            if len(rows) == 0:
                continue
            k = int(rng.integers(len(rows)))
            cs = ts.tissue.cell_size
            x0, y0 = (cols[k] + rng.random()) * cs - leaf / 2, (rows[k] + rng.random()) * cs - leaf / 2
        box = (x0, y0, x0 + leaf, y0 + leaf)
        y = _leaf_label(ts, box, config) if strategy == "supervised" else ts.label
        if counts[y] >= want[y]:
            continue
        images.append(ts.reader.read(config.levels, x0, y0))
        labels.append(y)
        neg_slide.append(ts.label == 0)
        counts[y] += 1
        if len(images) % 50 == 0:
            yield Progress("load", len(images), 2 * per_class, "reading warm-up glimpses")
    if not counts[0] or not counts[1]:
        raise DatasetError(f"warm-up found glimpses of one class only ({counts}); need positive and negative "
                           "slides / annotated tumour", str(slides[0].item.path))
    return np.stack(images), np.array(labels, np.float32), np.array(neg_slide, bool)


def _classifier_steps(model, optimizer, scheduler, images, labels, config, gen, device, ctx=None):
    """One pass of C over (images, labels) in batches; returns (sum of losses, count).

    Under torchrun (``ctx``) every rank augments the whole batch (the same draws as one
    process), takes every N-th glimpse of it and weights its mean loss by its share; the summed
    gradients are the whole batch's (batch norm sees each rank's share).
    """
    import torch
    import torch.nn.functional as F

    from ...runtime.augment import augment_batch
    from ...runtime.distributed import DistContext
    from ...runtime.regions import to_tensor

    ctx = ctx or DistContext()
    model.classifier.train()
    total, n = 0.0, 0
    order = torch.randperm(len(images), generator=gen).numpy()
    for i in range(0, len(order), config.batch_size):
        idx = np.sort(order[i : i + config.batch_size])
        if len(idx) < 2:  # batch norm needs two samples
            continue
        x = to_tensor(images[idx], device)
        if config.augment:
            x = augment_batch(x, gen)
            # brightness / contrast jitter: slides differ in stain and glass tint, and a classifier
            # that can tell slides apart by tint learns slide identity instead of tumour under MIL
            gain = 1.0 + 0.2 * (torch.rand(len(x), 1, 1, 1, generator=gen) - 0.5)
            shift = 0.08 * (torch.rand(len(x), 1, 1, 1, generator=gen) - 0.5)
            x = (x * gain + shift).clamp_(0.0, 1.0)
        y = torch.from_numpy(labels[idx]).to(device)
        mine = ctx.shard(np.arange(len(idx)))
        optimizer.zero_grad(set_to_none=True)
        if len(mine):
            loss = F.binary_cross_entropy_with_logits(model.classify(x[mine]), y[mine])
            (loss * len(mine) / len(idx)).backward()
            total += loss.item() * len(mine)
            n += len(mine)
        ctx.sync_grads(model)
        optimizer.step()
        scheduler.step()
    model.classifier.eval()
    total, n = ctx.all_reduce_sum(total, n)
    return total, int(n)


def _policy_region(model, ts, box, rng, config, temperature, device):
    """Eq. 5 for one region: returns the loss tensor and the number of trajectories."""
    import torch

    from ...runtime.regions import to_tensor
    from .inference import classify_glimpses
    from .sampling import box_means, sample_children

    k, h = config.child_extent, config.child_extent // 2
    frontier = [(box[0], box[1], [])]  # (x0, y0, kq terms along the path)
    for level in range(config.levels):
        images = np.stack([ts.reader.read(level, x0, y0) for x0, y0, _ in frontier])
        q = model.q_map(level, to_tensor(images, device))
        ds = ts.reader.downsample(level)
        nxt = []
        for (x0, y0, path), q_p in zip(frontier, q, strict=True):
            centres, _, _ = sample_children(q_p.detach().double().cpu().numpy(), config.policy_branching[level],
                                            k, temperature, rng)
            kq = box_means(q_p, centres, k)
            for (cx, cy), v in zip(centres, kq, strict=True):
                nxt.append((x0 + (cx - h) * ds, y0 + (cy - h) * ds, path + [v]))
        frontier = nxt
    leaves = np.stack([ts.reader.read(config.levels, x0, y0) for x0, y0, _ in frontier])
    y_hat = torch.from_numpy(classify_glimpses(model, leaves)).float().to(device)
    loss = sum(((torch.stack(path) - y) ** 2).sum() for (_, _, path), y in zip(frontier, y_hat, strict=True))
    return loss, len(frontier)


def _sampled_leaves(model, ts, box, region, rng, config, temperature):
    """Leaves the current policy draws in a region: (images, level-0 boxes)."""
    from .inference import run_tree

    model.policies.eval()  # sampling only: batch norm must not learn from these batches
    nodes = run_tree(model, ts.reader, box, region, rng, config.train_branching, temperature, classify=False)
    boxes = [n.box for n in nodes if n.level == config.levels]
    if config.leaf_jitter > 0:
        boxes = [_jitter_box(b, config.leaf_jitter, ts.slide.dimensions, rng) for b in boxes]
    if config.strategy == "mil":
        # MIL labels a leaf with its slide's label; a leaf of mostly glass says nothing about the
        # slide, so only leaves that are mostly tissue train C
        boxes = [b for b in boxes if ts.tissue.fraction(*b) >= config.mil_tissue_min]
    return [ts.reader.read(config.levels, b[0], b[1]) for b in boxes], boxes


def _jitter_box(box, fraction: float, dimensions, rng) -> tuple[float, float, float, float]:
    """``box`` moved by up to ``fraction`` of its edge in x and y (uniform), kept inside the slide."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    dx, dy = rng.uniform(-fraction, fraction, size=2) * (w, h)
    nx0 = float(np.clip(x0 + dx, 0.0, max(0.0, dimensions[0] - w)))
    ny0 = float(np.clip(y0 + dy, 0.0, max(0.0, dimensions[1] - h)))
    return (nx0, ny0, nx0 + w, ny0 + h)


def _validate(model, val_items, config) -> Generator:
    from ...evaluate import roc_auc
    from .api import infer_slide

    seeds = [config.seed + k for k in range(config.val_seeds)]
    scores = np.zeros((len(seeds), len(val_items)))
    for i, item in enumerate(val_items):
        for j, seed in enumerate(seeds):
            res = yield from infer_slide(model, item.path, branching=config.branching,
                                         temperature=config.temperature, seed=seed, dense=False,
                                         tissue=config.tissue, tissue_min=config.tissue_min, show_q=False)
            scores[j, i] = res.slide_score
        yield Progress("validate", i + 1, len(val_items), f"validation slide {i + 1}/{len(val_items)}")
    labels = np.array([item.label for item in val_items])
    auc = float(np.mean([roc_auc(labels, row) for row in scores]))
    if len(set(labels.tolist())) > 1:  # the call threshold over every seed's run (max aggregation)
        from ...calls import choose_threshold

        config.slide_threshold = choose_threshold(np.tile(labels, len(seeds)), scores.ravel(),
                                                  config.threshold_rule)
    return auc


class GlimpseTreeTrainer(Trainer):
    """The glimpse tree's C and policies on slide folders (see the module notes).

    An epoch inside the warm-up never becomes the best checkpoint: C alone has trained, the
    policies are still at their initial weights.

    Under torchrun C's batches are split between the ranks, and a dense policy step's levels;
    the leaves a C epoch trains on are drawn on every rank (the same draws), and an eq. 5
    policy step (one region's trajectories, a tree that grows level by level) runs on every
    rank alike: that phase does not get faster with more ranks.
    """

    supports_ddp = True
    ddp_wrap = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.slides: list[_TrainSlide] = []
        self.val_items: list = []

    def setup(self) -> Generator:
        import torch

        from .data import find_slides
        from .model import build_model
        from .policy_dense import RegionImages

        config = self.config
        strategy = config.strategy
        items = find_slides(self.train_dir, need="annotations" if strategy == "supervised" else "labels")
        if self.val_dir:
            self.val_items = [i for i in find_slides(self.val_dir, need="labels") if i.label is not None]
        yield Progress("load", 0, len(items), "opening training slides")
        self.slides = _open_slides(items, config, strategy)
        if len({ts.label for ts in self.slides}) < 2:
            raise DatasetError("training needs positive and negative slides", self.train_dir)
        if config.train_classifier:
            self.warm = yield from _warmup_set(self.slides, config, strategy, np.random.default_rng([self.seed, 7]))
        else:  # policies only: C is never trained, so no warm-up glimpses are read
            s = config.glimpse_size
            self.warm = (np.zeros((0, s, s, 3), np.uint8), np.zeros(0, np.float32), np.zeros(0, bool))
        self.model = build_model(config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.lr_decay_steps, gamma=config.lr_decay)
        # C's score maps stay valid across epochs only while C is frozen
        self.score_cache = {} if not config.train_classifier else None
        self.images_cache = RegionImages()  # decoded regions for dense policy passes (pixels never change)

    def data_summary(self) -> dict:
        warm_y = self.warm[1]
        return {"train": str(self.train_dir), "val": str(self.val_dir) if self.val_dir else None,
                "slides": len(self.slides), "val_slides": len(self.val_items),
                "warmup_glimpses": int(len(warm_y)), "warmup_positive": int(warm_y.sum()),
                "strategy": self.config.strategy}

    def train_epoch(self, epoch: int, net) -> Generator:
        return (yield from _one_epoch(self.model, self.optimizer, self.scheduler, self.slides, self.warm, self.config,
                                      self.config.strategy, epoch, self.seed, self.device, self.score_cache,
                                      self.images_cache, self.ctx))

    def validate(self, epoch: int) -> Generator:
        if not self.val_items:
            return None
        self.model.eval()
        auc = yield from _validate(self.model, self.val_items, self.config)
        return {"score": auc, "val_auc": auc, "threshold": self.config.slide_threshold}

    def may_be_best(self, epoch: int) -> bool:
        return not self.config.train_classifier or epoch + 1 >= self.config.warmup_epochs

    def epoch_note(self, record: dict) -> str:
        return f" ({record['phase']})"

    def close(self) -> None:
        for ts in self.slides:
            ts.slide.close()
        self.slides = []


def train(
    train_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_dir: str | os.PathLike | None = None,
    config: GlimpseTreeConfig | None = None,
    resume: bool = False,
    device: str | None = "auto",
    seed: int = 0,
    init: str | os.PathLike | None = None,
) -> Generator:
    """Train C and the policies; yields Progress, returns the best checkpoint's path.

    Parameters
    ----------
    train_dir
        Slides with tumour annotations (supervised) or a ``labels.csv`` (MIL); see :mod:`.data`.
    out
        Best checkpoint (``.safetensors``); the latest epoch goes to ``<stem>.last.safetensors``.
    val_dir
        Slides with ``labels.csv``: the tree's slide AUC picks the best epoch.
    config
        Strategy (``"supervised"`` / ``"mil"``), epochs, learning rate, batch size, ...
    resume
        Continue from ``<stem>.last.safetensors`` (weights, optimizer, scheduler, epoch).
    init
        Start from these weights (a glimpse-tree checkpoint of the same architecture, or
        ``"supervised"`` / ``"mil"`` for the shipped ones) with a fresh optimizer and schedule,
        e.g. to train the policies further on a trained C (``train_classifier=False``).

    See :func:`napari_glimpse.runtime.fit.fit` for the files written and the errors.
    """
    if init is not None:  # a path, or "supervised" / "mil": the shipped weights of that name
        from ..registry import resolve_checkpoint

        init = resolve_checkpoint(METHOD, init)
    return (yield from fit(METHOD, GlimpseTreeTrainer, config or GlimpseTreeConfig(), train_dir, out,
                           val_dir=val_dir, resume=resume, init=init, device=device or "auto", seed=seed))


def _phase(config: GlimpseTreeConfig, epoch: int) -> str:
    """What ``epoch`` (0-based) trains: ``"warm-up C"``, ``"C"`` or ``"P"``."""
    if not config.train_classifier:
        return "P"
    if epoch < config.warmup_epochs:
        return "warm-up C"
    return "C" if (epoch - config.warmup_epochs) % 2 == 0 else "P"


def _one_epoch(model, optimizer, scheduler, slides, warm, config, strategy, epoch, seed, dev,
               score_cache=None, images_cache=None, ctx=None) -> Generator:
    """Train epoch ``epoch`` (0-based) as its phase says; returns the epoch's record."""
    import torch

    t0 = time.time()
    rng = np.random.default_rng([seed, epoch, 11])
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    torch.manual_seed(seed * 7919 + epoch)
    temperature = temperature_at(config, epoch)
    warm_x, warm_y, warm_neg = warm
    phase = _phase(config, epoch)
    if phase == "warm-up C":
        total, n = _classifier_steps(model, optimizer, scheduler, warm_x, warm_y, config, gen, dev, ctx)
    elif phase == "C":
        images, labels = [], []
        order = rng.permutation(len(slides))
        for k, si in enumerate(order):
            ts = slides[si]
            for r, box in enumerate(ts.regions):
                imgs, boxes = _sampled_leaves(model, ts, box, r, rng, config, temperature)
                images += imgs
                labels += [_leaf_label(ts, b, config) if strategy == "supervised" else ts.label for b in boxes]
            if (k + 1) % 8 == 0:
                yield Progress("train", k + 1, len(slides), f"epoch {epoch + 1}: sampling leaves")
        pool = np.flatnonzero(warm_neg) if strategy == "mil" else np.arange(len(warm_y))
        replay = rng.choice(pool, size=min(len(images), len(pool)), replace=False) if len(pool) else []
        parts = ([np.stack(images)] if images else []) + ([warm_x[replay]] if len(replay) else [])
        if not parts:
            raise DatasetError("no training leaves were drawn in this epoch (MIL: no leaf with enough tissue)",
                               str(slides[0].item.path))
        x = np.concatenate(parts)
        y = np.concatenate([np.array(labels, np.float32), warm_y[replay] if strategy == "supervised"
                            else np.zeros(len(replay), np.float32)])
        total, n = _classifier_steps(model, optimizer, scheduler, x, y, config, gen, dev, ctx)
    else:
        model.classifier.eval()
        total, n = 0.0, 0
        dense = config.policy_target in ("dense", "dense-max")
        if dense:
            from .policy_dense import dense_policy_epoch

            total, n = yield from dense_policy_epoch(model, optimizer, scheduler, slides, config, rng, gen, dev,
                                                     epoch, cache=score_cache, images_cache=images_cache, ctx=ctx)
        passes = 0 if dense else config.policy_passes
        order = [si for _ in range(passes) for si in rng.permutation(len(slides))]
        for k, si in enumerate(order):
            ts = slides[si]
            for box in ts.regions:
                model.policies.train()
                optimizer.zero_grad(set_to_none=True)
                loss, m = _policy_region(model, ts, box, rng, config, temperature, dev)
                (loss / max(m, 1)).backward()
                optimizer.step()
                scheduler.step()
                total += loss.item()
                n += m
            if (k + 1) % 8 == 0:
                yield Progress("train", k + 1, len(order), f"epoch {epoch + 1}: policy", {"loss": total / max(n, 1)})
        if order:  # eq. 5 steps see one region each: their running BN statistics follow the last few
            from .policy_dense import RegionImages, precise_batch_norm, training_regions

            precise_batch_norm(model, training_regions(slides), config,
                               images_cache if images_cache is not None else RegionImages(), rng, dev)
            if ctx is not None:  # every rank took the same eq. 5 steps: keep them bit-equal (GPU sums vary)
                ctx.broadcast_module(model)
        model.policies.eval()
    return {"phase": phase, "loss": total / max(n, 1), "samples": n,
            "temperature": temperature if np.isfinite(temperature) else None,
            "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - t0}
