"""THE METRIC REGISTRY: the optional per-evaluation metrics (``train.metrics``), each
declared once as plain data (no torch): its name, what it means, which way is better.

The math is in flood_cli/train/metrics.py; config validates names against METRIC_NAMES,
runs/columns.py makes their ``val_<name>`` (and ``test_<name>``) columns, compare judges
groups on them with ``--metric``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    meaning: str
    higher_is_better: bool = True


METRICS = (
    Metric("f1_macro", "macro F1: the unweighted mean of each class's F1"),
    Metric("f1_weighted", "weighted F1: each class's F1 weighted by its number of true examples"),
    Metric("auroc", "area under the ROC curve (one-vs-rest, macro, for several classes)"),
    Metric("auprc", "area under the precision-recall curve, as average precision (one-vs-rest, macro)"),
    Metric("mcc", "Matthews correlation coefficient (multi-class form)"),
)
METRIC_NAMES = tuple(metric.name for metric in METRICS)
BY_NAME = {metric.name: metric for metric in METRICS}

# How each is defined where a class is missing; the README and the tests quote it.
DEFINITIONS = """\
- F1 (macro and weighted) counts the classes that occur in the labels or in the predictions, as scikit-learn does by default; a class predicted but absent from the labels has F1 0 (no true example to recall), a class absent from both is left out.
- AUROC and AUPRC: with two classes, of the second class's probability; with more, one-vs-rest for each class that occurs in the labels (and not in all of them), averaged without weights. A class absent from the labels is left out; when no class qualifies (one class only) the figure is empty (not a number), never a made-up 0.5.
- AUPRC is average precision (the step-wise sum, no interpolation), as scikit-learn's average_precision_score.
- MCC is 0 when it is undefined (all examples predicted, or labelled, as one class), as scikit-learn."""
