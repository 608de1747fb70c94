"""Glimpse-tree inference on a slide: regions over tissue, the tree per region, the 'All' baseline.

A region is one root glimpse: ``glimpse_size * level_scale ** L`` working pixels square
(4864 px for the defaults). Regions tile the tissue's bounding box on a grid centred on it,
shifted back inside the slide where they would hang over its edge (a slide narrower than a
region gets one region centred on it), and only regions with tissue are processed. Children
are drawn only where their box lies inside the slide and on tissue. The slide score is the
maximum over all leaves (tree) or all tiles ('All'). Every glimpse is read, only its own
pixels, from the coarsest pyramid level at most 5 % coarser than it, and resized unless that
level's scale is within 5 % of the glimpse's (:mod:`napari_glimpse.runtime.regions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ...runtime.regions import choose_level, read_region_at, to_tensor
from .config import GlimpseTreeConfig
from .sampling import sample_children, valid_centres

# to_tensor lives in runtime.regions; re-exported for glimpse_tree/training.py until it imports it there.
__all__ = ["GlimpseNode", "GlimpseReader", "plan_regions", "run_tree", "run_all", "to_tensor",
           "classify_glimpses", "child_fraction_maps"]


@dataclass
class GlimpseNode:
    """One glimpse of a tree, in level-0 pixels."""

    node_id: int
    parent_id: int  # -1 for a root
    level: int
    region: int
    box: tuple[float, float, float, float]  # level-0 (x0, y0, x1, y1)
    kq: float = float("nan")  # the parent's (K * q) at this glimpse's centre
    score: float = float("nan")  # leaf: C's probability; inner glimpse: max over its leaves
    q_map: np.ndarray | None = field(default=None, repr=False)  # Boltzmann Q inside this glimpse
    children: list[int] = field(default_factory=list)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def as_dict(self) -> dict:
        return {"id": self.node_id, "parent": self.parent_id, "level": self.level, "region": self.region,
                "box": [round(float(v), 2) for v in self.box],
                "kq": None if math.isnan(self.kq) else round(float(self.kq), 5),
                "score": None if math.isnan(self.score) else round(float(self.score), 5)}


class GlimpseReader:
    """Reads glimpses of a given tree level from a slide, counting patches and pixels read.

    ``downsample(l)`` is level-0 pixels per pixel of a level-l glimpse: s_l times the
    level-0 pixels per working pixel (working mpp / slide mpp; 1 when the slide has no mpp),
    or the pyramid level's downsample when within 5 % of that (read as is).
    """

    def __init__(self, slide, config: GlimpseTreeConfig):
        self.slide = slide
        self.config = config
        mpp = slide.mpp
        self.mpp_assumed = mpp is None
        self.working_downsample = 1.0 if mpp is None else config.mpp / float(np.mean(mpp))
        self.patches_read = 0
        self.pixels_read = 0

    def downsample(self, level: int) -> float:
        """Level-0 px per pixel of a level-``level`` glimpse as read: s_l times the working
        downsample, or the pyramid level's own where that is within 5 % and read unresized
        (so a glimpse's box is where its pixels are)."""
        return choose_level(self.slide, self.config.downscale(level) * self.working_downsample).downsample

    def pyramid_level(self, downsample: float) -> int:
        """The pyramid level a read at ``downsample`` uses (:func:`~napari_glimpse.runtime.regions.choose_level`)."""
        return choose_level(self.slide, downsample).level

    def read(self, level: int, x0: float, y0: float, size: int | None = None) -> np.ndarray:
        """``size`` x ``size`` glimpse pixels (default glimpse_size) at tree level ``level``."""
        size = size or self.config.glimpse_size
        self.patches_read += 1
        return self.read_strip(level, x0, y0, size, size)

    def read_strip(self, level: int, x0: float, y0: float, width: int, height: int) -> np.ndarray:
        """A ``width`` x ``height`` block of glimpse pixels at tree ``level`` (level-0 corner x0, y0).

        Read by :func:`~napari_glimpse.runtime.regions.read_region_at`: only the part inside
        the slide is read, the rest is white.
        """
        img, pixels = read_region_at(self.slide, x0, y0, width, height, self.downsample(level))
        self.pixels_read += pixels
        return img


def plan_regions(dimensions: Sequence[int], tissue, region_px: float,
                 within: Sequence[float] | None = None) -> list[tuple[float, float, float, float]]:
    """Root-glimpse boxes (level 0) on a grid centred on the tissue, those holding tissue.

    Parameters
    ----------
    dimensions
        Slide level-0 (width, height).
    tissue
        A TissueMask or None (the whole slide counts as tissue).
    region_px
        A region's edge in level-0 pixels.
    within
        Optional level-0 box (x0, y0, x1, y1) to restrict the search to.
    """
    w0, h0 = dimensions
    bx0, by0, bx1, by1 = (0.0, 0.0, float(w0), float(h0)) if within is None else map(float, within)
    if tissue is not None and np.any(tissue.mask):
        rows = np.flatnonzero(tissue.mask.any(1))
        cols = np.flatnonzero(tissue.mask.any(0))
        cs = tissue.cell_size
        bx0, bx1 = max(bx0, cols[0] * cs), min(bx1, (cols[-1] + 1) * cs)
        by0, by1 = max(by0, rows[0] * cs), min(by1, (rows[-1] + 1) * cs)
        if bx1 <= bx0 or by1 <= by0:
            return []
    nx, ny = max(1, math.ceil((bx1 - bx0) / region_px - 1e-9)), max(1, math.ceil((by1 - by0) / region_px - 1e-9))
    sx = round((bx0 + bx1) / 2 - nx * region_px / 2)
    sy = round((by0 + by1) / 2 - ny * region_px / 2)
    xs = [_inside(sx + i * region_px, region_px, w0) for i in range(nx)]
    ys = [_inside(sy + j * region_px, region_px, h0) for j in range(ny)]
    boxes = []
    for y in ys:
        for x in xs:
            box = (x, y, x + region_px, y + region_px)
            if box in boxes:
                continue
            if tissue is None or not np.any(tissue.mask) or tissue.fraction(*box) > 0:
                boxes.append(box)
    return boxes


def _inside(start: float, region_px: float, extent: float) -> float:
    """A region's start moved so it does not hang over the slide's edge: edge regions of a grid
    overlap their neighbours instead of reading glass; a slide narrower than a region is centred."""
    if extent <= region_px:
        return float(round((extent - region_px) / 2))
    return float(min(max(start, 0.0), extent - region_px))


def child_fraction_maps(box, downsample: float, size: int, dimensions: Sequence[int], tissue,
                        config: GlimpseTreeConfig) -> list[tuple[np.ndarray, float]]:
    """Inside-the-slide and tissue maps on a parent glimpse's pixels, for :func:`valid_centres`.

    Both are sampled at the parent's pixel centres (nearest tissue-mask cell), so the box mean
    over a child is the fraction of the child inside the slide / on tissue. Costs two small
    index look-ups per parent: the tissue mask is the one computed for region planning.
    """
    w0, h0 = dimensions
    centres = (np.arange(size) + 0.5) * downsample
    cx, cy = box[0] + centres, box[1] + centres
    in_x, in_y = (cx >= 0) & (cx < w0), (cy >= 0) & (cy < h0)
    pairs = [(np.outer(in_y, in_x).astype(np.float64), config.child_inside_min)]
    if tissue is not None and config.child_tissue_min > 0 and np.any(tissue.mask):
        rows, cols = tissue.mask.shape
        r, c = np.floor(cy / tissue.cell_size).astype(int), np.floor(cx / tissue.cell_size).astype(int)
        ok_r, ok_c = (r >= 0) & (r < rows), (c >= 0) & (c < cols)
        t = tissue.mask[np.clip(r, 0, rows - 1)][:, np.clip(c, 0, cols - 1)] & np.outer(ok_r & in_y, ok_c & in_x)
        pairs.append((t.astype(np.float64), config.child_tissue_min))
    return pairs


def classify_glimpses(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """C's probabilities (N,) for (N, S, S, 3) uint8 glimpses."""
    import torch

    if len(images) == 0:
        return np.zeros(0, np.float64)
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(torch.sigmoid(model.classify(to_tensor(images[i : i + batch_size], device))).double().cpu())
    return torch.cat(out).numpy()


def run_tree(model, reader: GlimpseReader, root_box, region: int, rng: np.random.Generator,
             branching: Sequence[int], temperature: float, first_id: int = 0, classify: bool = True,
             tissue=None) -> list[GlimpseNode]:
    """The glimpse tree of one region (eval mode, no gradients); nodes in breadth-first order.

    Children are drawn only at centres whose box lies inside the slide and, given a ``tissue``
    mask, on tissue (config ``child_inside_min`` / ``child_tissue_min``). Each glimpse carries a
    budget of leaves (the root: N_G = prod(branching)); a glimpse whose valid centres run out
    before it has its ``branching[l]`` children (a slide smaller than the region, a thin biopsy)
    passes the missing children's leaves on to the children it has, so a region keeps N_G leaves
    while there is room for them. Where everything fits, this is the paper's fixed branching
    (same draws, same tree). With ``classify=False`` the leaves are placed but neither read nor
    scored (training).
    """
    import torch

    cfg = reader.config
    k, h = cfg.child_extent, cfg.child_extent // 2
    device = next(model.parameters()).device
    root = GlimpseNode(first_id, -1, 0, region, tuple(float(v) for v in root_box))
    nodes = [root]
    frontier = [root]
    budget = {root.node_id: int(np.prod(branching))}  # leaves each glimpse should lead to
    with torch.inference_mode():
        for level in range(cfg.levels):
            images = np.stack([reader.read(level, n.box[0], n.box[1]) for n in frontier])
            q = model.q_map(level, to_tensor(images, device)).double().cpu().numpy()
            ds = reader.downsample(level)
            below = int(np.prod(branching[level + 1 :]))  # leaves under each child of a full tree
            children = []
            for parent, q_p in zip(frontier, q, strict=True):
                valid = valid_centres(child_fraction_maps(parent.box, ds, q_p.shape[0], reader.slide.dimensions,
                                                          tissue, cfg), k)
                leaves_here = budget[parent.node_id]
                centres, kq, big_q = sample_children(q_p, -(-leaves_here // below), k, temperature, rng, valid)
                parent.q_map = big_q.astype(np.float32)
                shares = _split(leaves_here, len(centres))  # first drawn (likeliest) children first
                for (cx, cy), v, share in zip(centres, kq, shares, strict=True):
                    x0, y0 = parent.box[0] + (cx - h) * ds, parent.box[1] + (cy - h) * ds
                    child = GlimpseNode(first_id + len(nodes), parent.node_id, level + 1, region,
                                        (x0, y0, x0 + k * ds, y0 + k * ds), kq=float(v))
                    parent.children.append(child.node_id)
                    nodes.append(child)
                    children.append(child)
                    budget[child.node_id] = share
            frontier = children
    leaves = frontier
    if leaves and classify:
        images = np.stack([reader.read(cfg.levels, n.box[0], n.box[1]) for n in leaves])
        for n, p in zip(leaves, classify_glimpses(model, images), strict=True):
            n.score = float(p)
    by_id = {n.node_id: n for n in nodes}
    for n in reversed(nodes):  # children come after parents: propagate maxima upwards
        if n.children:
            n.score = max(by_id[c].score for c in n.children)
    return nodes


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal integers, larger ones first (5 over 2 -> [3, 2])."""
    if parts <= 0:
        return []
    q, r = divmod(total, parts)
    return [q + 1] * r + [q] * (parts - r)


def run_all(model, reader: GlimpseReader, root_box, tissue, tissue_min: float, batch_size: int = 32
            ) -> np.ndarray:
    """'All': C on every leaf-sized tile of a region ((n, n) probabilities), or only on tiles with at
    least ``tissue_min`` tissue (NaN where skipped).

    Tiles wholly outside the slide (a region larger than the slide) are skipped too (NaN): they
    are glass the reader would fill white, and the tree never draws them either.
    """
    cfg = reader.config
    s = cfg.glimpse_size
    n = cfg.level_scale**cfg.levels
    tile = s * reader.downsample(cfg.levels)
    x0, y0 = root_box[0], root_box[1]
    w0, h0 = reader.slide.dimensions
    starts = np.arange(n) * tile
    in_x = np.clip(np.minimum(x0 + starts + tile, w0) - np.maximum(x0 + starts, 0), 0, None) / tile
    in_y = np.clip(np.minimum(y0 + starts + tile, h0) - np.maximum(y0 + starts, 0), 0, None) / tile
    out = np.full((n, n), np.nan)
    for r in range(n):
        keep = [c for c in range(n) if in_y[r] * in_x[c] > 0 and (
                tissue is None or tissue_min <= 0
                or tissue.fraction(x0 + c * tile, y0 + r * tile, x0 + (c + 1) * tile, y0 + (r + 1) * tile) >= tissue_min)]
        if not keep:
            continue
        c0, c1 = keep[0], keep[-1] + 1  # one read per row of tiles, only the span with tissue
        strip = reader.read_strip(cfg.levels, x0 + c0 * tile, y0 + r * tile, (c1 - c0) * s, s)
        images = np.stack([strip[:, (c - c0) * s : (c - c0 + 1) * s] for c in keep])
        reader.patches_read += len(keep)
        out[r, keep] = classify_glimpses(model, images, batch_size)
    return out
