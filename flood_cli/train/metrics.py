"""The optional metrics of core/metrics.py, computed from an evaluation's per-example
table: each example's class probabilities and its label. Numpy, float64, on the CPU;
the definitions (missing classes included) are core.metrics.DEFINITIONS and match
scikit-learn's (tests/train/test_metrics.py checks each against it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from flood_cli.core.metrics import METRIC_NAMES


def compute(names: Sequence[str], probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``names`` (from METRIC_NAMES) of ``probs`` (examples x classes) against ``labels``
    (class indices). An undefined figure is nan."""
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRIC_NAMES)}")
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    out: dict[str, float] = {}
    for name in names:
        if name in ("f1_macro", "f1_weighted"):
            out[name] = f1(labels, predicted, weighted=name == "f1_weighted")
        elif name == "mcc":
            out[name] = mcc(labels, predicted, probs.shape[1])
        else:
            area = roc_auc if name == "auroc" else average_precision
            out[name] = one_vs_rest(area, labels, probs)
    return out


def f1(labels: np.ndarray, predicted: np.ndarray, weighted: bool) -> float:
    classes = np.union1d(labels, predicted)
    if classes.size == 0:
        return float("nan")
    scores, support = [], []
    for k in classes:
        true_k, pred_k = labels == k, predicted == k
        tp = float(np.sum(true_k & pred_k))
        denominator = float(true_k.sum() + pred_k.sum())
        scores.append(2 * tp / denominator if denominator else 0.0)
        support.append(float(true_k.sum()))
    if not weighted:
        return float(np.mean(scores))
    total = sum(support)
    return float(np.dot(scores, support) / total) if total else 0.0


def mcc(labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Gorodkin's multi-class MCC from the confusion matrix; 0 where undefined."""
    size = max(classes, int(labels.max(initial=-1)) + 1, int(predicted.max(initial=-1)) + 1)
    confusion = np.zeros((size, size), dtype=np.float64)
    np.add.at(confusion, (labels, predicted), 1.0)
    true_sums, pred_sums = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    cov_tp = correct * total - np.dot(true_sums, pred_sums)
    cov_pp = total * total - np.dot(pred_sums, pred_sums)
    cov_tt = total * total - np.dot(true_sums, true_sums)
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def one_vs_rest(area: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray, probs: np.ndarray) -> float:
    if probs.shape[1] == 2:
        return float(area(labels == 1, probs[:, 1]))
    areas = [area(labels == k, probs[:, k]) for k in range(probs.shape[1]) if 0 < np.sum(labels == k) < labels.size]
    return float(np.mean(areas)) if areas else float("nan")


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Probability that a positive scores above a negative, ties counted half (the
    Mann-Whitney statistic, from average ranks); nan without both kinds."""
    positives = int(positive.sum())
    negatives = positive.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(score.size, dtype=np.float64)
    # average rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], score.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return float((ranks[positive].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """Sum over the distinct thresholds, highest first, of (recall gain) x precision;
    nan without a positive."""
    positives = int(positive.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    sorted_scores, hits = score[order], positive[order].astype(np.float64)
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    true_pos = np.cumsum(hits)[last_of_run]
    seen = (np.flatnonzero(last_of_run) + 1).astype(np.float64)
    precision, recall = true_pos / seen, true_pos / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
