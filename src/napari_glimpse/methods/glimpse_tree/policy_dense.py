"""Policy epochs with a dense target: eq. 1 evaluated at every position instead of eq. 5's samples.

Eq. 1 asks (K * q_l)(c) = E[y_hat_k] for a child centred at c. Eq. 5 fits it only at the
centres the tree happened to sample, which gives a U-Net from scratch a few dozen terms per
region and epoch. Here C's score is computed once per P epoch on every leaf-sized tile of
each training region (the 'All' map S, C's scores, never the ground truth, as in eq. 5), and
q_l of a glimpse is regressed pixel-wise onto S upsampled to that glimpse's pixels: since K
is linear, q = S implies (K * q)(c) = the mean of C's scores over the child's extent, which is
E[y_hat] under uniform placement of the leaves below it. ``config.policy_target = "dense"``
selects it; ``"sampled"`` (default) is the paper's eq. 5.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ...runtime.events import Progress

__all__ = ["dense_policy_epoch"]


def _upsample(block: np.ndarray, factor: int) -> np.ndarray:
    return np.kron(block, np.ones((factor, factor), dtype=block.dtype))


def dense_policy_epoch(model, optimizer, scheduler, slides, config, rng, gen, device, epoch: int) -> Generator:
    """One dense P epoch; yields Progress, returns (sum of losses, number of maps)."""
    import torch

    from .inference import run_all, to_tensor

    s, scale, levels = config.glimpse_size, config.level_scale, config.levels
    n_tiles = scale**levels
    model.classifier.eval()
    regions = [(ts, box) for ts in slides for box in ts.regions]
    if config.policy_regions and len(regions) > config.policy_regions:
        regions = [regions[i] for i in np.sort(rng.choice(len(regions), config.policy_regions, replace=False))]
    maps = []
    for k, (ts, box) in enumerate(regions):
        maps.append((ts, box, np.nan_to_num(run_all(model, ts.reader, box, None, 0.0)).astype(np.float32)))
        if (k + 1) % 8 == 0:
            yield Progress("train", k + 1, len(regions), f"epoch {epoch + 1}: C's score maps for the policy")
    total, count = 0.0, 0
    for p in range(config.policy_passes):
        for i in rng.permutation(len(maps)):
            ts, box, score = maps[i]
            model.policies.train()
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            for level in range(levels):
                span = scale ** (levels - level)  # tiles per glimpse side at this level
                per_tile = s // span
                tile_px = s * ts.reader.downsample(levels)
                # the root once; deeper levels at a few random tile-aligned positions in the region
                starts = [(0, 0)] if span == n_tiles else [
                    tuple(rng.integers(0, n_tiles - span + 1, size=2)) for _ in range(max(2, 8 // (level + 1)))]
                images, targets = [], []
                for r0, c0 in starts:
                    images.append(ts.reader.read(level, box[0] + c0 * tile_px, box[1] + r0 * tile_px))
                    targets.append(_upsample(score[r0 : r0 + span, c0 : c0 + span], per_tile))
                x = to_tensor(np.stack(images), device)
                y = torch.from_numpy(np.stack(targets)).to(device)[:, None]
                op = int(torch.randint(0, 8, (1,), generator=gen))  # one dihedral transform for both
                if op >= 4:
                    x, y = x.flip(-1), y.flip(-1)
                x, y = torch.rot90(x, op % 4, dims=(-2, -1)), torch.rot90(y, op % 4, dims=(-2, -1))
                q = model.q_map(level, x)
                # tumour is rare: weighting the squared error up where C scores high keeps q from
                # settling on the mean score everywhere
                weight = 1.0 + config.policy_pos_weight * y[:, 0]
                loss = loss + (weight * (q - y[:, 0]) ** 2).sum() / (s * s)
                count += len(images)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.item())
        model.policies.eval()
        yield Progress("train", p + 1, config.policy_passes, f"epoch {epoch + 1}: dense policy pass",
                       {"loss": total / max(count, 1)})
    return total, count
