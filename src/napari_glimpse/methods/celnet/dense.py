"""CELNet's dense tile computation in pieces, so that a slide run can yield every second.

One large tile (1536 px with its context) takes tens of seconds on a CPU. Rather than shrink
tiles (their context margin would then cost more than the windows they hold), the feature
maps of a tile are computed layer by layer -- the stem, then each MA-ResBlock -- and each
layer in horizontal bands of its output rows. A band of output rows ``[a, b)`` is computed
from the layer's input rows around it with ``overlap`` extra output rows each side, which
absorb what the band's artificial edges change (zero padding, truncated channel-attention
pools); the band's rows are then copied into the layer's full output. Bands that reach the
tile's own edge see the same padding as the whole tile, so every layer's output equals the
unbanded one to float round-off, and the dense == per-patch-with-context contract of
:mod:`.celnet` holds unchanged.

Between bands the generators here yield (``None``), which is where a slide run reports
progress and where a consumer that stops iterating cancels it.
"""

from __future__ import annotations

import math
from collections.abc import Generator

import numpy as np
import torch

from ...runtime.regions import to_tensor

__all__ = ["DEFAULT_PIECE", "feature_layers", "count_pieces", "iter_features", "iter_tile_probabilities"]

# Output activations (tiles x rows x width x channels) per piece. 2**22 is about half a second
# of a default CELNet on one CPU core; a GPU computes a whole tile in well under a second.
DEFAULT_PIECE = {"cpu": 2**22, "cuda": 2**28}


def default_piece(device) -> int:
    return DEFAULT_PIECE.get(torch.device(device).type, DEFAULT_PIECE["cpu"])


def feature_layers(model) -> tuple[list[tuple[torch.nn.Module, int, int, int]], int]:
    """The layers before pooling as ``(module, stride, overlap, out_channels)``, and the index
    of the layer whose output is F2 (the last block of module 2).

    ``overlap`` (output rows) bounds how far an artificial band edge reaches into the
    layer's output: one row of the stride-s 3x3 conv (and shortcut) next to the edge, spread
    by conv2 (1), the channel-attention pools (``channel_window // 2``) and the largest
    spatial-attention kernel (``k // 2``).
    """
    cfg = model.config
    if cfg.channel_window is None:
        raise ValueError("global channel attention (channel_window=None) cannot be computed in bands")
    block_overlap = 2 + cfg.channel_window // 2 + max(cfg.spatial_kernels) // 2
    layers = [(model.stem, model.stem[0].stride[0], 1, model.stem[0].out_channels)]
    for module in (model.module1, model.module2, model.module3):
        for block in module:
            layers.append((block, block.conv1.stride[0], block_overlap, block.conv1.out_channels))
    return layers, 2 * cfg.blocks


def _band_rows(n: int, width: int, channels: int, piece: int) -> int:
    return max(1, piece // max(1, n * width * channels))


def count_pieces(model, size: int, n: int = 1, piece: int = DEFAULT_PIECE["cpu"]) -> int:
    """How many times :func:`iter_features` yields for ``n`` square tiles of ``size`` px."""
    total, h = 0, size
    for _, s, _, channels in feature_layers(model)[0]:
        h = (h - 1) // s + 1
        total += math.ceil(h / _band_rows(n, h, channels, piece))
    return total


def _banded(layer, x: torch.Tensor, stride: int, overlap: int, channels: int, piece: int) -> Generator:
    """``layer(x)`` computed in bands of output rows, yielding after each; returns the output."""
    n, _, h_in, w_in = x.shape
    h_out, w_out = (h_in - 1) // stride + 1, (w_in - 1) // stride + 1
    rows = _band_rows(n, w_out, channels, piece)
    if rows >= h_out:
        out = layer(x)
        yield
        return out
    out = None
    for a in range(0, h_out, rows):
        b = min(h_out, a + rows)
        lo, hi = max(0, a - overlap), min(h_out, b + overlap)
        # Input rows start on the stride grid, so the band's output rows are the layer's.
        band = layer(x[:, :, stride * lo : min(h_in, stride * hi)])
        if out is None:
            # Keep the bands' memory format: CPU convolutions run several times faster on
            # channels-last tensors (what to_tensor's permute gives) than on NCHW ones.
            fmt = torch.channels_last if not band.is_contiguous() and band.is_contiguous(
                memory_format=torch.channels_last) else torch.contiguous_format
            out = torch.empty((n, band.shape[1], h_out, band.shape[3]), dtype=band.dtype,
                              device=band.device, memory_format=fmt)
        out[:, :, a:b] = band[:, :, a - lo : b - lo]
        del band
        yield
    return out


@torch.no_grad()
def iter_features(model, x: torch.Tensor, piece: int | None = None) -> Generator:
    """``model.features(x)`` in pieces of about ``piece`` output activations.

    Yields ``None`` after each piece (:func:`count_pieces` tells how many); returns
    ``(F2, F3)``, equal to ``model.features(x)`` to float round-off.
    """
    piece = piece or default_piece(x.device)
    layers, f2_index = feature_layers(model)
    h, f2 = model.normalize(x), None
    for i, (layer, stride, overlap, channels) in enumerate(layers):
        h = yield from _banded(layer, h, stride, overlap, channels, piece)
        if i == f2_index:
            f2 = h
    return f2, h


def iter_tile_probabilities(model, tiles: np.ndarray, tile_cells: int, stride: int,
                            piece: int | None = None, tta: bool = False) -> Generator:
    """Probabilities (N, tile_cells, tile_cells) of the windows of tiles read with context.

    ``tiles`` is (N, S, S, 3) uint8 with S = (tile_cells - 1) * stride + patch + 2 * margin;
    cell (r, c) is the window whose top-left is (margin + r * stride, margin + c * stride).
    Yields ``None`` after each feature piece.

    ``tta`` averages the 8 rotations / flips (:func:`..runtime.augment.dihedral`): the tile
    is turned, its dense map computed and turned back. The window lattice is symmetric
    (``margin`` on both sides of ``tile_cells`` windows), so every turned window is again a
    lattice window, and cell (r, c) is the mean over the 8 turns of that window with its
    context -- what ``evaluate --tta`` computes for a bare patch.
    """
    from ...runtime.augment import dihedral, dihedral_inverse

    m = model.context_margin
    device = next(model.parameters()).device
    x = to_tensor(tiles, device)
    total = None
    for op in range(8) if tta else (0,):
        f2, f3 = yield from iter_features(model, dihedral(x, op) if op else x, piece)
        with torch.no_grad():
            # Drop the margin so window (0, 0) starts at feature cell 0; windows near the far
            # border fall off because window_logits only returns windows that fit the features.
            c3, c2 = model.stride, model.stride // 2  # input px per F3 / F2 cell
            logits = model.window_logits(f2[:, :, m // c2 :, m // c2 :], f3[:, :, m // c3 :, m // c3 :], stride)
            del f2, f3
            if logits.shape[1] < tile_cells or logits.shape[2] < tile_cells:
                raise RuntimeError(f"tile gave {tuple(logits.shape[1:])} windows, expected {tile_cells}")
            p = dihedral_inverse(torch.sigmoid(logits[:, :tile_cells, :tile_cells].float()), op)
            total = p if total is None else total + p
    return (total / (8 if tta else 1)).cpu().numpy()
