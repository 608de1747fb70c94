"""Training augmentation: the dihedral group of a square patch, and stain / colour jitter."""

from __future__ import annotations

__all__ = ["augment_batch", "dihedral", "dihedral_inverse"]


def augment_batch(x, generator, color_jitter: float = 0.0):
    """Random element of the dihedral group (90-degree rotations x flip) per patch, and
    optionally a random stain / colour jitter.

    ``x`` is a (N, C, H, W) RGB tensor in [0, 1]; every random choice comes from ``generator``
    so a seeded run is reproducible. ``color_jitter`` = s > 0 multiplies each channel by
    1 + s u, shifts brightness by s/2 u, scales saturation by 1 + 2 s u and contrast by
    1 + s u (each u uniform in [-1, 1], drawn per patch), then clips to [0, 1]: H&E stain
    strength and scanner colour vary between slides, and a classifier trained on one set of
    slides otherwise learns their tint.
    """
    import torch

    ops = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for op in range(8):
        idx = (ops == op).nonzero().flatten()
        if idx.numel() == 0:
            continue
        out[idx] = dihedral(x[idx], op)
    if color_jitter > 0:
        n, s = x.shape[0], float(color_jitter)

        def u(*shape):
            return (torch.rand(n, *shape, generator=generator) * 2 - 1).to(device=x.device, dtype=x.dtype)

        out = out * (1 + s * u(3, 1, 1)) + 0.5 * s * u(1, 1, 1)
        grey = out.mean(dim=1, keepdim=True)
        out = grey + (out - grey) * (1 + 2 * s * u(1, 1, 1))
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (mean + (out - mean) * (1 + s * u(1, 1, 1))).clamp_(0.0, 1.0)
    return out


def dihedral(x, op: int):
    """Element ``op`` (0-7) of the dihedral group on the last two axes: ``op % 4`` quarter turns,
    after a horizontal flip when ``op >= 4``."""
    import torch

    if op >= 4:
        x = x.flip(-1)
    return torch.rot90(x, op % 4, dims=(-2, -1))


def dihedral_inverse(x, op: int):
    """Undo :func:`dihedral` ``op``: ``dihedral_inverse(dihedral(x, op), op) == x``."""
    import torch

    x = torch.rot90(x, -(op % 4), dims=(-2, -1))
    return x.flip(-1) if op >= 4 else x
