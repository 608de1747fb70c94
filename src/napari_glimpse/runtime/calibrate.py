"""``napari-glimpse calibrate``: choose a method's slide aggregation and call threshold on
validation slides and write them into a copy of its checkpoint (:mod:`napari_glimpse.calls`).

Every method is calibrated the same way: the method runs once per validation slide (the
aggregation set to ``max`` so the raw window / leaf scores are kept), every aggregation is
scored on those runs, the best eligible one by slide AUC is kept (a candidate within ``tie``
of the best that comes earlier in :data:`~napari_glimpse.calls.AGGREGATIONS` wins: simpler
first), and the threshold is chosen for it by the rule. Methods without a score source (the
model gives the slide score itself) only get the threshold.

Eligible by default: on a dense map (thousands of windows per slide) ``max`` and ``top_k``
are compared and reported but not shipped. They reduce a slide to its few highest windows,
which on a large normal slide are its rarest false positives, so they saturate with slide
size; validation mosaics built from one bank of patches cannot show it, because every
negative mosaic holds the same worst patches. (Seen on held-out mosaics: CELNet's top-k mean
0.962 on validation, 0.48 on mosaics of other patches, where every negative's top windows
scored 1.0.) Name them with ``candidates`` to impose one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np

from ..calls import (
    AGGREGATIONS,
    ScoreSource,
    choose_threshold,
    compare_aggregations,
    cross_bank_accuracy,
)
from .events import Progress

__all__ = ["collect", "select", "calibrate", "write_calibrated", "SATURATING"]

#: Aggregations that reduce a slide to its highest windows (see the module docstring).
SATURATING = ("max", "top_k")


def collect(spec, model, data_dir: str | os.PathLike, *, labels: str = "labels.csv", limit: int = 0,
            cache_dir: str | os.PathLike | None = None, overrides: dict | None = None) -> Generator:
    """Run the method on every labelled slide of ``data_dir`` with the aggregation set to max.

    Yields Progress; returns ``[(stem, label, score, ScoreSource | None, folder name)]``. With
    ``cache_dir``, each slide's scores are kept as ``<stem>.npz`` there and reused (benchmarks
    that re-run a comparison); the cache is the caller's to clear when the model changes.
    """
    from ..methods.registry import get_method, infer_config_for
    from .data import find_slides
    from .run import run_inference

    spec = get_method(spec)
    items = [i for i in find_slides(data_dir, need="labels", labels=labels) if i.label is not None]
    if limit:
        items = items[: int(limit)]
    config = infer_config_for(spec, model, overrides)
    names = {f.name for f in dataclasses.fields(config)}
    if "slide_aggregation" in names:
        config = dataclasses.replace(config, slide_aggregation="max")
    out = []
    for k, item in enumerate(items):
        cached = Path(cache_dir) / f"{item.stem}.npz" if cache_dir else None
        if cached is not None and cached.is_file():
            with np.load(cached) as z:
                source = None if not z["has_source"] else ScoreSource(
                    z["values"], z["grid"] if z["has_grid"] else None, float(z["cell_mm2"]),
                    float(z["patch_threshold"]))
                score = float(z["score"])
        else:
            result = yield from run_inference(spec, item.path, model, config)
            score = float(result.slide_score)
            source = spec.get("score_source")(result, config) if spec.score_source else None
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(".tmp.npz")
                np.savez(tmp, score=score, has_source=source is not None,
                         values=source.values if source else np.zeros(0),
                         has_grid=source is not None and source.grid is not None,
                         grid=source.grid if source is not None and source.grid is not None else np.zeros(0),
                         cell_mm2=source.cell_mm2 if source else 0.0,
                         patch_threshold=source.patch_threshold if source else 0.5)
                os.replace(tmp, cached)
        out.append((item.stem, float(item.label), score, source, str(data_dir)))
        yield Progress("calibrate", k + 1, len(items), f"validation slide {k + 1}/{len(items)}")
    return out


def select(runs, *, rule: str = "youden", k: int = 10, candidates: Sequence[str] | None = None,
           tie: float = 0.005) -> dict:
    """The aggregation and threshold for ``runs`` (:func:`collect`'s list).

    ``candidates``: the aggregations to choose from; None: every one is compared, and the
    choice is among those eligible (on dense maps, not :data:`SATURATING`). When the runs come
    from two or more folders (patch banks) that each hold both classes, the choice is by
    :func:`~napari_glimpse.calls.cross_bank_accuracy` (how well a call chosen on one folder
    holds on the others) instead of the pooled AUC; the threshold is chosen on them all.

    Returns ``{"aggregation", "threshold", "rule", "table"}`` where the table has every
    candidate's validation AUC, threshold and call figures (without per-slide scores);
    ``aggregation`` is None for a method without a score source.
    """
    labels = np.array([r[1] for r in runs]).astype(int)
    if len(np.unique(labels)) < 2:
        raise ValueError("calibration needs validation slides of both classes (labels 0 and 1)")
    if any(r[3] is None for r in runs):
        scores = np.array([r[2] for r in runs])
        return {"aggregation": None, "threshold": choose_threshold(labels, scores, rule), "rule": rule,
                "table": {}, "aggregator": []}
    dense = all(r[3].grid is not None for r in runs)
    eligible = tuple(candidates) if candidates is not None else \
        tuple(a for a in AGGREGATIONS if not (dense and a in SATURATING))
    table = compare_aggregations([r[3] for r in runs], labels, k=k, rule=rule,
                                 candidates=AGGREGATIONS if candidates is None else candidates)
    groups = [r[4] if len(r) > 4 else "" for r in runs]
    banks = [g for g in dict.fromkeys(groups)
             if len(set(labels[[x == g for x in groups]].tolist())) == 2]
    criterion = "auc"
    if len(banks) >= 2:
        criterion = "cross_bank_balanced_accuracy"
        keep = [g in banks for g in groups]
        for name in table:
            table[name][criterion] = cross_bank_accuracy(
                [r[3] for r, on in zip(runs, keep, strict=True) if on], labels[keep],
                [g for g, on in zip(groups, keep, strict=True) if on], name, k=k, rule=rule)
    best = max(table[name][criterion] for name in eligible if name in table)
    chosen = next(name for name in table if name in eligible and table[name][criterion] >= best - tie)
    return {"aggregation": chosen, "threshold": table[chosen]["threshold"], "rule": rule,
            "criterion": criterion, "banks": banks,
            "eligible": [name for name in table if name in eligible],
            "aggregator": table[chosen].get("aggregator", []),
            "table": {name: {key: v for key, v in entry.items() if key != "scores"}
                      for name, entry in table.items()}}


def write_calibrated(spec, checkpoint: str, out: str | os.PathLike, choice: dict, *, data_dir, k: int) -> str:
    """Copy ``checkpoint`` to ``out`` with the chosen aggregation, k, aggregator, threshold
    and rule in its config (each change recorded in the header's ``edits``)."""
    from ..methods.registry import get_method
    from .checkpoint import edit_config

    spec = get_method(spec)
    changes = {"slide_threshold": float(choice["threshold"]), "threshold_rule": choice["rule"]}
    if choice["aggregation"] is not None:
        changes.update(slide_aggregation=choice["aggregation"], aggregation_k=int(k),
                       aggregator=[float(v) for v in choice["aggregator"]])
    auc = (choice["table"].get(choice["aggregation"]) or {}).get("auc")
    why = (f"napari-glimpse calibrate on {Path(data_dir).name} ({choice.get('n', '?')} slides): "
           f"aggregation {choice['aggregation']}" + (f" (validation AUC {auc:.3f})" if auc is not None else "")
           + f", threshold by {choice['rule']}")
    return edit_config(checkpoint, out, changes, why, expected_method=spec.name, config_cls=spec.train_config_cls)


def calibrate(spec, model, data_dir, out: str | os.PathLike | None = None, *, rule: str = "youden",
              k: int | None = None, candidates: Sequence[str] | None = None, labels: str = "labels.csv",
              limit: int = 0, overrides: dict | None = None) -> Generator:
    """Collect, select and (with ``out``) write: yields Progress, returns the report (JSON-able).

    ``data_dir``: one folder of validation slides, or several (one per patch bank / site: the
    choice then favours the call that transfers between them, :func:`select`)."""
    from ..calls import parse_rule

    parse_rule(rule)
    unknown = sorted(set(candidates or ()) - set(AGGREGATIONS))
    if unknown:
        raise ValueError(f"unknown aggregation {', '.join(unknown)}; choose from {', '.join(AGGREGATIONS)}")
    if k is None:
        k = int(getattr(model.config, "aggregation_k", 10))
    folders = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir)
    runs = []
    for folder in folders:
        runs += yield from collect(spec, model, folder, labels=labels, limit=limit, overrides=overrides)
    data_dir = ", ".join(Path(f).name for f in folders) if len(folders) > 1 else folders[0]
    choice = select(runs, rule=rule, k=k, candidates=candidates)
    choice["n"] = len(runs)
    report = {"method": getattr(spec, "name", spec), "checkpoint": model.checkpoint, "data": str(data_dir),
              "n": len(runs), "positives": int(sum(r[1] for r in runs)), **choice, "k": k}
    if out is not None:
        report["written"] = write_calibrated(spec, model.checkpoint, out, choice, data_dir=data_dir, k=k)
    return report
