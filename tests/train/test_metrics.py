"""The optional metrics against scikit-learn (a test-only dependency) and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flood_cli.core.metrics import METRIC_NAMES
from flood_cli.train.metrics import compute

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def reference(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """scikit-learn's figures, one-vs-rest macro over the classes present in the labels."""
    predicted = probs.argmax(axis=1)
    classes = probs.shape[1]
    out = {
        "f1_macro": sklearn_metrics.f1_score(labels, predicted, average="macro", zero_division=0),
        "f1_weighted": sklearn_metrics.f1_score(labels, predicted, average="weighted", zero_division=0),
        "mcc": sklearn_metrics.matthews_corrcoef(labels, predicted),
    }
    if classes == 2:
        both = len(set(labels.tolist())) == 2
        out["auroc"] = sklearn_metrics.roc_auc_score(labels, probs[:, 1]) if both else math.nan
        out["auprc"] = sklearn_metrics.average_precision_score(labels, probs[:, 1]) if (labels == 1).any() else math.nan
    else:
        present = [k for k in range(classes) if 0 < (labels == k).sum() < labels.size]
        out["auroc"] = np.mean([sklearn_metrics.roc_auc_score(labels == k, probs[:, k]) for k in present]) if present else math.nan
        out["auprc"] = np.mean([sklearn_metrics.average_precision_score(labels == k, probs[:, k]) for k in present]) if present else math.nan
    return out


def random_table(rng: np.random.Generator, size: int, classes: int, present: list[int], ties: bool) -> tuple[np.ndarray, np.ndarray]:
    logits = rng.normal(size=(size, classes))
    if ties:
        logits = np.round(logits, 1)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.choice(present, size=size)
    return probs, labels


@pytest.mark.parametrize("classes", [2, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("size", [7, 61, 250])
def test_each_metric_equals_scikit_learn(classes: int, ties: bool, size: int) -> None:
    rng = np.random.default_rng(classes * 1000 + size + ties)
    probs, labels = random_table(rng, size, classes, list(range(classes)), ties)
    ours, theirs = compute(METRIC_NAMES, probs, labels), reference(probs, labels)
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12, nan_ok=True), name


def test_a_class_absent_from_the_validation_split() -> None:
    """Class 2 of 3 never occurs in the labels: F1 counts it only if predicted (as 0),
    AUROC/AUPRC average over classes 0 and 1 only."""
    rng = np.random.default_rng(3)
    probs, labels = random_table(rng, 41, 3, [0, 1], ties=False)
    assert (probs.argmax(axis=1) == 2).any()  # predicted, never true
    ours, theirs = compute(METRIC_NAMES, probs, labels), reference(probs, labels)
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name
    per_class = sklearn_metrics.f1_score(labels, probs.argmax(axis=1), average=None, labels=[0, 1, 2], zero_division=0)
    assert per_class[2] == 0 and ours["f1_macro"] == pytest.approx(per_class.mean())


def test_one_class_only_leaves_the_areas_empty_and_mcc_zero() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    ours = compute(METRIC_NAMES, probs, np.array([0, 0, 0]))
    assert math.isnan(ours["auroc"]) and math.isnan(ours["auprc"])
    assert ours["mcc"] == 0.0
    assert ours["f1_macro"] == pytest.approx((0.8 + 0.0) / 2)  # class 0: P 1, R 2/3; class 1 predicted once, never true


def test_hand_worked_binary_case() -> None:
    # scores of class 1: positives 0.8, 0.4; negatives 0.6, 0.2 -> 3 of 4 pairs ordered
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [0.8, 0.2]])
    labels = np.array([1, 1, 0, 0])
    ours = compute(("auroc", "auprc", "mcc", "f1_macro"), probs, labels)
    assert ours["auroc"] == pytest.approx(0.75)
    assert ours["auprc"] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))  # thresholds 0.8 (P 1, R .5), 0.4 (P 2/3, R 1)
    assert ours["mcc"] == pytest.approx(0.0)  # predictions 1,0,1,0: tp1 fn1 fp1 tn1
    assert ours["f1_macro"] == pytest.approx(0.5)


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric 'f2'"):
        compute(["f2"], np.ones((1, 2)) / 2, np.array([0]))
