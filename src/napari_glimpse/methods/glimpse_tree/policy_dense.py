"""Policy epochs with a dense target: eq. 1 evaluated at every position instead of eq. 5's samples.

Eq. 1 asks (K * q_l)(c) = E[y_hat_k] for a child centred at c. Eq. 5 fits it only at the
centres the tree happened to sample, which gives a U-Net from scratch a few dozen terms per
region and epoch. Here C's score is computed once per P epoch on every leaf-sized tile of
each training region (the 'All' map S: C's scores, never the ground truth, as in eq. 5), and
the policy is fitted against it at every position. Two dense targets
(``config.policy_target``):

``"dense"``
    q_l itself is regressed pixel-wise onto S upsampled to the glimpse's pixels. Since K is
    linear, q = S gives (K * q)(c) = the mean of C's scores over the child's extent: E[y_hat]
    under uniform placement of the leaves below the child.
``"dense-max"``
    (K * q_l)(c) is regressed at every valid child centre c onto the leaf score a child at c
    leads to. For a child that is a leaf, that is C's score there (S averaged over the child's
    box, which interpolates between tiles). For a deeper child, whose own policy is meant to
    find the best leaf inside it at the low test temperature, it is the maximum of S over
    the tiles inside the child's box. This is eq. 1 with the expectation taken under the
    trained deeper policy instead of uniform placement: a single tumour tile then raises the
    whole child's K * q, where the mean target dilutes it 16-fold at the root.

``"sampled"`` (default) is the paper's eq. 5 and lives in :mod:`.training`.

With ``config.train_classifier = False`` C never changes, so S is computed once and reused by
every P epoch (``cache``).
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ...runtime.events import Progress

__all__ = ["dense_policy_epoch", "dense_targets", "box_pool", "RegionImages", "precise_batch_norm",
           "training_regions"]


def _upsample(block: np.ndarray, factor: int) -> np.ndarray:
    return np.kron(block, np.ones((factor, factor), dtype=block.dtype))


def _centre_map(block: np.ndarray, factor: int) -> np.ndarray:
    """S on a glimpse's pixels only at tile centres, -inf elsewhere (max pooling picks tiles)."""
    out = np.full((block.shape[0] * factor, block.shape[1] * factor), -np.inf, np.float32)
    out[factor // 2 :: factor, factor // 2 :: factor] = block
    return out


def dense_targets(pixel_map, k: int, leaf_child: bool):
    """(N, S - k + 1, S - k + 1) dense-max targets of (K * q) at every child centre.

    ``pixel_map`` (N, S, S) torch: S upsampled (``leaf_child``: box means) or S at tile centres
    (deeper children: box maxima). Pooling commutes with the dihedral transforms, so the maps may
    be turned before this is called.
    """
    return box_pool(pixel_map, k, "mean" if leaf_child else "max")


def training_regions(slides) -> list[tuple]:
    """Every training region as ``((slide index, region index), slide, level-0 box)``: the keys
    of the score-map and decoded-region caches."""
    return [((si, r), ts, box) for si, ts in enumerate(slides) for r, box in enumerate(ts.regions)]


def _glimpse_starts(rng, span: int, n_tiles: int, count: int) -> list[tuple[int, int]]:
    """Tile-aligned (row, col) corners of a level's training glimpses in a region: the root once
    (it spans the region), deeper levels at ``count`` random positions."""
    if span == n_tiles:
        return [(0, 0)]
    return [tuple(rng.integers(0, n_tiles - span + 1, size=2)) for _ in range(count)]


def box_pool(x, k: int, mode: str):
    """Mean or max of (N, S, S) ``x`` over every k x k box inside it: (N, S - k + 1, S - k + 1).

    Two separable 1-D passes (2k per output instead of k^2: a child box is 76 px, so this is
    what makes a dense policy step cheap); differentiable.
    """
    import torch.nn.functional as F

    pool = F.avg_pool2d if mode == "mean" else F.max_pool2d
    return pool(pool(x[:, None], (k, 1), stride=1), (1, k), stride=1)[:, 0]


def score_maps(model, regions, cache: dict | None, epoch: int) -> Generator:
    """C's All map of every region, from ``cache`` when given and filled; yields Progress."""
    from .inference import run_all

    maps = []
    for k, (key, ts, box) in enumerate(regions):
        if cache is not None and key in cache:
            maps.append(cache[key])
            continue
        score = np.nan_to_num(run_all(model, ts.reader, box, None, 0.0)).astype(np.float32)
        if cache is not None:
            cache[key] = score
        maps.append(score)
        if (k + 1) % 8 == 0:
            yield Progress("train", k + 1, len(regions), f"epoch {epoch + 1}: C's score maps for the policy")
    return maps


_IMAGE_CACHE_BYTES = 1 << 30  # whole regions kept decoded per level, up to this much in all


class RegionImages:
    """Each training region read once per tree level and kept, so policy passes crop instead of
    decoding the slide again (the passes are otherwise dominated by TIFF reads). Regions beyond
    ``max_bytes`` are read glimpse by glimpse as before."""

    def __init__(self, max_bytes: int = _IMAGE_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._store: dict = {}

    def glimpse(self, ts, key, box, level: int, x0: float, y0: float, size: int) -> np.ndarray:
        """The ``size`` px glimpse of tree ``level`` with level-0 corner (x0, y0) inside region ``box``."""
        ds = ts.reader.downsample(level)
        full = round((box[2] - box[0]) / ds)
        strip = self._store.get((key, level))
        if strip is None and self.bytes + full * full * 3 <= self.max_bytes:
            strip = ts.reader.read_strip(level, box[0], box[1], full, full)
            self._store[(key, level)] = strip
            self.bytes += strip.nbytes
        ox, oy = round((x0 - box[0]) / ds), round((y0 - box[1]) / ds)
        if strip is None or ox < 0 or oy < 0 or ox + size > full or oy + size > full:
            return ts.reader.read(level, x0, y0, size)
        return strip[oy : oy + size, ox : ox + size]


def dense_policy_epoch(model, optimizer, scheduler, slides, config, rng, gen, device, epoch: int,
                       cache: dict | None = None, images_cache: RegionImages | None = None,
                       ctx=None) -> Generator:
    """One dense P epoch; yields Progress, returns (sum of losses, number of maps).

    A step sums the losses of every level's policy on one region. Under torchrun (``ctx``)
    rank r computes the levels ``r, r + N, ...`` (every rank draws the random numbers of all
    of them) and the gradients are summed: the same steps as one process, up to
    ``levels`` ranks sharing the work.
    """
    import torch

    from ...runtime.augment import dihedral
    from ...runtime.distributed import DistContext
    from ...runtime.regions import to_tensor

    ctx = ctx or DistContext()
    s, scale, levels = config.glimpse_size, config.level_scale, config.levels
    k = config.child_extent
    n_tiles = scale**levels
    model.classifier.eval()
    regions = training_regions(slides)
    if config.policy_regions and len(regions) > config.policy_regions:
        regions = [regions[i] for i in np.sort(rng.choice(len(regions), config.policy_regions, replace=False))]
    maps = yield from score_maps(model, regions, cache, epoch)
    images_cache = images_cache if images_cache is not None else RegionImages()
    dense_max = config.policy_target == "dense-max"
    total, count = 0.0, 0
    for p in range(config.policy_passes):
        for i in rng.permutation(len(maps)):
            (key, ts, box), score = regions[i], maps[i]
            model.policies.train()
            optimizer.zero_grad(set_to_none=True)
            loss = None
            for level in range(levels):
                span = scale ** (levels - level)  # tiles per glimpse side at this level
                per_tile = s // span
                tile_px = s * ts.reader.downsample(levels)
                leaf_child = level == levels - 1
                starts = _glimpse_starts(rng, span, n_tiles, max(2, 8 // (level + 1)))
                op = int(torch.randint(0, 8, (1,), generator=gen))  # one dihedral transform for both
                if level % ctx.world_size != ctx.rank:
                    continue  # another rank's level
                images, targets = [], []
                for r0, c0 in starts:
                    images.append(images_cache.glimpse(ts, key, box, level, box[0] + c0 * tile_px,
                                                       box[1] + r0 * tile_px, s))
                    block = score[r0 : r0 + span, c0 : c0 + span]
                    targets.append(_centre_map(block, per_tile) if dense_max and not leaf_child
                                   else _upsample(block, per_tile))
                x = dihedral(to_tensor(np.stack(images), device), op)
                y = dihedral(torch.from_numpy(np.stack(targets)).to(device)[:, None], op)
                q = model.q_map(level, x)
                if dense_max:
                    target = dense_targets(y[:, 0], k, leaf_child)
                    pred = box_pool(q, k, "mean")  # (K * q) at every valid centre
                else:
                    target, pred = y[:, 0], q
                # tumour is rare: weighting the squared error up where C scores high keeps q from
                # settling on the mean score everywhere
                weight = 1.0 + config.policy_pos_weight * target
                term = (weight * (pred - target) ** 2).sum() / target[0].numel()
                loss = term if loss is None else loss + term
                count += len(images)
            if loss is not None:
                loss.backward()
                total += float(loss.item())
            ctx.sync_grads(model)
            optimizer.step()
            scheduler.step()
        model.policies.eval()
        yield Progress("train", p + 1, config.policy_passes, f"epoch {epoch + 1}: dense policy pass",
                       {"loss": total / max(count, 1)})
    precise_batch_norm(model, regions, config, images_cache, rng, device)
    total, count = ctx.all_reduce_sum(total, count)
    return total, int(count)


def precise_batch_norm(model, regions, config, images_cache, rng, device) -> None:
    """Recompute the policies' batch-norm statistics as plain means over the training regions.

    A policy step sees one root glimpse (or a few deeper ones), so the running statistics that
    the steps leave behind follow the last handful of glimpses of the epoch: the tree then
    changes from epoch to epoch even when the weights hardly do. Here every region's root and
    a few deeper glimpses per region are passed through in train mode without gradients, with
    the cumulative average (momentum None), so the statistics match the weights and the data.
    """
    import torch

    from ...runtime.regions import to_tensor

    s, scale, levels = config.glimpse_size, config.level_scale, config.levels
    n_tiles = scale**levels
    for level in range(levels):
        policy = model.policies[level]
        norms = [m for m in policy.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            continue
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        span = scale ** (levels - level)
        policy.train()
        with torch.no_grad():
            for key, ts, box in regions:
                tile_px = s * ts.reader.downsample(levels)
                images = [images_cache.glimpse(ts, key, box, level, box[0] + c0 * tile_px, box[1] + r0 * tile_px, s)
                          for r0, c0 in _glimpse_starts(rng, span, n_tiles, 4)]
                policy(to_tensor(np.stack(images), device))
        policy.eval()
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
