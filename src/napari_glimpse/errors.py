"""The project's exception types: one message that names the file and the problem."""

from __future__ import annotations

import os


class GlimpseError(Exception):
    """Base class of every error napari-glimpse raises on bad input.

    The message always names the offending file (when there is one) and the problem,
    so the CLI can print it as one line and the viewer as one notification.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class SlideError(GlimpseError):
    """A slide cannot be opened or read (missing, not an image, truncated, unsupported)."""


class AnnotationError(GlimpseError):
    """An annotation file cannot be read, or does not fit the slide."""


class CheckpointError(GlimpseError):
    """A checkpoint is corrupt, unsafe, or belongs to another method / config."""


class DatasetError(GlimpseError):
    """A training or evaluation dataset is missing, empty or malformed."""
