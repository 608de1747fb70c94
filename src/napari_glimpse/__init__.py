"""napari-glimpse: whole-slide images and what attention- and zoom-based models saw in them."""

__version__ = "0.1.0"

from .errors import GlimpseError, SlideError  # noqa: E402

__all__ = ["__version__", "GlimpseError", "SlideError", "open_slide"]


def __getattr__(name):
    # Lazy so that ``import napari_glimpse`` stays cheap (no torch / dask import on napari start-up).
    if name == "open_slide":
        from .slides import open_slide

        return open_slide
    raise AttributeError(name)
