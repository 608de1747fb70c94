"""Magnification on the pyramid: fields of view, their composition, and the two samplers.

A MagNet never holds a slide in memory. Every image it sees is a square *field* (centre and
half side in level-0 pixels) sampled at S x S: the field is composed from its parent's and a
magnifying layer's ``theta``, the pixels come from the pyramid level whose resolution gives at
least S across the field (plus a margin), and the sampling grid is computed from the field's
tensors, so gradients reach ``theta`` through the sampler:

    level-0 position of output pixel (i, j) = centre + half * R @ (u_j, u_i),
    u_k = (2 k + 1) / S - 1   (pixel centres on [-1, 1], align_corners=False)

``R`` is a fixed 2 x 2 flip / 90-degree turn: augmentation turns the whole slide the network
sees, consistently through every layer.

Samplers (``grid_sample``'s interface, input (B, C, H, W), grid (B, h, w, 2) in [-1, 1]):

``bilinear``
    :func:`torch.nn.functional.grid_sample`; its gradient with respect to the grid is the
    local bilinear slope (zero-measure kinks at pixel borders, no signal beyond one pixel).
``lms``
    Linearized multi-sampling (Jiang et al., ICCV 2019): the forward value is the bilinear one;
    the gradient is the slope of a least-squares plane fitted to the image at ``n`` auxiliary
    points drawn around every sampling point (Gaussian, ``noise_px`` input pixels), which sees
    further than one pixel and is less noisy on textured images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Field", "root_field", "compose", "field_grid", "bilinear_sample", "lms_sample", "sample",
           "SAMPLERS", "grey_filter", "PyramidReader", "TURNS"]

#: the eight flips / 90-degree turns of the square (as 2 x 2 matrices acting on (x, y))
TURNS = tuple(np.array(m, np.float32) for m in (
    [[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]],
    [[-1, 0], [0, 1]], [[1, 0], [0, -1]], [[0, 1], [1, 0]], [[0, -1], [-1, 0]],
))


@dataclass
class Field:
    """A square field of view in level-0 pixels; tensors, so that gradients flow through it."""

    cx: torch.Tensor
    cy: torch.Tensor
    half: torch.Tensor

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in level-0 pixels (plain floats)."""
        cx, cy, h = (float(v.detach()) for v in (self.cx, self.cy, self.half))
        return (cx - h, cy - h, cx + h, cy + h)

    def detach(self) -> Field:
        return Field(self.cx.detach(), self.cy.detach(), self.half.detach())


def root_field(width: int, height: int, device=None) -> Field:
    """The whole slide as one square field: the long side, the short one padded symmetrically
    (the paper's resize-and-pad; outside the slide reads white, which the grey filter blackens)."""
    t = torch.tensor([width / 2.0, height / 2.0, max(width, height) / 2.0], dtype=torch.float32, device=device)
    return Field(t[0], t[1], t[2])


def compose(parent: Field, theta: torch.Tensor, turn: torch.Tensor | None = None) -> Field:
    """The field ``theta = [[s, 0, t_x], [0, s, t_y]]`` selects inside ``parent`` (t in the
    parent's [-1, 1] coordinates, seen through the augmentation ``turn``)."""
    t = theta[:, 2]
    if turn is not None:
        t = turn.to(t) @ t
    return Field(parent.cx + parent.half * t[0], parent.cy + parent.half * t[1], parent.half * theta[0, 0])


def field_grid(field: Field, size: int, turn: torch.Tensor | None = None) -> torch.Tensor:
    """Level-0 (x, y) of the S x S output pixels' centres: (S, S, 2), differentiable in the field."""
    dev = field.cx.device
    u = (2 * torch.arange(size, dtype=torch.float32, device=dev) + 1) / size - 1
    uy, ux = torch.meshgrid(u, u, indexing="ij")
    uv = torch.stack([ux, uy], -1)  # (S, S, 2) as (x, y)
    if turn is not None:
        uv = uv @ turn.to(uv).T
    centre = torch.stack([field.cx, field.cy])
    return centre + field.half * uv


def bilinear_sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear ``grid_sample`` (align_corners=False, border padding)."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def lms_sample(image: torch.Tensor, grid: torch.Tensor, n: int = 8, noise_px: float = 0.5,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Linearized multi-sampling: bilinear values, least-squares gradients (Jiang et al. 2019).

    For every sampling point x0, ``n`` auxiliary points x0 + d_k (d_k ~ N(0, noise_px^2) in
    input pixels) are sampled bilinearly; the plane I(x0 + d) ~ I(x0) + J d fitted to them by
    least squares gives J (per channel), and the output is I(x0) + J (x - x0) with J constant:
    its value is the bilinear one, its gradient with respect to the grid is J.
    """
    b, c, h, w = image.shape
    g0 = grid.detach()
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=grid.dtype, device=grid.device)  # px -> [-1, 1]
    noise = torch.randn((b, n) + tuple(g0.shape[1:]), generator=generator, dtype=grid.dtype,
                        device="cpu" if generator is not None else grid.device).to(grid.device)
    d = noise * noise_px * scale  # (B, n, h', w', 2) in grid units
    with torch.no_grad():
        v0 = bilinear_sample(image, g0)  # (B, C, h', w')
        pts = (g0[:, None] + d).reshape(b, -1, g0.shape[2], 2)
        vk = bilinear_sample(image, pts).reshape(b, c, n, g0.shape[1], g0.shape[2])
        di = vk - v0[:, :, None]  # (B, C, n, h', w')
        a = torch.einsum("bnhwi,bnhwj->bhwij", d, d)
        a = a + 1e-9 * torch.eye(2, dtype=a.dtype, device=a.device)
        rhs = torch.einsum("bnhwi,bcnhw->bhwic", d, di)  # (B, h', w', 2, C)
        jac = torch.linalg.solve(a, rhs)  # (B, h', w', 2, C): dI/dgrid per channel
    step = (grid - g0)  # zero in value, carries the gradient
    lin = torch.einsum("bhwi,bhwic->bchw", step, jac)
    return v0 + lin


SAMPLERS = {"bilinear": bilinear_sample, "lms": lms_sample}


def sample(image: torch.Tensor, grid: torch.Tensor, sampler: str = "bilinear") -> torch.Tensor:
    try:
        fn = SAMPLERS[sampler]
    except KeyError:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}") from None
    return fn(image, grid)


def grey_filter(rgb: np.ndarray, threshold: int = 15) -> np.ndarray:
    """The paper's "grey" filter: pixels whose R, G and B lie within ``threshold`` of each other
    (white glass, grey gradients and artefacts) become black. (h, w, 3) uint8 -> same."""
    if threshold <= 0:
        return rgb
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2).astype(np.int16)
    out = rgb.copy()
    out[spread < threshold] = 0
    return out


class PyramidReader:
    """Samples fields of one open slide: the level, the crop (plus ``margin`` px) and the grid.

    Counts what it read: ``reads`` (crops sampled) and ``pixels_read`` (their pixels). With
    ``threads`` > 1, :meth:`read_many` decodes the crops of one layer in a thread pool.
    """

    def __init__(self, slide, device, sampler: str = "bilinear", grey_threshold: int = 15,
                 margin: int = 2, turn: np.ndarray | None = None, threads: int = 0, region=None):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        self.slide = slide
        self.device = torch.device(device)
        self.sampler = sampler
        self.grey_threshold = int(grey_threshold)
        self.margin = int(margin)
        self.turn = None if turn is None else torch.as_tensor(turn, dtype=torch.float32, device=self.device)
        self.region = None if region is None else tuple(float(v) for v in region)
        self.reads = 0
        self.pixels_read = 0
        # tile decoding releases the GIL: sibling fields are read in parallel
        self._pool = None
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="magnet-read")

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.slide.dimensions

    def root(self, device=None) -> Field:
        """The first layer's field: the whole slide (or ``region``, a level-0 (x0, y0, x1, y1)),
        its short side padded to a square."""
        if self.region is None:
            return root_field(*self.dimensions, device=device)
        x0, y0, x1, y1 = self.region
        t = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2], dtype=torch.float32,
                         device=device)
        return Field(t[0], t[1], t[2])

    def level_for(self, field: Field, size: int) -> int:
        """The coarsest level with at least ``size`` pixels across the field."""
        return self.slide.best_level_for_downsample(2.0 * float(field.half.detach()) / size)

    def _plan(self, field: Field, size: int):
        """(level, downsample, level-0 positions (S, S, 2), crop box (x, y, w, h) in level px)."""
        level = self.level_for(field, size)
        ds = float(self.slide.levels[level].downsample)
        pos = field_grid(field, size, self.turn)  # level-0 (x, y), differentiable
        p = pos.detach() / ds
        x0 = int(np.floor(float(p[..., 0].min()))) - self.margin
        y0 = int(np.floor(float(p[..., 1].min()))) - self.margin
        x1 = int(np.ceil(float(p[..., 0].max()))) + self.margin
        y1 = int(np.ceil(float(p[..., 1].max()))) + self.margin
        return level, ds, pos, (x0, y0, x1 - x0, y1 - y0)

    def _crop(self, level: int, box) -> np.ndarray:
        return grey_filter(self.slide.read_level_box(level, *box), self.grey_threshold)

    def _sample(self, crop: np.ndarray, ds: float, pos: torch.Tensor, box) -> torch.Tensor:
        x0, y0, w, h = box
        self.reads += 1
        self.pixels_read += int(w) * int(h)
        img = torch.from_numpy(np.ascontiguousarray(crop)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        # pixel k of the crop covers [k, k + 1): normalised coordinate 2 (x - x0) / w - 1
        gx = 2.0 * (pos[..., 0] / ds - x0) / w - 1.0
        gy = 2.0 * (pos[..., 1] / ds - y0) / h - 1.0
        return sample(img, torch.stack([gx, gy], -1)[None], self.sampler)[0]

    def read(self, field: Field, size: int) -> torch.Tensor:
        """The field sampled at ``size`` x ``size``: (3, S, S) float in [0, 1], grey-filtered,
        differentiable with respect to the field's tensors."""
        level, ds, pos, box = self._plan(field, size)
        return self._sample(self._crop(level, box), ds, pos, box)

    def read_many(self, fields: list[Field], size: int) -> list[torch.Tensor]:
        """:meth:`read` of several fields, their pixels decoded by a pool of ``threads``."""
        plans = [self._plan(f, size) for f in fields]
        if self._pool is None or len(plans) < 2:
            crops = [self._crop(level, box) for level, _, _, box in plans]
        else:
            crops = list(self._pool.map(lambda pl: self._crop(pl[0], pl[3]), plans))
        return [self._sample(c, ds, pos, box) for c, (_, ds, pos, box) in zip(crops, plans, strict=True)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
