"""The columns of metrics.csv, each declared once: its name, what it means, which rows
have it, and the scalar the trackers (TensorBoard, MLflow) log it as, or why they do not.

The CSV's column order is the order here; the loop fills a row's values by name, the
trackers take ``SCALARS``, and the README's table of columns lists exactly these
(tests/runs/test_columns.py). A new column is one entry here plus the code that computes it.
The optional metrics (``train.metrics``) have a ``val_<name>`` and a ``test_<name>`` column
each, made from core/metrics.py's registry; a run's CSV has those it configured.

This module must stay free of torch: `flood compare` reads the same files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flood_cli.core.metrics import METRICS


@dataclass(frozen=True)
class Column:
    name: str
    meaning: str
    scalar: str | None  # the trackers' name for it (train/, val/, test/ group them in both UIs)
    untracked: str = ""  # why the trackers leave it out (scalar None)
    test_only: bool = False  # only in the rows of a run with a test split
    time: bool = False  # wall-clock time: differs between two runs that are otherwise equal
    metric: str | None = None  # an optional metric's column: only in the rows of a run that configured it

    def __post_init__(self) -> None:
        if (self.scalar is None) == (not self.untracked):
            raise ValueError(f"column {self.name}: a tracker scalar, or the reason it has none")


COLUMNS = (
    Column("epoch", "where the evaluation happened (may be fractional)", "epoch"),
    Column("step", "the optimizer step of the evaluation", None, untracked="it is the step every scalar is logged at"),
    Column("train_loss", "raw mean cross-entropy over the training examples since the last row", "train/loss"),
    Column("train_objective", "what the optimizer saw, same average", "train/objective"),
    Column("train_accuracy", "accuracy on those training batches (dropout on)", "train/accuracy"),
    Column("val_loss", "mean loss on the whole validation split", "val/loss"),
    Column("val_accuracy", "accuracy on the whole validation split", "val/accuracy"),
    Column("best_val_loss", "the lowest val_loss so far", "val/best_loss"),
    Column("lr", "the schedule's (descent) learning rate at that step", "train/lr"),
    Column("flood_active", "what ascended since the last row: share of steps, or of examples", "train/flood_active"),
    Column("val_loss_top10_share", "share of the summed validation loss carried by the worst 10 % of examples", "val/loss_top10_share"),
    Column("val_ece", "expected calibration error on the validation split", "val/ece"),
    Column("val_confidence", "mean probability of the predicted class on the validation split", "val/confidence"),
    Column("val_confident_wrong", "share of validation examples predicted wrong with over 0.9 probability", "val/confident_wrong"),
    *(Column(f"val_{metric.name}", f"{metric.meaning}, on the validation split", f"val/{metric.name}", metric=metric.name) for metric in METRICS),
    Column(
        "skipped_steps",
        "optimizer steps skipped for a non-finite loss since the last row",
        None,
        untracked="left out since the trackers were added (0 in every healthy run); metrics.csv has it",
    ),
    Column(
        "elapsed_s",
        "seconds since the run started",
        None,
        untracked="wall time, not a training figure; the trackers keep their own time of each row",
        time=True,
    ),
    Column("test_loss", "mean loss on the whole test split", "test/loss", test_only=True),
    Column("test_accuracy", "accuracy on the whole test split", "test/accuracy", test_only=True),
    *(
        Column(f"test_{metric.name}", f"{metric.meaning}, on the test split", f"test/{metric.name}", test_only=True, metric=metric.name)
        for metric in METRICS
    ),
)

# The header of a run without a test split and optional metrics, and the test split's columns.
METRICS_COLUMNS = tuple(column.name for column in COLUMNS if not column.test_only and column.metric is None)
TEST_COLUMNS = tuple(column.name for column in COLUMNS if column.test_only and column.metric is None)
TIME_COLUMNS = tuple(column.name for column in COLUMNS if column.time)
# CSV column -> scalar name, for the columns the trackers log.
SCALARS = {column.name: column.scalar for column in COLUMNS if column.scalar is not None}


def columns_for(has_test: bool, metrics: Iterable[str] = ()) -> tuple[str, ...]:
    """The header of a run's metrics.csv: the test columns only with a test split, an
    optional metric's columns only when it is among ``metrics`` (in the registry's order)."""
    chosen = set(metrics)
    return tuple(
        column.name for column in COLUMNS if (has_test or not column.test_only) and (column.metric is None or column.metric in chosen)
    )
