"""napari_glimpse.evaluate: scikit-learn's counting under the project's conventions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_glimpse.evaluate import (
    bootstrap_auc_interval,
    confusion,
    dice,
    frequency_weighted_iou,
    iou_per_class,
    mean_iou,
    roc_auc,
    sensitivity_specificity,
    stratified_resamples,
)


def _mann_whitney_auc(labels, scores) -> float:
    """The hand-written AUC the package used before scikit-learn (average ranks for ties)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_the_old_mann_whitney_auc_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.random(n) + 0.3 * labels, 1)  # rounded: many ties, also across classes
    assert len(np.unique(scores)) < n / 2
    assert roc_auc(labels, scores) == pytest.approx(_mann_whitney_auc(labels, scores), abs=1e-12)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(labels, scores) == pytest.approx(pairs, abs=1e-12)


def test_roc_auc_edge_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([True, False], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))
    assert np.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_stratified_resamples_keep_each_class_count_and_repeat_with_the_seed():
    y = np.array([0] * 30 + [1] * 7)
    boots = stratified_resamples(y, 50, seed=3)
    assert all(len(ix) == 37 and y[ix].sum() == 7 for ix in boots)
    again = stratified_resamples(y, 50, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(boots, again, strict=True))
    assert not np.array_equal(boots[0], stratified_resamples(y, 1, seed=4)[0])


def test_bootstrap_interval_brackets_the_auc_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def sample(n):
        y = rng.integers(0, 2, n)
        return y, rng.normal(size=n) + 1.0 * y

    y, s = sample(60)
    lo, hi = bootstrap_auc_interval(y, s, n=500)
    assert lo < roc_auc(y, s) < hi
    y2, s2 = sample(2000)
    lo2, hi2 = bootstrap_auc_interval(y2, s2, n=200)
    assert hi2 - lo2 < (hi - lo) / 3
    assert np.isnan(bootstrap_auc_interval([1, 1, 1], [0.1, 0.2, 0.3])[0])


def test_sensitivity_specificity_count_the_calls():
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.1, 0.1, 0.5]
    sens, spec = sensitivity_specificity(labels, scores, 0.5)
    assert sens == pytest.approx(3 / 4)  # 0.2 missed
    assert spec == pytest.approx(3 / 5)  # 0.7 and 0.5 (>= threshold) called positive
    assert np.isnan(sensitivity_specificity([0, 0], [0.1, 0.9])[0])


def test_confusion_and_ious_against_hand_counts():
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 1]])
    cm = confusion(truth, pred, 4)  # class 3 in neither: a row and column of zeros
    assert cm.shape == (4, 4)
    assert cm[0].tolist() == [2, 1, 0, 0] and cm[1].tolist() == [0, 3, 0, 0] and cm[2].tolist() == [1, 0, 1, 0]
    iou = iou_per_class(cm)
    # class 0: 2 / (3 + 3 - 2); class 1: 3 / (3 + 4 - 3); class 2: 1 / (2 + 1 - 1)
    assert iou[:3] == pytest.approx([0.5, 0.75, 0.5]) and np.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    assert frequency_weighted_iou(cm) == pytest.approx((3 * 0.5 + 3 * 0.75 + 2 * 0.5) / 8)


def test_dice():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert dice(a, b) == 1.0  # both empty: they agree
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
    assert dice(a, ~a) == 0.0
