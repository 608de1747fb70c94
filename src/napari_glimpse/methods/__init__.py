"""Methods: one folder per method, each with one :class:`MethodSpec` registered in
:mod:`.registry` on import of this package (see :mod:`.registry` for what a method writes).

Importing this package imports no torch: each spec names its callables lazily.
"""

from ..runtime.run import infer
from . import _builtin  # noqa: F401  (registers the built-in methods)
from .registry import LoadedModel, MethodSpec, get_method, list_methods, load_model, register

__all__ = ["infer", "LoadedModel", "MethodSpec", "get_method", "list_methods", "load_model", "register"]
