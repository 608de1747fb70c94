"""The feature grids grid attention reads: the one door to the compressing path, grid padding
and the training augmentations.

:func:`slide_grid` is the only function that reaches :mod:`napari_glimpse.features` (cached
grids for whole slides, a fresh grid for a region); tests replace it with synthetic grids.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ...runtime.events import Progress

__all__ = ["GridParams", "slide_grid", "pad_grid", "augment_grid"]


@dataclass(frozen=True)
class GridParams:
    """How a slide becomes a feature grid (from a training config and the run's cache choice)."""

    encoder: str
    patch_px: int
    mpp: float
    tissue_min: float
    cache: str = ""  # "" the default cache, "none" no cache, else a folder
    batch_size: int = 128

    @classmethod
    def from_config(cls, config, cache: str | None = None, batch_size: int = 128) -> GridParams:
        return cls(config.encoder, config.patch_px, config.mpp, config.tissue_min,
                   config.feature_cache if cache is None else cache, batch_size)

    def cache_arg(self):
        """The ``cache`` argument of ``cached_grid_features``: None, False or a folder."""
        if not self.cache:
            return None
        return False if self.cache.lower() == "none" else self.cache


def slide_grid(slide, params: GridParams, device, region=None) -> Generator[Progress, None, object]:
    """The :class:`~napari_glimpse.features.FeatureGrid` of a slide (a path or an open Slide).

    A whole slide goes through the feature cache (computed once, then read); a region is
    encoded afresh. Yields one ``"features"`` Progress when the grid is ready.
    """
    from ...encoders import load_encoder

    encoder = load_encoder(params.encoder, device)
    if region is None:
        from ...features.cache import iter_cached_grid_features

        path = getattr(slide, "path", slide)
        grid = yield from iter_cached_grid_features(
            str(path), encoder, cache=params.cache_arg(), patch_px=params.patch_px, mpp=params.mpp,
            tissue_min=params.tissue_min, batch_size=params.batch_size, device=str(device))
    else:
        from ...features.grid import iter_grid_features
        from ...slides import open_slide

        if isinstance(slide, str):
            with open_slide(slide) as opened:
                return (yield from slide_grid(opened, params, device, region))
        grid = yield from iter_grid_features(slide, encoder, patch_px=params.patch_px, mpp=params.mpp,
                                             tissue_min=params.tissue_min, batch_size=params.batch_size,
                                             device=str(device), region=region)
    yield Progress("features", 1, 1, f"feature grid {grid.shape[0]} x {grid.shape[1]}")
    return grid


def pad_grid(features: torch.Tensor, tissue: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad a (M, N, K) grid at the bottom / right to at least 3 x 3 and even sizes (the
    2 x 2 pooling); returns (features, tissue) of the padded grid (padding is not tissue)."""
    m, n, _ = features.shape
    if tissue is None:
        tissue = torch.ones(m, n, dtype=torch.bool, device=features.device)
    pm, pn = max(m, 3), max(n, 3)
    pm, pn = pm + pm % 2, pn + pn % 2
    if (pm, pn) == (m, n):
        return features, tissue
    out = features.new_zeros(pm, pn, features.shape[2])
    out[:m, :n] = features
    t = tissue.new_zeros(pm, pn)
    t[:m, :n] = tissue
    return out, t


def augment_grid(features: np.ndarray, tissue: np.ndarray, rng: np.random.Generator,
                 max_shift: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A random flip, 90-degree turn and shift of 0..``max_shift`` cells (zero fill) of a grid.

    The shift pads zero cells above and left of the grid, so no tissue is lost.
    """
    k = int(rng.integers(4))
    f, t = np.rot90(features, k, axes=(0, 1)), np.rot90(tissue, k)
    if rng.random() < 0.5:
        f, t = f[::-1], t[::-1]
    dy, dx = (int(v) for v in rng.integers(0, max_shift + 1, size=2))
    f = np.pad(f, ((dy, 0), (dx, 0), (0, 0)))
    t = np.pad(t, ((dy, 0), (dx, 0)))
    return np.ascontiguousarray(f), np.ascontiguousarray(t)
