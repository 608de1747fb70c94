"""Whole-slide images, read lazily: ``open_slide(path) -> Slide``."""

from ..errors import SlideError
from ._slide import Level, Slide, open_slide

__all__ = ["Level", "Slide", "SlideError", "open_slide"]
