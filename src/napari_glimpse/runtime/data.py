"""Training and evaluation data: the three kinds of folder every method reads.

Patch folders
    One sub-folder per class (``0/``, ``1/``, ...) of PNG / JPEG / TIFF patches of one size,
    decoded once into one uint8 array (:func:`load_patch_folder`; 20,000 PCam patches of
    96 x 96 x 3 are 550 MB, so no epoch after loading decodes anything).
Slide-labelled folders
    Slides plus one ``labels.csv`` (header ``slide,label``; slide = stem or file name), and
    optionally per slide ``<stem>.geojson`` / ``.json`` / ``.xml`` polygons or a
    ``<stem>.mask.tif|png`` / ``<stem>_mask.tif|png`` label image (:func:`find_slides`).
    Labels are class indices when every label is an integer, regression targets (float)
    when every label is a number, and otherwise class names, numbered in sorted order
    (:class:`Labels` records the names).
Annotated images
    Slides or plain PNG / JPEG / TIFF images with polygons or a label image beside them, the
    usual segmentation layout (:func:`find_annotated`). An image without a pixel size is
    taken at the model's working resolution unless ``mpp`` is given. Label values of a mask
    image are class indices (0 background); polygons are class 1 unless their class is
    named in ``classes`` or is itself an integer ("2"); exclusion regions are background.

Every problem is a :class:`~napari_glimpse.errors.DatasetError` naming the folder or file.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AnnotationError, DatasetError, SlideError
from .events import Progress

__all__ = ["PatchFolder", "list_patch_files", "iterate_patch_folder", "load_patch_folder", "IMAGE_SUFFIXES",
           "SlideItem", "Labels", "read_labels", "find_slides", "SLIDE_SUFFIXES",
           "AnnotatedImage", "find_annotated"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide")
ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")
MASK_SUFFIXES = (".mask.tif", ".mask.tiff", ".mask.png", "_mask.tif", "_mask.tiff", "_mask.png")


# ------------------------------------------------------------------------ patch folders


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


# --------------------------------------------------------------- slide-labelled folders


@dataclass
class SlideItem:
    """One slide of a folder with its label and its annotation file (if any).

    ``label`` is a class index (int), a regression target (float) or None (unlabelled).
    """

    path: str
    stem: str
    label: int | float | None
    annotation: str | None  # polygons (GeoJSON / XML) or a mask image


@dataclass(frozen=True)
class Labels:
    """A ``labels.csv``: label per slide stem, and what the labels are.

    Attributes
    ----------
    values : dict[str, int | float]
        Slide stem -> class index or regression target.
    classes : tuple[str, ...] | None
        Class names by index when the file named its classes, else None.
    regression : bool
        Whether the labels are numbers to regress rather than classes.
    path : str
        The file read.
    """

    values: dict
    classes: tuple[str, ...] | None
    regression: bool
    path: str


def _stem(name: str) -> str:
    low = name.lower()
    for suf in (".ome.tiff", ".ome.tif"):
        if low.endswith(suf):
            return name[: -len(suf)]
    for suf in MASK_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return os.path.splitext(name)[0]


def _parse(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        return None


def read_labels(path: str | os.PathLike, binary: bool = False) -> Labels:
    """Read ``labels.csv`` (header ``slide,label``).

    Parameters
    ----------
    binary
        Every label must be 0 or 1 (a tumour / normal slide classifier).

    Raises
    ------
    DatasetError
        Unreadable file, wrong header, a row without a label, or (``binary``) a label
        other than 0 / 1; the message names the line.
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise DatasetError(f"cannot read labels ({exc.strerror})", path) from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["slide", "label"]:
        raise DatasetError("labels.csv must start with the header 'slide,label'", path)
    raw = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        text = row[1].strip() if len(row) > 1 else ""
        if binary:
            label = _parse(text, int)
            if label is None:
                raise DatasetError(f"line {i}: label must be 0 or 1, got {row[1:2]}", path)
            if label not in (0, 1):
                raise DatasetError(f"line {i}: label must be 0 or 1, got {label}", path)
        elif not text:
            raise DatasetError(f"line {i}: slide {row[0].strip()!r} has no label", path)
        raw[_stem(os.path.basename(row[0].strip()))] = text
    texts = list(raw.values())
    if all(_parse(t, int) is not None for t in texts):
        return Labels({k: int(t) for k, t in raw.items()}, None, False, str(path))
    if all(_parse(t, float) is not None for t in texts):
        return Labels({k: float(t) for k, t in raw.items()}, None, True, str(path))
    classes = tuple(sorted(set(texts)))
    index = {c: i for i, c in enumerate(classes)}
    return Labels({k: index[t] for k, t in raw.items()}, classes, False, str(path))


def _is_mask(name: str) -> bool:
    low = name.lower()
    return low.endswith(MASK_SUFFIXES) or ".mask." in low


def _annotation_of(folder: Path, lower: dict[str, str], stem: str, name: str) -> str | None:
    """The first of ``<stem>.mask.*``, ``<stem>_mask.*``, ``.geojson``, ``.json``, ``.xml`` beside ``name``."""
    for suf in MASK_SUFFIXES + ANNOTATION_SUFFIXES:
        cand = lower.get((stem + suf).lower())
        if cand and cand != name and not cand.lower().endswith(".cells.json"):
            return str(folder / cand)
    return None


def _listing(folder: Path) -> tuple[list[str], dict[str, str]]:
    if not folder.is_dir():
        raise DatasetError("no such folder", folder)
    names = sorted(os.listdir(folder))
    return names, {n.lower(): n for n in names}


def find_slides(folder: str | os.PathLike, need: str = "any", binary: bool = False,
                labels: str = "labels.csv") -> list[SlideItem]:
    """Slides of ``folder`` with labels (``labels.csv``) and annotations.

    Parameters
    ----------
    need
        ``"labels"``: every slide needs a label in labels.csv; ``"annotations"``: every
        slide needs pixel annotations, except slides labelled 0 (negative slides need
        none); ``"any"``: whatever is there.
    binary
        Labels must be 0 / 1 (:func:`read_labels`).
    labels
        The labels file's name in ``folder`` (e.g. ``tumour_fraction.csv``, numbers to regress).

    Raises
    ------
    DatasetError
        No slides, a label for a slide that is not in the folder, or what ``need`` asks
        for missing.
    """
    folder = Path(folder)
    names, lower = _listing(folder)
    labels_name = labels
    labels = read_labels(folder / lower[labels_name.lower()], binary) if labels_name.lower() in lower else None
    values = labels.values if labels else {}
    items = []
    for name in names:
        if not name.lower().endswith(SLIDE_SUFFIXES) or _is_mask(name):
            continue
        stem = _stem(name)
        items.append(SlideItem(str(folder / name), stem, values.get(stem), _annotation_of(folder, lower, stem, name)))
    if not items:
        raise DatasetError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) in the folder", folder)
    stems = {i.stem for i in items}
    absent = sorted(s for s in values if s not in stems)
    if absent:
        raise DatasetError(f"{labels_name} names slides that are not in the folder: {absent[:5]}", labels.path)
    missing = [i.stem for i in items if i.stem not in values]
    if values and missing and need == "labels":
        raise DatasetError(f"{labels_name} has no label for {missing[:5]}", folder)
    if need == "labels" and not labels:
        raise DatasetError(f"no {labels_name} (columns slide,label) in the folder", folder)
    if need == "annotations":
        bad = [i.stem for i in items if i.annotation is None and i.label != 0]
        if bad:
            raise DatasetError(f"supervised training needs tumour annotations (<stem>.geojson, .xml or "
                               f".mask.tif) or label 0 in labels.csv; missing for {bad[:5]}", folder)
    return items


# ---------------------------------------------------------------------- annotated images


@dataclass
class AnnotatedImage:
    """A slide or plain image with its pixel annotation (polygons or a label image).

    Attributes
    ----------
    path, stem : str
        The image and its name without suffix.
    annotation : str | None
        GeoJSON / XML polygons or a label image; None: all background.
    mpp : float | None
        Microns per pixel of level 0: ``find_annotated``'s ``mpp`` when given, else the
        file's; None when neither says (then the image is taken at the model's working
        resolution).
    mpp_assumed : bool
        Whether the pixel size is not the file's own (given, or unknown).
    """

    path: str
    stem: str
    annotation: str | None
    mpp: float | None
    mpp_assumed: bool

    def open(self):
        """The image as a :class:`~napari_glimpse.slides.Slide`, with ``mpp`` when one was given."""
        from ..slides import open_slide

        return open_slide(self.path, mpp=self.mpp if self.mpp_assumed else None)

    def label_mask(self, dimensions, downsample: float = 1.0, classes: dict[str, int] | None = None
                   ) -> tuple[np.ndarray, float]:
        """The class of every pixel at ``downsample`` level-0 px per pixel.

        Parameters
        ----------
        dimensions
            The image's level-0 (width, height), or an open Slide.
        downsample
            Level-0 pixels per output pixel.
        classes
            Polygon class name -> index; polygons of other classes are 1 (integer class
            names are their own index), exclusion regions 0.

        Returns
        -------
        labels, downsample
            ``(ceil(h / d), ceil(w / d))`` uint8 class indices and ``d``.

        Raises
        ------
        DatasetError
            An unreadable annotation, or a mask whose size is neither the image's nor an
            integer downsample of it.
        """
        from ..annotations.masks import mask_shape

        dims = tuple(int(v) for v in getattr(dimensions, "dimensions", dimensions))
        shape = mask_shape(dims, downsample)
        if self.annotation is None:
            return np.zeros(shape, np.uint8), float(downsample)
        try:
            if _is_mask(os.path.basename(self.annotation)):
                return _resample_mask(self.annotation, dims, downsample, shape), float(downsample)
            return _rasterise(self.annotation, dims, downsample, classes or {}), float(downsample)
        except AnnotationError as exc:
            raise DatasetError(exc.problem, exc.path or self.annotation) from exc


def _resample_mask(path: str, dims: tuple[int, int], downsample: float, shape) -> np.ndarray:
    """A label image sampled (nearest, at pixel centres) at ``downsample``."""
    from ..annotations.masks import read_label_mask

    lm = read_label_mask(path)
    mh, mw = lm.mask.shape
    k = max(1, round(dims[0] / mw))
    if not (mw in (math.floor(dims[0] / k), math.ceil(dims[0] / k))
            and mh in (math.floor(dims[1] / k), math.ceil(dims[1] / k))):
        raise DatasetError(f"the {mw} x {mh} mask is neither the size of its {dims[0]} x {dims[1]} image "
                           "nor an integer downsample of it", path)
    mask = np.asarray(lm.mask)
    if mask.dtype != np.uint8:
        if mask.dtype == bool:
            mask = mask.astype(np.uint8)
        elif mask.max(initial=0) > 255:
            raise DatasetError(f"label values up to {int(mask.max())}: at most 255 classes", path)
        mask = mask.astype(np.uint8)
    if downsample == k:
        return np.ascontiguousarray(mask[: shape[0], : shape[1]])
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * downsample / k).astype(np.int64), mh - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * downsample / k).astype(np.int64), mw - 1)
    return mask[np.ix_(rows, cols)]


def _rasterise(path: str, dims: tuple[int, int], downsample: float, classes: dict[str, int]) -> np.ndarray:
    from ..annotations import polygons_to_mask, read_annotations

    anns = read_annotations(path, slide_dims=dims)
    values = {}
    for a in anns:
        if a.label not in values and not a.is_exclusion:
            values[a.label] = classes.get(a.label, int(a.label) if a.label.isdigit() else 1)
    return polygons_to_mask(anns, dims, downsample, labels=values)


def _image_mpp(path: str) -> float | None:
    """The file's own microns per pixel (slides: metadata; plain images: their dpi), or None."""
    from ..slides import open_slide

    try:
        with open(path, "rb") as fh:
            tiff = fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
        if tiff or path.lower().endswith(SLIDE_SUFFIXES):
            with open_slide(path) as slide:
                mpp = slide.mpp
        else:  # a PNG / JPEG would be decoded whole by open_slide; its header says enough
            from PIL import Image

            from ..slides._slide import checked_mpp

            with Image.open(path) as im:
                dpi = im.info.get("dpi")
            mpp = None
            if dpi and all(float(d) > 0 for d in dpi[:2]):
                mpp = checked_mpp(path, (25400.0 / float(dpi[0]), 25400.0 / float(dpi[1])))
    except (OSError, SlideError) as exc:
        raise DatasetError(f"cannot read the image ({getattr(exc, 'problem', exc)})", path) from exc
    return None if mpp is None else float(np.mean(mpp))


def find_annotated(folder: str | os.PathLike, *, mpp: float | None = None) -> list[AnnotatedImage]:
    """Images (slides, PNG, JPEG, TIFF) of ``folder`` with the annotation beside each.

    An image's annotation is ``<stem>.mask.png|tif`` / ``<stem>_mask.png|tif`` (a label
    image), else ``<stem>.geojson`` / ``.json`` / ``.xml`` (polygons). Images without one
    are all background.

    Parameters
    ----------
    mpp
        Microns per pixel of every image, overriding the files' own (plain images rarely
        carry a true one).

    Raises
    ------
    DatasetError
        No images, or no image with an annotation.
    """
    folder = Path(folder)
    names, lower = _listing(folder)
    suffixes = SLIDE_SUFFIXES + (".png", ".jpg", ".jpeg")
    images = [n for n in names if n.lower().endswith(suffixes) and not _is_mask(n)]
    if not images:
        raise DatasetError(f"no images ({', '.join(suffixes)}) in the folder", folder)
    items = []
    for name in images:
        stem, path = _stem(name), str(folder / name)
        annotation = _annotation_of(folder, lower, stem, name)
        own = None if mpp is not None else _image_mpp(path)
        items.append(AnnotatedImage(path, stem, annotation, float(mpp) if mpp is not None else own,
                                    mpp is not None or own is None))
    if all(i.annotation is None for i in items):
        raise DatasetError("images but no annotations: expected <stem>.mask.png / .mask.tif / _mask.png, "
                           "<stem>.geojson or <stem>.xml beside them", folder)
    return items
