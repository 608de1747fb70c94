"""The models ``napari-glimpse view`` runs on the sample mosaic, with a result cache.

Every registered method that ships a default checkpoint runs through the same registry
``infer`` generator the "Run model" widget uses. A finished result is saved under
``<mosaic cache>/results/<method>-<hash>``, the hash covering the checkpoint's bytes and the
inference parameters, so a second start loads it instead of recomputing.

Nothing here imports Qt: :func:`run_models` is a Progress generator that the viewer wraps
in a ``thread_worker`` (interactive) or drains in the main thread (headless).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MethodRun:
    """One method's result on the sample mosaic and how it was obtained."""

    method: str
    checkpoint: str
    result: Any  # InferenceResult
    cache_dir: str
    cached: bool
    seconds_wall: float
    info: dict[str, Any] = field(default_factory=dict)


def default_methods() -> list[tuple[str, str]]:
    """(name, checkpoint path) of every registered method with a bundled checkpoint on disk."""
    from ..methods.registry import get_method, list_methods

    out = []
    for name in list_methods():
        ckpt = get_method(name).default_checkpoint()
        if ckpt:
            out.append((name, ckpt))
    return out


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(method: str, checkpoint: str, params: dict[str, Any]) -> str:
    """Folder name for a result: method, then a hash of the checkpoint bytes, the parameters
    and the package version (an upgrade may change what a method computes)."""
    from .. import __version__

    h = hashlib.sha256(_file_hash(checkpoint).encode())
    h.update(__version__.encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return f"{method}-{h.hexdigest()[:12]}"


def run_models(
    slide_path: str,
    results_root: str | os.PathLike,
    methods: list[tuple[str, str]] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    rerun: bool = False,
) -> Generator:
    """Run (or load from the cache) each method on ``slide_path``.

    Yields
    ------
    Progress
        While a method runs (its own progress reports, passed on).
    MethodRun
        When a method is done (also yielded, so a GUI can add its layers at once).

    Returns
    -------
    list of MethodRun
        Also holds a ``MethodRun`` with ``result=None`` and ``info["error"]`` for a method
        that failed: one broken method must not hide the others.
    """
    from ..errors import GlimpseError
    from ..methods.registry import get_method, load_model
    from ..runtime.results_io import load_result, save_result
    from ..runtime.run import run_inference

    methods = default_methods() if methods is None else methods
    params = params or {}
    runs = []
    for name, ckpt in methods:
        kw = dict(params.get(name, {}))
        folder = Path(results_root) / cache_key(name, ckpt, kw)
        t0 = time.perf_counter()
        try:
            if not rerun and (folder / "summary.json").is_file():
                result, cached = load_result(folder), True
            else:
                spec = get_method(name)
                result = yield from run_inference(spec, slide_path, load_model(spec, ckpt), overrides=kw)
                save_result(result, folder)
                cached = False
        except (GlimpseError, RuntimeError, ValueError, OSError) as exc:
            run = MethodRun(name, ckpt, None, str(folder), False, time.perf_counter() - t0,
                            {"error": f"{type(exc).__name__}: {exc}"})
        else:
            run = MethodRun(name, ckpt, result, str(folder), cached, time.perf_counter() - t0)
        runs.append(run)
        yield run
    return runs
