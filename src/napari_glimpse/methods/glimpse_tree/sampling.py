"""Choosing children inside a glimpse: box-smoothed q, Boltzmann sampling, suppression.

Pure numpy (inference) plus the differentiable box mean the policy loss needs (torch).
Coordinates are the parent glimpse's pixels; a child centred at integer ``c`` covers parent
pixels ``[c - k // 2, c - k // 2 + k)`` with ``k`` the child's extent (glimpse_size / level_scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["box_smooth", "boltzmann_map", "sample_children", "box_means", "valid_centres"]


def box_smooth(q: np.ndarray, k: int) -> np.ndarray:
    """(K * q) at every valid child centre, K the normalised k x k box kernel.

    Returns an (S - k + 1) x (S - k + 1) array whose entry (i, j) is the mean of q over the
    child box centred at parent pixel (y, x) = (i + k // 2, j + k // 2). Centres nearer the
    border are not returned: that is the border zeroing (children lie fully inside the parent).
    """
    q = np.asarray(q, dtype=np.float64)
    s = q.shape[0]
    if q.ndim != 2 or q.shape[1] != s or not 0 < k <= s:
        raise ValueError(f"box_smooth needs a square map and 0 < k <= size, got {q.shape} and k={k}")
    integral = np.zeros((s + 1, s + 1))
    integral[1:, 1:] = q.cumsum(0).cumsum(1)
    sums = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    return sums / (k * k)


def boltzmann_map(kq: np.ndarray, temperature: float) -> np.ndarray:
    """Q = exp(+(K * q) / T), scaled so its maximum is 1 (the scale cancels in sampling)."""
    if temperature <= 0:
        return (kq >= kq.max()).astype(np.float64)
    return np.exp((kq - kq.max()) / temperature)


def valid_centres(fractions: Sequence[tuple[np.ndarray, float]], k: int) -> np.ndarray:
    """Child centres whose box is mostly inside the slide (and on tissue): a bool map for ``valid``.

    Parameters
    ----------
    fractions
        ``(map, minimum)`` pairs, in order of priority: ``map`` is an (S, S) array in [0, 1]
        on the parent's pixels (1 inside the slide / on tissue) and a centre is valid when the
        mean of ``map`` over its child box is at least ``minimum``. A minimum no centre reaches
        is lowered to the best fraction any centre reaches (a slide smaller than a child still
        gets its most-inside child); a later pair that would leave nothing valid is dropped
        (a coarse tissue mask never vetoes the slide-bounds rule).
    k
        Child extent in parent pixels.

    Returns
    -------
    (S - k + 1, S - k + 1) bool, indexed like :func:`box_smooth`.
    """
    valid = None
    for frac_map, minimum in fractions:
        frac = box_smooth(frac_map, k)
        if valid is None:
            valid = np.ones(frac.shape, bool)
        best = frac[valid].max()
        ok = valid & (frac >= min(minimum, best) - 1e-9)
        if ok.any():
            valid = ok
    return valid


def sample_children(
    q: np.ndarray, n: int, k: int, temperature: float, rng: np.random.Generator,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` child centres in a glimpse with probability proportional to Q.

    After each draw a child-sized box (k x k) around the centre is zeroed (maximum
    suppression), so children overlap at most by half. When every remaining Q underflows
    (very small T), the remaining maximum of K * q is taken: the T -> 0 limit. Q is zero at
    centres outside ``valid`` (child boxes off the slide or off tissue); when suppression has
    used up every valid centre, fewer than ``n`` children are returned rather than children
    off the slide or repeats of one already drawn.

    Parameters
    ----------
    q
        The policy's (S, S) map in [0, 1].
    n
        Children to draw; fewer are returned only if no valid centre is left.
    k
        Child extent in parent pixels (also the smoothing and suppression box).
    temperature
        T; 0 means argmax.
    rng
        numpy Generator: the only source of randomness (same seed, same children).
    valid
        Optional (S - k + 1, S - k + 1) bool map of allowed centres (see :func:`valid_centres`);
        None allows every centre whose child lies inside the parent.

    Returns
    -------
    centres : (n, 2) int
        Child centres (x, y) in parent pixels.
    kq_at : (n,) float
        (K * q) at each centre.
    Q : (S, S) float
        The Boltzmann map before suppression (zero on the border and at invalid centres),
        max 1 over the valid centres: what is shown.
    """
    kq = box_smooth(q, k)
    h = k // 2
    avail = np.ones(kq.shape, dtype=bool)
    if valid is not None:
        if valid.shape != kq.shape:
            raise ValueError(f"valid must have the shape of the centres {kq.shape}, got {valid.shape}")
        avail &= valid
    # the maximum over valid centres only, so T -> 0 still leaves a valid centre at weight 1
    weights = np.where(avail, boltzmann_map(np.where(avail, kq, -np.inf) if avail.any() else kq, temperature), 0.0)
    s = q.shape[0]
    full = np.zeros((s, s))
    m = kq.shape[0]
    full[h : h + m, h : h + m] = weights
    centres, values = [], []
    for _ in range(n):
        if not avail.any():
            break
        p = np.where(avail, weights, 0.0).ravel()
        total = p.sum()
        if total > 0 and np.isfinite(total):
            idx = int(np.searchsorted(np.cumsum(p), rng.random() * total, side="right"))
            idx = min(idx, p.size - 1)
            while not avail.flat[idx]:  # round-off at the end of the cumulative sum
                idx -= 1
        else:
            idx = int(np.argmax(np.where(avail, kq, -np.inf)))
        i, j = divmod(idx, m)
        centres.append((j + h, i + h))
        values.append(kq[i, j])
        avail[max(0, i - h) : i - h + k, max(0, j - h) : j - h + k] = False
    return np.asarray(centres, dtype=np.int64).reshape(-1, 2), np.asarray(values, float), full


def box_means(q, centres: np.ndarray, k: int):
    """Differentiable (K * q)(c) at child centres: mean of torch ``q`` (S, S) over each box."""
    import torch

    h = k // 2
    return torch.stack([q[y - h : y - h + k, x - h : x - h + k].mean() for x, y in np.asarray(centres).reshape(-1, 2)]) \
        if len(centres) else q.new_zeros(0)
