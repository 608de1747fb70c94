"""Methods: one module per method, each registered in :mod:`.registry` on import of this package.

Importing this package imports no torch: each spec's callables import their method lazily.
"""

from . import _builtin  # noqa: F401  (registers the built-in methods)
from .registry import MethodSpec, get_method, list_methods, register

__all__ = ["MethodSpec", "get_method", "list_methods", "register"]
