"""An independent computation of the figures flood logs, for tests to compare with.

Nothing here imports flood: the texts and labels are read with the csv module, each
example is tokenized and scored on its own (batch of one, so no padding and no mask)
by a plain transformers model in eval mode, and the figures are the textbook formulas.
If flood drops, repeats or mis-weights an example anywhere, these disagree with it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TINY_TOKENIZER = Path(__file__).resolve().parents[1] / "flood_cli" / "assets" / "tiny-tokenizer"


def read_examples(path: Path, text_column: str = "text", label_column: str = "label") -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [(row[text_column], row[label_column].strip()) for row in csv.DictReader(handle)]


def write_examples(path: Path, examples: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(examples)
    return path


@dataclass
class Figures:
    loss: float  # mean cross-entropy over every example
    correct: int  # examples whose argmax is the label
    examples: int
    top10_share: float  # share of the summed loss carried by the worst ceil(10 %) examples
    confidence: float  # mean probability of the predicted class
    ece: float  # expected calibration error over 15 equal confidence bins of (0, 1]
    confident_wrong: int  # wrong with the predicted class's probability above 0.9

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples


def load_model(state_dict: dict[str, Any] | None = None, folder: Path | None = None, config: Any = None) -> Any:
    """A plain transformers classifier: from a save_pretrained folder, or a config plus weights."""
    from transformers import AutoModelForSequenceClassification

    if folder is not None:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
    else:
        model = AutoModelForSequenceClassification.from_config(config)
        model.load_state_dict(state_dict)
    return model.float().eval()


def load_tokenizer(folder: Path = TINY_TOKENIZER) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def scored(model: Any, tokenizer: Any, examples: list[tuple[str, str]], max_length: int) -> list[tuple[float, bool, float]]:
    """(loss, right, confidence) of each example, scored alone."""
    label2id = {str(name): int(i) for name, i in model.config.label2id.items()}
    out = []
    for text, label in examples:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        logits = model(**encoded).logits.float()[0]
        probabilities = [math.exp(v) for v in logits.tolist()]
        probabilities = [p / sum(probabilities) for p in probabilities]
        predicted = max(range(len(probabilities)), key=probabilities.__getitem__)
        target = label2id[label]
        out.append((-math.log(probabilities[target]), predicted == target, probabilities[predicted]))
    return out


def per_example_losses(model: Any, tokenizer: Any, examples: list[tuple[str, str]], max_length: int) -> tuple[list[float], list[bool]]:
    rows = scored(model, tokenizer, examples, max_length)
    return [loss for loss, _, _ in rows], [right for _, right, _ in rows]


def figures(model: Any, tokenizer: Any, examples: list[tuple[str, str]], max_length: int) -> Figures:
    rows = scored(model, tokenizer, examples, max_length)
    losses = [loss for loss, _, _ in rows]
    total = math.fsum(losses)
    worst = max(1, math.ceil(0.1 * len(losses)))
    top = math.fsum(sorted(losses, reverse=True)[:worst])
    bins: dict[int, list[tuple[bool, float]]] = {}
    for _, right, confidence in rows:
        bins.setdefault(min(14, max(0, math.ceil(confidence * 15) - 1)), []).append((right, confidence))
    ece = math.fsum(
        len(members) / len(rows) * abs(sum(r for r, _ in members) / len(members) - math.fsum(c for _, c in members) / len(members))
        for members in bins.values()
    )
    return Figures(
        loss=total / len(losses),
        correct=sum(right for _, right, _ in rows),
        examples=len(losses),
        top10_share=top / total,
        confidence=math.fsum(c for _, _, c in rows) / len(rows),
        ece=ece,
        confident_wrong=sum(1 for _, right, c in rows if not right and c > 0.9),
    )


@torch.no_grad()
def probabilities(model: Any, tokenizer: Any, examples: list[tuple[str, str]], max_length: int) -> tuple[list[list[float]], list[int]]:
    """Each example's class probabilities (scored alone) and its label's index."""
    label2id = {str(name): int(i) for name, i in model.config.label2id.items()}
    probs, labels = [], []
    for text, label in examples:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        probs.append(model(**encoded).logits.float()[0].softmax(dim=-1).double().tolist())
        labels.append(label2id[label])
    return probs, labels


def sklearn_metrics(probs: list[list[float]], labels: list[int]) -> dict[str, float]:
    """The five optional metrics by scikit-learn (two classes: of the second's probability)."""
    import numpy as np
    from sklearn import metrics

    table, truth = np.asarray(probs), np.asarray(labels)
    predicted = table.argmax(axis=1)
    return {
        "f1_macro": metrics.f1_score(truth, predicted, average="macro"),
        "f1_weighted": metrics.f1_score(truth, predicted, average="weighted"),
        "auroc": metrics.roc_auc_score(truth, table[:, 1]),
        "auprc": metrics.average_precision_score(truth, table[:, 1]),
        "mcc": metrics.matthews_corrcoef(truth, predicted),
    }
