"""Running any registered method on a slide: the one path the CLI, the widgets, ``view`` and
the Python API share.

:func:`run_inference` opens the slide (or takes an open one), resolves the inference config
(:func:`~napari_glimpse.methods.registry.infer_config_for`), drives the method's ``infer``
and completes the summary every method has (:data:`SUMMARY_KEYS`), so results of different
methods can be compared on one slide.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import GlimpseError

__all__ = ["run_inference", "infer", "SUMMARY_KEYS", "top_evidence", "MAX_EVIDENCE"]

#: Keys every ``summary.json`` has, whatever the method.
SUMMARY_KEYS = ("method", "slide_score", "seconds", "patches_read", "pixels_read", "device",
                "checkpoint", "evidence")
#: At most this many evidence points per result.
MAX_EVIDENCE = 10


def top_evidence(xy, scores=None, limit: int = MAX_EVIDENCE) -> list[list[float]]:
    """Level-0 ``[x, y]`` points, best (highest score) first, at most ``limit``."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if scores is not None and len(xy):
        order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
        xy = xy[order]
    return [[round(float(x), 2), round(float(y), 2)] for x, y in xy[:limit]]


def run_inference(spec, slide, model, config=None, region: Sequence[float] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Generator:
    """Run ``spec``'s ``infer`` on a slide; yields Progress, returns its InferenceResult.

    Parameters
    ----------
    spec
        A MethodSpec or a registered name.
    slide
        An open Slide, or a path (opened and closed here).
    model
        A :class:`~napari_glimpse.methods.registry.LoadedModel` (``registry.load_model``).
    config
        The inference config; default: built from the checkpoint and ``overrides``.
    region
        Level-0 (x0, y0, x1, y1), or None for the whole slide.

    The slide score is re-aggregated and called by :func:`napari_glimpse.calls.apply_call`
    (``slide_call``, ``threshold``, ``threshold_rule``). The summary gets ``method``,
    ``seconds`` (the whole run, the slide's opening included),
    ``device`` and ``checkpoint``; the method must have set ``slide_score``,
    ``patches_read``, ``pixels_read`` and ``evidence``.
    """
    from ..methods.registry import get_method, infer_config_for

    spec = get_method(spec)
    t0 = time.perf_counter()
    if config is None:
        try:
            config = infer_config_for(spec, model, overrides)
        except ValueError as exc:
            raise GlimpseError(str(exc)) from None
    if isinstance(slide, (str, os.PathLike)):
        from ..slides import open_slide

        with open_slide(slide) as opened:
            result = yield from spec.get("infer")(opened, model, config, region)
    else:
        result = yield from spec.get("infer")(slide, model, config, region)
    from ..calls import apply_call

    summary = result.summary
    missing = [k for k in ("slide_score", "patches_read", "pixels_read", "evidence") if k not in summary]
    if missing:
        raise RuntimeError(f"method {spec.name!r}: its infer() left {', '.join(missing)} out of the summary")
    apply_call(spec, result, config)
    summary.update(method=spec.name, seconds=time.perf_counter() - t0, device=model.device,
                   checkpoint=model.checkpoint)
    if region is not None:  # what was processed, for every method (some record their own)
        summary.setdefault("region", [int(v) for v in region])
    summary["evidence"] = [list(map(float, p)) for p in summary["evidence"]][:MAX_EVIDENCE]
    result.slide_score = summary["slide_score"]
    return result


def infer(method, slide, checkpoint=None, *, model=None, device: str | None = None,
          region: Sequence[float] | None = None, **params) -> Generator:
    """The Python API: run a method on a slide (a path or an open Slide) with inference-config
    overrides as keywords; yields Progress, returns the InferenceResult.

    ``model`` is a loaded model (:func:`~napari_glimpse.methods.registry.load_model`), or a
    bare network with a ``config`` attribute; else ``checkpoint`` is loaded (None: the
    shipped default, or a name of the method's shipped weights).

    Examples
    --------
    >>> from napari_glimpse.methods import infer
    >>> from napari_glimpse.runtime.events import run_to_end
    >>> result = run_to_end(infer("glimpse-tree", "slide.svs", "mil", leaves=16))  # doctest: +SKIP
    """
    from ..methods.registry import LoadedModel, get_method, load_model

    spec = get_method(method)
    if model is None:
        model = load_model(spec, checkpoint, device)
    elif not isinstance(model, LoadedModel):
        dev = next(iter(model.parameters())).device if hasattr(model, "parameters") else device
        model = LoadedModel(spec.name, model, model.config, None if checkpoint is None else str(checkpoint),
                            str(dev or "cpu"))
    return (yield from run_inference(spec, slide, model, region=region, overrides=params))
