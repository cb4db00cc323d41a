"""Evaluation: the figures of the current model over a whole split, each example scored
exactly once on any number of processes, and the summed loss of a training micro-batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from flood_cli.data.batches import Collator, eval_shard, length_sorted_batches
from flood_cli.data.prepare import INDEX, LABELS, TokenizedSplit
from flood_cli.train.metrics import compute as compute_metrics


def step_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of a micro-batch, in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), labels, reduction="sum")


class EvalSplit:
    """One evaluation split and this process's share of it: whole length-sorted batches,
    every ``num_processes``-th one, so that the processes together score each example
    exactly once (a process may have none)."""

    def __init__(
        self, split: TokenizedSplit, batch_size: int, collate: Collator, workers: int, pin: bool, num_processes: int, rank: int
    ):
        self.size = len(split)
        self.batches = eval_shard(length_sorted_batches(split, batch_size), num_processes, rank)
        self.loader: torch.utils.data.DataLoader[int] = torch.utils.data.DataLoader(
            list(range(self.size)),  # type: ignore[arg-type]  # torch's stub wants a Dataset; a list is a map-style one
            batch_sampler=self.batches,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=pin,
            generator=torch.Generator().manual_seed(0),  # leaves the global RNG (dropout) alone
        )


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, split: EvalSplit, accelerator: Any, metrics: Sequence[str] = (), classes: int = 0
) -> dict[str, float]:
    """Mean loss, accuracy, and the share of the loss carried by the worst 10 % of
    examples, over every example of the split exactly once; and the optional ``metrics``
    (train.metrics, of ``classes`` classes), keyed by their names.

    Each process writes the loss and correctness of the examples it scores into a
    split-sized table at their own indices, and the tables are summed across processes.
    Not ``gather_for_metrics``: it trims the gathered tensor to the remainder of
    whichever prepared loader Accelerate last saw end (the training loader, when this
    runs at the end of an epoch), and it assumes evenly padded shards; with
    variable-size batches it dropped or repeated examples. An index table is exact
    whatever the batch sizes, split size or process count, and every process gets the
    same figures. With metrics, each example's row also holds its class probabilities
    and its label, and the metrics are computed from the summed table (on the CPU)."""
    device = accelerator.device
    # loss, correct, confidence (and with metrics: the class probabilities, the label)
    scores = torch.zeros((split.size, 3 + (classes + 1 if metrics else 0)), dtype=torch.float64, device=device)
    model.eval()
    for batch in split.loader:
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        labels, index = batch.pop(LABELS), batch.pop(INDEX)
        logits = model(**batch).logits.float()
        scores[index, 0] = F.cross_entropy(logits, labels, reduction="none").double()
        scores[index, 1] = (logits.argmax(dim=-1) == labels).double()
        if metrics:
            probs = logits.softmax(dim=-1).double()
            scores[index, 2] = probs.max(dim=-1).values
            scores[index, 3 : 3 + classes] = probs
            scores[index, 3 + classes] = labels.double()
        else:
            scores[index, 2] = logits.softmax(dim=-1).max(dim=-1).values.double()
    model.train()
    if accelerator.num_processes > 1:
        scores = accelerator.reduce(scores, reduction="sum")  # each row is non-zero on one process only
    losses, right, confidence = scores[:, 0], scores[:, 1], scores[:, 2]
    total = losses.sum()
    worst = max(1, math.ceil(0.1 * split.size))
    top_share = torch.topk(losses, worst).values.sum() / total.clamp_min(1e-12)
    figures = torch.stack([
        total / split.size,
        right.sum(),
        top_share,
        confidence.mean(),
        calibration_error(confidence, right),
        ((confidence > CONFIDENT) & (right == 0)).sum(),
    ]).tolist()
    loss, correct_count, share, mean_confidence, ece, confident_wrong = figures
    optional: dict[str, float] = {}
    if metrics:
        table = scores[:, 3:].cpu().numpy()
        optional = compute_metrics(metrics, table[:, :classes], table[:, classes].round().astype("int64"))
    return {
        **optional,
        "loss": loss,
        "accuracy": correct_count / split.size,
        "top10_share": share,
        "confidence": mean_confidence,
        "ece": ece,
        "confident_wrong": int(round(confident_wrong)),
        "correct": int(round(correct_count)),
        "examples": split.size,
    }


ECE_BINS = 15
CONFIDENT = 0.9  # "confidently wrong": the predicted class had more than this probability


def calibration_error(confidence: torch.Tensor, right: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """Expected calibration error: the examples binned by confidence into ``bins`` equal
    bins of (0, 1], and |accuracy − mean confidence| of each bin weighted by its share
    of the examples (Guo et al., 2017)."""
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1  # (k/bins, (k+1)/bins] -> k
    count = torch.zeros(bins, dtype=confidence.dtype, device=confidence.device).index_add_(0, which, torch.ones_like(confidence))
    confidence_sum = torch.zeros_like(count).index_add_(0, which, confidence)
    right_sum = torch.zeros_like(count).index_add_(0, which, right)
    return (right_sum - confidence_sum).abs().sum() / confidence.numel()
