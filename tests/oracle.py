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
import torch.nn.functional as F

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
def per_example_losses(model: Any, tokenizer: Any, examples: list[tuple[str, str]], max_length: int) -> tuple[list[float], list[bool]]:
    label2id = {str(name): int(i) for name, i in model.config.label2id.items()}
    losses, right = [], []
    for text, label in examples:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        logits = model(**encoded).logits.float()
        target = torch.tensor([label2id[label]])
        losses.append(F.cross_entropy(logits, target).item())
        right.append(int(logits.argmax(dim=-1).item()) == label2id[label])
    return losses, right


def figures(model: Any, tokenizer: Any, examples: list[tuple[str, str]], max_length: int) -> Figures:
    losses, right = per_example_losses(model, tokenizer, examples, max_length)
    total = math.fsum(losses)
    worst = max(1, math.ceil(0.1 * len(losses)))
    top = math.fsum(sorted(losses, reverse=True)[:worst])
    return Figures(loss=total / len(losses), correct=sum(right), examples=len(losses), top10_share=top / total)
