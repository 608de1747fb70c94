"""Patch datasets: image folders with one sub-folder per class (``0/`` normal, ``1/`` tumour).

Patches are decoded once into one uint8 array in memory (20,000 PCam patches of 96 x 96 x 3
are 550 MB), so every epoch after loading costs no decoding at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .events import Progress

__all__ = ["PatchFolder", "load_patch_folder", "iterate_patch_folder", "augment_batch", "dihedral", "dihedral_inverse",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass
class PatchFolder:
    """Decoded patches and labels of one folder.

    Attributes
    ----------
    root : str
        The folder read.
    images : np.ndarray
        (N, H, W, 3) uint8.
    labels : np.ndarray
        (N,) int64 class indices (position of the class folder in ``classes``).
    classes : tuple[str, ...]
        Class folder names, index = label.
    files : list[str]
        Source file of each patch, relative to ``root``.
    """

    root: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    files: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self) -> dict:
        """Counts per class, for checkpoint headers and logs."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {
            "root": self.root,
            "n": int(len(self)),
            "per_class": {c: int(n) for c, n in zip(self.classes, counts, strict=False)},
            "patch_shape": list(self.images.shape[1:]),
        }


def list_patch_files(root: str | os.PathLike, classes: tuple[str, ...] = ("0", "1")) -> tuple[list[str], np.ndarray]:
    """Image files under ``root/<class>/`` (sorted) and their labels.

    Raises
    ------
    DatasetError
        Missing folder, missing class folder, or no images at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("dataset folder not found", root)
    files, labels = [], []
    for label, name in enumerate(classes):
        sub = root / name
        if not sub.is_dir():
            raise DatasetError(f"class folder '{name}/' is missing (expected sub-folders {', '.join(classes)})", root)
        found = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DatasetError(f"class folder '{name}/' holds no images ({', '.join(IMAGE_SUFFIXES)})", root)
        files += [str(p.relative_to(root)) for p in found]
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"cannot decode image ({exc})", path) from exc


def iterate_patch_folder(
    root: str | os.PathLike,
    classes: tuple[str, ...] = ("0", "1"),
    workers: int = 0,
    limit: int | None = None,
    seed: int = 0,
) -> Iterator[Progress]:
    """Decode a patch folder, yielding progress; returns the :class:`PatchFolder`.

    Parameters
    ----------
    workers : int
        Decoding threads (PIL releases the GIL while decoding); 0 decodes in this thread.
    limit : int, optional
        Keep a class-stratified random subset of this many patches (seeded).
    """
    files, labels = list_patch_files(root, classes)
    if limit is not None and limit < len(files):
        rng = np.random.default_rng(seed)
        keep = []
        for label in range(len(classes)):
            idx = np.flatnonzero(labels == label)
            share = int(round(limit * len(idx) / len(files)))
            keep.append(rng.choice(idx, size=min(share, len(idx)), replace=False))
        keep = np.sort(np.concatenate(keep))
        files, labels = [files[i] for i in keep], labels[keep]
    root = Path(root)
    first = _decode(root / files[0])
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    step = max(len(files) // 50, 1)
    chunks = [range(i, min(i + step, len(files))) for i in range(0, len(files), step)]

    def load(chunk: range) -> None:
        for i in chunk:
            im = _decode(root / files[i])
            if im.shape != first.shape:
                raise DatasetError(f"patch is {im.shape[1]}x{im.shape[0]} but the first patch is {first.shape[1]}x{first.shape[0]}", root / files[i])
            images[i] = im

    if workers > 0:
        with ThreadPoolExecutor(workers) as pool:
            for done, _ in enumerate(pool.map(load, chunks), 1):
                yield Progress("load", done, len(chunks), f"decoding {root}")
    else:
        for done, chunk in enumerate(chunks, 1):
            load(chunk)
            yield Progress("load", done, len(chunks), f"decoding {root}")
    return PatchFolder(str(root), images, labels, tuple(classes), files)


def load_patch_folder(root: str | os.PathLike, **kwargs) -> PatchFolder:
    """Blocking version of :func:`iterate_patch_folder`."""
    gen = iterate_patch_folder(root, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


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
