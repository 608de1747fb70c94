"""npe2 reader: slides, annotation files and inference-result folders -> napari layers.

What is claimed (anything else gets ``None`` so napari can ask another reader):

- a slide (``.svs .tif .tiff .ome.tif .ndpi .ptif .btf .png .jpg .jpeg``, a DICOM ``.dcm``
  or a folder of DICOM files) -> one lazy,
  multiscale RGB image layer in microns (:func:`napari_glimpse.layers.slide_to_layer_data`);
  a ``<stem>.mask.tif`` ground-truth mask beside a mosaic slide opens as a Labels layer;
- an annotation file (``.geojson``, or ``.xml`` holding ``<Annotation``) -> a Shapes layer;
- a folder holding ``summary.json`` -> the layers of that inference result.

Where annotations land: a reader cannot see the viewer, so an annotation file is placed
with the mpp of the slide *beside it*: the first of ``<stem>.svs``, ``<stem>.tif``, ... (the
stem shortened at each dot, so ``CMU-1.annotations.geojson`` finds ``CMU-1.svs``) that opens.
With no slide beside it, the file's coordinates are shown as level-0 pixels at 1 um/px (the
same world a slide without mpp gets) and a warning says so.

A claimed file that turns out broken gives one napari error notification naming the file and
the problem, and the reader returns napari's "nothing to add" sentinel ``[(None,)]`` rather
than raising (so napari does not add a second, less helpful error).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import GlimpseError

SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".ndpi", ".ptif", ".btf",
    ".png", ".jpg", ".jpeg", ".dcm",
)  # fmt: skip
ANNOTATION_SUFFIXES = (".geojson", ".xml")
MASK_SUFFIX = ".mask.tif"
_NOTHING = [(None,)]  # npe2's "read fine, no layers" sentinel


def napari_get_reader(path):
    """Return a reader function for ``path`` if this plugin handles it, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None  # stacks of slides make no sense
        path = path[0]
    p = os.fspath(path)
    lower = p.lower()
    if os.path.isdir(p):
        if os.path.isfile(os.path.join(p, "summary.json")):
            return read_result_folder
        from ..slides._dicom import dicom_files

        return read_slide if dicom_files(p) else None  # a DICOM whole-slide file set
    if lower.endswith(MASK_SUFFIX):
        return read_mask
    if lower.endswith(".geojson"):
        return read_annotations
    if lower.endswith(".xml"):
        return read_annotations if _looks_like_annotation_xml(p) else None
    if lower.endswith(SLIDE_SUFFIXES):
        return read_slide
    return None


def _looks_like_annotation_xml(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"<Annotation" in head or b"<ASAP_Annotations" in head


def _single(path) -> str:
    return os.fspath(path[0] if isinstance(path, (list, tuple)) else path)


def _fail(exc: Exception, path: str):
    from napari.utils.notifications import show_error

    message = str(exc) if isinstance(exc, GlimpseError) else f"{path}: {exc}"
    show_error(message)
    return _NOTHING


# ----------------------------------------------------------------------------- slides


def read_slide(path, stack: bool = False):
    """A slide file -> ``[slide layer]`` (lazy)."""
    from ..layers import slide_to_layer_data
    from ..slides import open_slide

    p = _single(path)
    try:
        # The dask levels keep their own file handles open while napari shows them, so the
        # slide is not closed here.
        slide = open_slide(p)
        return [slide_to_layer_data(slide)]
    except (GlimpseError, OSError, ValueError) as exc:
        return _fail(exc, p)


def read_mask(path, stack: bool = False):
    """A mosaic's ``<stem>.mask.tif`` ground truth -> ``[labels layer]`` aligned with its slide."""
    p = _single(path)
    try:
        return [load_mask_layer(p)]
    except (GlimpseError, OSError, ValueError) as exc:
        return _fail(exc, p)


def load_mask_layer(mask_path: str, name: str | None = None):
    """A mosaic's ground-truth label mask -> labels layer data placed on its slide.

    The slide is ``<stem>.tif`` beside ``<stem>.mask.tif``: it gives the mpp and the level-0
    size from which the mask's downsample is inferred. Without it, the mask is taken as
    level 0 at 1 um/px.
    """
    from ..annotations import read_label_mask
    from ..layers import mask_to_layer_data
    from ..slides import open_slide

    slide_path = mask_path[: -len(MASK_SUFFIX)] + ".tif"
    slide_mpp, slide_dims = None, None
    if os.path.isfile(slide_path):
        with open_slide(slide_path) as slide:
            slide_mpp, slide_dims = slide.mpp, slide.dimensions
    # A coarser pyramid level of the mask is enough to show it (labels survive: nearest).
    lm = read_label_mask(mask_path, slide_dims, max_pixels=2**24)
    return mask_to_layer_data(
        lm.mask,
        lm.downsample,
        slide_mpp,
        name=name or Path(mask_path).name,
        metadata={"mask_path": mask_path, "slide_path": slide_path if slide_dims else None},
    )


# ----------------------------------------------------------------------------- annotations


def sibling_slide(path: str) -> str | None:
    """The slide file beside an annotation file (``<stem>.svs`` etc.), or None."""
    folder, name = os.path.split(path)
    parts = name.split(".")
    for n in range(len(parts) - 1, 0, -1):
        stem = ".".join(parts[:n])
        for suffix in SLIDE_SUFFIXES:
            candidate = os.path.join(folder, stem + suffix)
            if candidate != path and os.path.isfile(candidate):
                return candidate
    return None


def annotation_mpp(path: str):
    """(mpp or None, slide path or None) used to place annotation file ``path``."""
    from ..slides import open_slide

    slide_path = sibling_slide(path)
    if slide_path is None:
        return None, None
    try:
        with open_slide(slide_path) as slide:
            return slide.mpp, slide_path
    except GlimpseError:
        return None, None


def read_annotations(path, stack: bool = False):
    """A GeoJSON / XML annotation file -> ``[shapes layer]`` in the sibling slide's microns."""
    from ..layers import annotations_to_shapes_data

    p = _single(path)
    try:
        polygons, names, classes, types = _load_annotations(p)
        mpp, slide_path = annotation_mpp(p)
    except (GlimpseError, OSError, ValueError) as exc:
        return _fail(exc, p)
    if slide_path is None:
        from napari.utils.notifications import show_warning

        show_warning(
            f"{p}: no slide beside this file; annotations are shown in level-0 pixels "
            "(1 um/px). Put the slide next to it with the same name to align them."
        )
    meta = {"annotation_path": p, "slide_path": slide_path}
    return [
        annotations_to_shapes_data(
            polygons, mpp, names, classes, types, name=Path(p).name, metadata=meta
        )
    ]


def _load_annotations(path: str):
    """(polygons, names, classes, shape types) from the annotations module's reader.

    Holes are not drawn: napari Shapes have no polygons with holes (the outer ring is shown).
    """
    from .. import annotations

    items = annotations.read_annotations(path)
    polygons = [a.polygon for a in items]
    names = [a.name or "" for a in items]
    classes = [a.label or "" for a in items]
    return polygons, names, classes, ["polygon"] * len(items)


# ----------------------------------------------------------------------------- results


def read_result_folder(path, stack: bool = False):
    """A saved inference result folder -> its maps, boxes, lines and points layers."""
    from ..layers import result_to_layers
    from ..runtime.results_io import load_result

    p = _single(path)
    try:
        result = load_result(p)
    except (GlimpseError, OSError, ValueError) as exc:
        return _fail(exc, p)
    layers = result_to_layers(result)
    return layers or _NOTHING
