"""Figures of merit for results: ROC AUC with bootstrap intervals, confusion-matrix IoUs, Dice,
and how a result agrees with a mosaic's truth.

The counting is scikit-learn's (``roc_auc_score``, ``confusion_matrix``); this module fixes the
conventions the project reports with: an AUC over one class is NaN (not an exception), the
bootstrap is stratified by label (every resample keeps the count of positives, so none is
single-class), and two empty masks have a Dice of 1.

Nothing here imports torch or Qt: benchmarks, notebooks and the viewer's summary share it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

__all__ = [
    "roc_auc",
    "stratified_resamples",
    "bootstrap_auc_interval",
    "sensitivity_specificity",
    "spearman",
    "confusion",
    "iou_per_class",
    "mean_iou",
    "frequency_weighted_iou",
    "dice",
    "truth_check",
]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve; tied scores count one half. NaN when only one class is present.

    Parameters
    ----------
    labels : array_like
        Truth per sample; nonzero is positive.
    scores : array_like
        Higher means more likely positive.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def stratified_resamples(labels, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` bootstrap resamples (index arrays), drawn within each class.

    Each resample draws as many positives and negatives as ``labels`` holds, with replacement,
    so every resample has both classes. The draws are fixed by ``seed`` (positives first, then
    negatives, per resample), so paired statistics over several score vectors can share them.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    return [np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)]) for _ in range(n)]


def bootstrap_auc_interval(labels, scores, n: int = 2000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC, resampled within each class.

    Returns
    -------
    (low, high)
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the AUC over ``n``
        stratified resamples; (NaN, NaN) when only one class is present.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.all() or not labels.any():
        return float("nan"), float("nan")
    aucs = [roc_auc(labels[ix], scores[ix]) for ix in stratified_resamples(labels, n, seed)]
    lo, hi = np.percentile(aucs, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def sensitivity_specificity(labels, scores, threshold: float = 0.5) -> tuple[float, float]:
    """(sensitivity, specificity) of the call ``score >= threshold``; NaN for an absent class."""
    labels = np.asarray(labels).astype(bool).ravel()
    calls = np.asarray(scores, dtype=np.float64).ravel() >= threshold
    tn, fp, fn, tp = confusion(labels, calls, 2).ravel()
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return float(sens), float(spec)


def spearman(a, b) -> float:
    """Spearman rank correlation (ties get mean ranks); NaN with fewer than 2 values or a constant input."""
    from scipy.stats import spearmanr

    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def confusion(labels, preds, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class.

    Classes are the integers ``0 .. n_classes - 1`` (bools count as 0 / 1); a class absent from
    both inputs still has its row and column.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    preds = np.asarray(preds).astype(np.int64).ravel()
    return confusion_matrix(labels, preds, labels=np.arange(n_classes))


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union of each class from a confusion matrix; NaN for a class that is
    in neither the truth nor the predictions."""
    cm = np.asarray(cm, dtype=np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    return np.divide(inter, union, out=np.full_like(inter, np.nan), where=union > 0)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the predictions."""
    return float(np.nanmean(iou_per_class(cm)))


def frequency_weighted_iou(cm: np.ndarray) -> float:
    """IoU of each class weighted by its share of the true pixels."""
    cm = np.asarray(cm, dtype=np.float64)
    freq = cm.sum(1) / cm.sum()
    return float(np.nansum(freq * iou_per_class(cm)))


def dice(a, b) -> float:
    """Dice coefficient 2|A and B| / (|A| + |B|) of two masks; 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


# ------------------------------------------------------------------------ truth check


def _in_mask(mask, xy: np.ndarray) -> np.ndarray:
    """Whether level-0 (x, y) points fall on a labelled pixel of a LabelMask."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if not len(xy):
        return np.zeros(0, bool)
    m = mask.mask
    col = np.clip((xy[:, 0] / mask.downsample).astype(int), 0, m.shape[1] - 1)
    row = np.clip((xy[:, 1] / mask.downsample).astype(int), 0, m.shape[0] - 1)
    inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0)
    return inside & (m[row, col] > 0)


def truth_check(result, mask, label: int | None) -> dict[str, Any]:
    """How a result agrees with the mosaic's truth (tumour mask, slide label).

    Points layers (e.g. CELNet's NMS peaks): how many fall in tumour. Boxes with a
    ``score`` (glimpse-tree leaves): whether the top-scored box's centre is in tumour, and
    how many leaves are. Maps: whether the argmax cell of the first heatmap is in tumour;
    label maps (evidence masks): their Dice with the tumour mask, at the map's cells.
    """
    out: dict[str, Any] = {"mosaic_label": label}
    if result.slide_score is not None and label is not None:
        # the result's own call (its stored threshold); 0.5 for a result from before calls existed
        call = (result.summary or {}).get("slide_call")
        out["slide_call"] = int(result.slide_score >= 0.5) if call is None else int(call)
        out["slide_call_correct"] = out["slide_call"] == label
    for p in result.points:
        hit = _in_mask(mask, p.xy)
        out[f"{p.name}: in tumour"] = f"{int(hit.sum())}/{len(hit)}"
        if len(hit):
            out["points_in_tumour_fraction"] = round(float(hit.mean()), 3)
    scored = [b for b in result.boxes if "score" in b.properties and len(b.boxes)]
    leaves = [b for b in scored if "leaves" in b.name] or scored[-1:]
    for b in leaves:
        boxes = np.asarray(b.boxes, dtype=float).reshape(-1, 4)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        hit = _in_mask(mask, centres)
        top = int(np.argmax(np.asarray(b.properties["score"], dtype=float)))
        out[f"{b.name}: centre in tumour"] = f"{int(hit.sum())}/{len(hit)}"
        out["top_glimpse_in_tumour"] = bool(hit[top])
        out["top_glimpse_score"] = round(float(b.properties["score"][top]), 4)
    # A method's first heatmap is its tumour map unless it scores boxes (glimpse-tree's
    # maps are policy Q maps: where to look, not where tumour is).
    heat = [] if scored else [m for m in result.maps if m.kind != "labels" and np.ndim(m.data) == 2]
    if heat:
        m = heat[0]
        data = np.nan_to_num(np.asarray(m.data, dtype=float), nan=-np.inf)
        r, c = np.unravel_index(int(np.argmax(data)), data.shape)
        sx, sy = (m.cell_size, m.cell_size) if np.isscalar(m.cell_size) else m.cell_size
        xy = np.array([[m.origin[0] + (c + 0.5) * sx, m.origin[1] + (r + 0.5) * sy]])
        out[f"argmax of {m.name!r} in tumour"] = bool(_in_mask(mask, xy)[0])
    for m in result.maps:  # label maps (e.g. CELNet's evidence mask): overlap with the tumour
        if m.kind != "labels" or np.ndim(m.data) != 2 or not np.size(m.data):
            continue
        rows, cols = np.shape(m.data)
        sx, sy = (m.cell_size, m.cell_size) if np.isscalar(m.cell_size) else m.cell_size
        yy, xx = np.mgrid[0:rows, 0:cols]
        centres = np.stack([m.origin[0] + (xx.ravel() + 0.5) * sx, m.origin[1] + (yy.ravel() + 0.5) * sy], 1)
        truth, pred = _in_mask(mask, centres), np.asarray(m.data).ravel() > 0
        # Neither tumour nor evidence on the map: nothing to compare (None, not a perfect 1).
        out[f"{m.name}: Dice with tumour"] = round(dice(truth, pred), 3) if truth.any() or pred.any() else None
    return out
