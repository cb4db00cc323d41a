"""Batches: collation, epoch orders, and the plan of optimizer steps and evaluation shards
that every process computes alike (see the README's Architecture section)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flood_cli.data.prepare import INDEX, LABELS, TokenizedSplit

if TYPE_CHECKING:
    import torch


class Collator:
    """Pads a batch of example indices to its longest sequence (rounded up to a multiple).
    ``with_index`` adds the example indices to the batch (under ``INDEX``); rounding up
    never goes past ``max_positions`` (a multiple of 1000 on a 512-position BERT).

    ``attention`` says how the padding mask travels:

    * ``"2d"``: the usual ``(batch, length)`` 0/1 mask, for any model.
    * ``"sdpa"``: for a model whose attention mask goes through transformers 5's
      ``create_bidirectional_mask`` with SDPA (see ``model.attention_format``). A batch
      without padding gets no mask, and one with padding gets the ``(batch, 1, 1,
      length)`` boolean mask that SDPA takes, built here on the host. transformers would
      otherwise ask the GPU whether every token is real (``padding_mask.all()``), which
      makes the host wait for the device at the start of every forward pass (under
      ``torch.compile`` it skips that check and always builds a mask, which rules out
      SDPA's flash kernel). The attention computed is the same (tested bit for bit).
    """

    def __init__(
        self,
        split: TokenizedSplit,
        pad_token_id: int,
        pad_to_multiple_of: int | None = None,
        attention: str = "2d",
        with_index: bool = False,
        max_positions: int | None = None,
    ):
        if attention not in ("2d", "sdpa"):
            raise ValueError(f"unknown attention mask format {attention!r}")
        self.split = split
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of or 1
        self.attention = attention
        self.with_index = with_index
        self.max_positions = max_positions

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        import torch

        rows = [self.split.input_ids[i] for i in indices]
        longest = max(len(r) for r in rows)
        length = -(-longest // self.multiple) * self.multiple
        if self.max_positions is not None:  # never pad past the model's position table
            length = max(longest, min(length, self.max_positions))
        # Padded as Python lists, then one tensor each: a per-row tensor copy costs ~6x more.
        batch = {"input_ids": torch.tensor([r + [self.pad_token_id] * (length - len(r)) for r in rows], dtype=torch.long)}
        if self.attention == "2d":
            batch["attention_mask"] = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=torch.long)
        elif any(len(r) < length for r in rows):
            mask = torch.tensor([[True] * len(r) + [False] * (length - len(r)) for r in rows], dtype=torch.bool)
            batch["attention_mask"] = mask[:, None, None, :]
        batch[LABELS] = torch.tensor([self.split.labels[i] for i in indices], dtype=torch.long)
        if self.split.token_type_ids is not None:
            types = [self.split.token_type_ids[i] for i in indices]
            batch["token_type_ids"] = torch.tensor([t + [0] * (length - len(t)) for t in types], dtype=torch.long)
        if self.with_index:  # where each example's score goes (evaluation); travels with the batch
            batch[INDEX] = torch.tensor(indices, dtype=torch.long)
        return batch


class EpochShuffleSampler:
    """A fresh, seeded permutation each epoch: the data order depends only on
    (seed, epoch), which makes runs reproducible and lets a run resume mid-epoch.

    With ``lengths``, the permutation is cut into mega-batches of 50 batches, each
    sorted by length (longest first, as HF's LengthGroupedSampler): batches then hold
    texts of similar length and need little padding, while their order stays random.
    """

    MEGA_BATCH = 50

    def __init__(self, size: int, seed: int, lengths: list[int] | None = None, batch_size: int = 1):
        self.size = size
        self.seed = seed
        self.lengths = lengths
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch))

    def order(self, epoch: int) -> list[int]:
        """The example order of ``epoch``."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is not None:
            chunk = self.MEGA_BATCH * self.batch_size
            lengths = self.lengths
            order = [
                index
                for start in range(0, len(order), chunk)
                for index in sorted(order[start : start + chunk], key=lambda i: -lengths[i])
            ]
        return order

    def __len__(self) -> int:
        return self.size


def length_sorted_batches(split: TokenizedSplit, batch_size: int) -> list[list[int]]:
    """Evaluation batches of similar lengths: less padding, same per-example losses."""
    order = sorted(range(len(split)), key=lambda i: len(split.input_ids[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def eval_shard(batches: list[list[int]], num_processes: int, rank: int) -> list[list[int]]:
    """This process's evaluation batches: every ``num_processes``-th whole batch, so that
    the processes together score every example exactly once (and, the batches being
    length-sorted, get similar amounts of work). A process may get none."""
    return batches[rank::num_processes]


@dataclass(frozen=True)
class StepBatches:
    """One optimizer step as one process sees it.

    ``examples`` counts the step's examples over every process: each micro-batch's summed
    loss is divided by it, so the gradient is that of the step's mean loss however the
    step is split. ``micro_batches`` are this process's, each of at most ``batch_size``.
    A process that has none of the step's examples (the last step of an epoch can hold
    fewer examples than there are processes) still has to join the gradient all-reduce:
    it gets the step's first example as a ``placeholder`` whose loss counts zero times."""

    examples: int
    micro_batches: tuple[tuple[int, ...], ...]
    placeholder: bool = False

    @property
    def local_examples(self) -> int:
        return 0 if self.placeholder else sum(len(batch) for batch in self.micro_batches)


def shard_bounds(size: int, parts: int, index: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``index`` when ``size`` items are cut into ``parts``
    contiguous parts whose sizes differ by at most one (the first ones are larger)."""
    base, extra = divmod(size, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def plan_steps(
    order: list[int], batch_size: int, grad_accum_steps: int, num_processes: int = 1, rank: int = 0
) -> list[StepBatches]:
    """Cut an epoch's example order into optimizer steps of ``batch_size ×
    grad_accum_steps × num_processes`` examples (the last one shorter when the split
    does not divide), and give this process its share of each step.

    A step's examples are split into ``num_processes`` contiguous near-equal shards and
    each shard into micro-batches of ``batch_size``: with one process this is the
    order cut into consecutive batches, and with several the same steps, each shared
    out. Every process computes the same plan from the same order, so all of them know
    every step's example count without talking to each other."""
    per_step = batch_size * grad_accum_steps * num_processes
    steps = []
    for start in range(0, len(order), per_step):
        step = order[start : start + per_step]
        first, stop = shard_bounds(len(step), num_processes, rank)
        mine = step[first:stop]
        if mine:
            micro = tuple(tuple(mine[i : i + batch_size]) for i in range(0, len(mine), batch_size))
            steps.append(StepBatches(len(step), micro))
        else:
            steps.append(StepBatches(len(step), ((step[0],),), placeholder=True))
    return steps
