"""Menu commands (Layers > Segment): small actions on the selected slide layer."""

# No ``from __future__ import annotations``: napari's injection reads these hints at runtime
# (the selected image layer in, a layer-data tuple out).
import napari


def tissue_mask_layer(image: napari.layers.Image) -> napari.types.LayerDataTuple:
    """Tissue mask (Otsu on saturation) of the slide shown in ``image``, as a Labels layer."""
    from napari.utils.notifications import show_error

    from ..errors import GlimpseError
    from ..layers import META_SLIDE, mask_to_layer_data
    from ..slides import open_slide
    from ..slides.tissue import tissue_mask

    path = (image.metadata or {}).get(META_SLIDE) if image is not None else None
    if not path:
        show_error("Tissue mask: select a slide layer opened by napari-glimpse")
        return None
    try:
        with open_slide(path) as slide:
            tissue = tissue_mask(slide)
            mpp = slide.mpp
    except GlimpseError as exc:
        show_error(str(exc))
        return None
    return mask_to_layer_data(tissue.mask, tissue.cell_size, mpp, name=f"{image.name} tissue")
