"""Slide calls: how every method turns what it saw into one slide score, a threshold and a call.

One shared piece for every method (no torch, no Qt):

* **Aggregation** (methods whose slide score summarises many window / leaf scores). The
  paper's maximum saturates with slide size: with a patch false-positive rate of a few per
  cent, some window of every large normal slide scores near 1. The alternatives:

  ``max``             the largest score (the papers' rule)
  ``top_k``           the mean of the ``aggregation_k`` largest scores
  ``largest_region``  the area (mm²) of the largest 4-connected region of map cells at or
                      above the method's patch threshold (maps only)
  ``learned``         a logistic regression on the five :data:`FEATURES` of the scores, fitted on
                      validation slides' labels and stored in the checkpoint (``aggregator``)

* **Threshold and call**: ``slide_call = slide_score >= slide_threshold``; the threshold is
  chosen on validation slides by a stated rule (:func:`choose_threshold`): ``youden`` (the ROC
  point of highest sensitivity + specificity) or ``sensitivity:0.9`` (the highest threshold
  that keeps that sensitivity). ``napari-glimpse calibrate`` (:func:`calibrate`) compares the
  aggregations on validation slides, picks one, chooses the threshold and writes them into a
  copy of the checkpoint; methods trained on slides choose their threshold at validation.

A method takes part by giving its configs the fields of :class:`SlideCallParams` (training,
handed to inference) / :class:`SlideCallInfer` (and :class:`AggregationParams` /
:class:`AggregationInfer` when it aggregates), and, to aggregate, a ``score_source`` in its
:class:`~napari_glimpse.methods.registry.MethodSpec` returning a :class:`ScoreSource`.
:func:`apply_call` (run by :func:`napari_glimpse.runtime.run.run_inference`) does the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import param, same_as

__all__ = ["AGGREGATIONS", "FEATURES", "ScoreSource", "SlideCallParams", "SlideCallInfer",
           "AggregationParams", "AggregationInfer", "score_features", "aggregate", "fit_learned",
           "learned_score", "source_from_map", "call_text", "call_summary", "cross_bank_accuracy", "choose_threshold", "parse_rule", "apply_call", "compare_aggregations",
           "call_metrics"]

AGGREGATIONS = ("max", "top_k", "largest_region", "learned")
#: What the learned aggregator sees of a slide's scores (in this order).
FEATURES = ("max", "top_k_mean", "mean", "fraction_above", "log_largest_region_mm2")


# --------------------------------------------------------------------------- config fields


@dataclass
class SlideCallParams:
    """Training-config fields of a slide call, chosen on validation slides, handed to inference."""

    slide_threshold: float = param(0.5, "slide call threshold: a slide scoring at least this is called tumour "
                                   "(chosen on validation slides by threshold_rule)", group="inference")
    threshold_rule: str = param("youden", "how slide_threshold was chosen: youden (max sensitivity + "
                                "specificity) or sensitivity:S (highest threshold keeping sensitivity S)",
                                group="inference")


@dataclass
class SlideCallInfer:
    """Inference-config fields of a slide call (the checkpoint's values unless given)."""

    slide_threshold: float = same_as(SlideCallParams, "slide_threshold")
    threshold_rule: str = same_as(SlideCallParams, "threshold_rule", advanced=True)


@dataclass
class AggregationParams:
    """Training-config fields of the slide aggregation (see the module docstring)."""

    slide_aggregation: str = param("max", "slide score from the window / leaf scores: max (the paper), "
                                   "top_k mean, largest_region area (mm²) or a learned aggregator",
                                   choices=AGGREGATIONS, group="inference")
    aggregation_k: int = param(10, "top_k: how many of the largest scores are averaged", min=1, max=100000,
                               group="inference")
    aggregator: tuple[float, ...] = param((), "learned: feature means, scales, weights and bias (set by "
                                          "calibrate)", group="inference")


@dataclass
class AggregationInfer:
    """Inference-config fields of the slide aggregation (the checkpoint's values unless given)."""

    slide_aggregation: str = same_as(AggregationParams, "slide_aggregation", advanced=True)
    aggregation_k: int = same_as(AggregationParams, "aggregation_k", advanced=True)
    aggregator: tuple[float, ...] = same_as(AggregationParams, "aggregator", advanced=True)


# ------------------------------------------------------------------------- score sources


@dataclass
class ScoreSource:
    """The scores a slide score is aggregated from.

    ``values``: the scores of every tissue window / leaf (1-D); ``grid``: the same as a 2-D map
    with NaN off tissue (or None when the scores lie on no grid); ``cell_mm2``: a map cell's
    area; ``patch_threshold``: the method's per-window tumour threshold.
    """

    values: np.ndarray
    grid: np.ndarray | None = None
    cell_mm2: float = 0.0
    patch_threshold: float = 0.5

    @classmethod
    def from_map(cls, prob: np.ndarray, tissue: np.ndarray, cell_px: float, mpp, patch_threshold: float):
        """A probability map and its tissue mask; ``cell_px`` level-0 px per cell, ``mpp`` um/px."""
        prob = np.asarray(prob, np.float64)
        tissue = np.asarray(tissue, bool)
        grid = np.where(tissue, prob, np.nan)
        um = float(np.mean(mpp)) if mpp is not None else 1.0
        return cls(prob[tissue], grid, (cell_px * um / 1000.0) ** 2, float(patch_threshold))


def source_from_map(result, name: str, patch_threshold: float) -> ScoreSource | None:
    """The :class:`ScoreSource` of the result's map ``name`` (a probability map that is 0 or
    NaN off tissue), or None when the result has no such map."""
    m = next((m for m in result.maps if m.name == name), None)
    if m is None:
        return None
    prob = np.asarray(m.data, np.float64)
    tissue = np.isfinite(prob) & (prob > 0)
    return ScoreSource.from_map(np.nan_to_num(prob), tissue, float(m.cell_size), result.mpp, patch_threshold)


def _largest_region_mm2(source: ScoreSource) -> float:
    if source.grid is None:
        return float(np.count_nonzero(source.values >= source.patch_threshold)) * source.cell_mm2
    from scipy import ndimage

    on = np.nan_to_num(source.grid, nan=-1.0) >= source.patch_threshold
    if not on.any():
        return 0.0
    labels, n = ndimage.label(on)
    return float(np.bincount(labels.ravel())[1:].max()) * source.cell_mm2


def score_features(source: ScoreSource, k: int = 10) -> np.ndarray:
    """The :data:`FEATURES` of one slide's scores (zeros when there are none)."""
    v = np.asarray(source.values, np.float64)
    if v.size == 0:
        return np.zeros(len(FEATURES))
    top = np.sort(v)[::-1][: max(1, int(k))]
    return np.array([v.max(), top.mean(), v.mean(), float(np.mean(v >= source.patch_threshold)),
                     np.log10(_largest_region_mm2(source) + 1e-4)])


def learned_score(aggregator: Sequence[float], features: np.ndarray) -> float:
    """The learned aggregator's probability for one slide's :func:`score_features`."""
    n = len(FEATURES)
    a = np.asarray(aggregator, np.float64)
    if a.size != 3 * n + 1:
        raise ValueError(f"the learned aggregator needs {3 * n + 1} numbers (set by `napari-glimpse calibrate`), "
                         f"got {a.size}")
    mean, scale, w, b = a[:n], a[n : 2 * n], a[2 * n : 3 * n], a[-1]
    z = float(np.dot((np.asarray(features) - mean) / scale, w) + b)
    return float(1.0 / (1.0 + np.exp(-z)))


def fit_learned(features: np.ndarray, labels: np.ndarray, C: float = 1.0) -> tuple[float, ...]:
    """A logistic regression on standardised :data:`FEATURES` (scikit-learn), as the flat
    ``aggregator`` tuple :func:`learned_score` reads."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, np.float64)
    y = np.asarray(labels).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("a learned aggregator needs validation slides of both classes")
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-9] = 1.0
    clf = LogisticRegression(C=C, max_iter=1000).fit((x - mean) / scale, y)
    return tuple(float(v) for v in (*mean, *scale, *clf.coef_[0], clf.intercept_[0]))


def aggregate(source: ScoreSource, how: str = "max", k: int = 10, aggregator: Sequence[float] = ()) -> float:
    """One slide score from ``source`` by the aggregation ``how`` (module docstring)."""
    v = np.asarray(source.values, np.float64)
    if how == "max":
        return float(v.max()) if v.size else 0.0
    if how == "top_k":
        return float(np.sort(v)[::-1][: max(1, int(k))].mean()) if v.size else 0.0
    if how == "largest_region":
        return _largest_region_mm2(source)
    if how == "learned":
        return learned_score(aggregator, score_features(source, k))
    raise ValueError(f"slide_aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")


# ------------------------------------------------------------------------------ threshold


def parse_rule(rule: str) -> tuple[str, float | None]:
    """``"youden"`` -> ("youden", None); ``"sensitivity:0.9"`` -> ("sensitivity", 0.9)."""
    name, _, value = str(rule).partition(":")
    if name == "youden" and not value:
        return "youden", None
    if name == "sensitivity":
        try:
            s = float(value)
        except ValueError:
            s = -1.0
        if 0.0 < s <= 1.0:
            return "sensitivity", s
    raise ValueError(f"threshold_rule must be 'youden' or 'sensitivity:S' with 0 < S <= 1, got {rule!r}")


def choose_threshold(labels, scores, rule: str = "youden") -> float:
    """The slide threshold ``rule`` picks on validation ``scores`` (midway between the two
    scores it separates, so a slide scoring exactly a validation score is called as there)."""
    from sklearn.metrics import roc_curve

    name, target = parse_rule(rule)
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("choosing a threshold needs validation slides of both classes")
    fpr, tpr, thr = roc_curve(y, s)
    if name == "youden":
        i = int(np.argmax(tpr - fpr))
    else:
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    t = float(thr[i])
    if not np.isfinite(t):
        return float(s.max()) + 1e-6
    below = s[s < t]
    return float((t + below.max()) / 2) if below.size else t


def call_summary(labels, scores, threshold: float) -> dict:
    """Sensitivity, specificity and balanced accuracy of ``score >= threshold`` (NaN for a
    class that is absent), with the threshold."""
    y = np.asarray(labels).astype(int)
    call = np.asarray(scores, np.float64) >= threshold
    sens = float(call[y == 1].mean()) if (y == 1).any() else float("nan")
    spec = float((~call[y == 0]).mean()) if (y == 0).any() else float("nan")
    return {"threshold": float(threshold), "sensitivity": sens, "specificity": spec,
            "balanced_accuracy": (sens + spec) / 2}


def call_metrics(labels, scores, threshold: float, n_boot: int = 2000, seed: int = 0) -> dict:
    """Slide AUC, sensitivity, specificity and balanced accuracy of the call at ``threshold``,
    each with a stratified bootstrap 95 % interval."""
    from .evaluate import roc_auc

    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, np.float64)

    def stats(idx):
        c = call_summary(y[idx], s[idx], threshold)
        return roc_auc(y[idx], s[idx]), c["sensitivity"], c["specificity"], c["balanced_accuracy"]

    point = stats(np.arange(len(y)))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boots = np.array([stats(np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]))
                      for _ in range(n_boot)])
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    out = {"n": int(len(y)), "positives": int(len(pos)), "threshold": float(threshold)}
    for j, name in enumerate(("auc", "sensitivity", "specificity", "balanced_accuracy")):
        out[name] = float(point[j])
        out[f"{name}_ci"] = [float(lo[j]), float(hi[j])]
    return out


# ------------------------------------------------------------------------------ the runtime


def apply_call(spec, result, config) -> None:
    """Re-aggregate the slide score (when the config aggregates and the method has a score
    source) and add ``slide_call``, ``threshold`` and ``threshold_rule`` to the summary; a
    method that set ``slide_call`` to None itself (a regression task) keeps it."""
    summary = result.summary
    names = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set()
    if "slide_aggregation" in names and getattr(spec, "score_source", None):
        source = spec.get("score_source")(result, config)
        if source is not None:
            summary["slide_score_max"] = aggregate(source, "max")
            if config.slide_aggregation != "max":
                summary["slide_score"] = aggregate(source, config.slide_aggregation, config.aggregation_k,
                                                   config.aggregator)
            summary["slide_aggregation"] = config.slide_aggregation
    if "slide_threshold" in names and not ("slide_call" in summary and summary["slide_call"] is None):
        score = summary.get("slide_score")
        summary["slide_call"] = None if score is None else int(float(score) >= config.slide_threshold)
        summary["threshold"] = float(config.slide_threshold)
        summary["threshold_rule"] = config.threshold_rule


def call_text(summary: dict) -> str:
    """How a panel shows a result's call: ``"tumour (score 0.873 >= 0.525), "``, or the score
    alone when the result has no call."""
    score = summary.get("slide_score")
    if score is None:
        return ""
    call, thr = summary.get("slide_call"), summary.get("threshold")
    if call is None or thr is None:
        return f"score {float(score):.3f}, "
    word, sign = ("tumour", ">=") if call else ("no tumour", "<")
    return f"{word} (score {float(score):.3f} {sign} {float(thr):.3f}), "


# ------------------------------------------------------------------------------ calibration


def _oof_learned(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold learned-aggregator scores (each slide scored by a fit that never saw it)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels).astype(int)
    folds = max(2, min(folds, int(np.bincount(y).min())))
    out = np.zeros(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, y):
        agg = fit_learned(features[train], y[train])
        out[test] = [learned_score(agg, f) for f in features[test]]
    return out


def cross_bank_accuracy(sources: Sequence[ScoreSource], labels, groups, how: str, k: int = 10,
                        rule: str = "youden") -> float:
    """How well an aggregation's call transfers between validation sets built from different
    patch banks: for each set, the aggregation (the learned one fitted there) and its threshold
    by ``rule`` are chosen on that set alone, and the call's balanced accuracy is measured on
    each other set; the mean over those ordered pairs."""
    y = np.asarray(labels).astype(int)
    g = np.asarray(groups)
    feats = np.stack([score_features(s, k) for s in sources])
    accs = []
    for gi in np.unique(g):
        fit = g == gi
        if how == "learned":
            agg = fit_learned(feats[fit], y[fit])
            thr = choose_threshold(y[fit], _oof_learned(feats[fit], y[fit]), rule)
            scores = np.array([learned_score(agg, f) for f in feats])
        else:
            scores = np.array([aggregate(s, how, k) for s in sources])
            thr = choose_threshold(y[fit], scores[fit], rule)
        for gj in np.unique(g):
            if gj != gi:
                accs.append(call_summary(y[g == gj], scores[g == gj], thr)["balanced_accuracy"])
    return float(np.mean(accs))


def compare_aggregations(sources: Sequence[ScoreSource], labels, k: int = 10,
                         rule: str = "youden", candidates: Sequence[str] = AGGREGATIONS) -> dict:
    """Every candidate aggregation on validation slides: AUC, its threshold by ``rule`` and the
    call's figures there. The learned aggregator is judged on out-of-fold scores (5-fold), so
    its AUC is not that of a fit on the slides it is measured on; it ships fitted on them all.

    Returns ``{name: {"auc", "threshold", "sensitivity", "specificity", "balanced_accuracy",
    "scores", ["aggregator"]}}``.
    """
    from .evaluate import roc_auc

    y = np.asarray(labels).astype(int)
    feats = np.stack([score_features(s, k) for s in sources])
    out = {}
    for how in candidates:
        if how == "largest_region" and all(s.grid is None for s in sources):
            continue
        entry = {}
        if how == "learned":
            scores = _oof_learned(feats, y)
            entry["aggregator"] = list(fit_learned(feats, y))
        else:
            scores = np.array([aggregate(s, how, k) for s in sources])
        entry.update(auc=roc_auc(y, scores), **call_summary(y, scores, choose_threshold(y, scores, rule)),
                     scores=[float(v) for v in scores])
        out[how] = entry
    return out
