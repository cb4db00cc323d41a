"""The registry of metrics.csv columns (runs/columns.py) is the one list: a real run's
header, the trackers' scalars and the README's table all follow it."""

import csv
import re
from pathlib import Path
from typing import Any

import pytest

from flood_cli.config.load import load_config
from flood_cli.core.metrics import METRIC_NAMES
from flood_cli.runs.columns import COLUMNS, METRICS_COLUMNS, SCALARS, TEST_COLUMNS, Column, columns_for
from flood_cli.runs.tracking import MlflowTracker, TensorBoardTracker
from flood_cli.train.entry import run_training
from tests import oracle
from tests.conftest import ROOT, SHIPPED_DATA, small_config, write_config

TRACKED = [column.name for column in COLUMNS if column.scalar is not None]


@pytest.fixture(scope="module")
def run_with_test_split(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("columns")
    examples = oracle.read_examples(SHIPPED_DATA)
    config = small_config()
    config["data"].update(
        train_file=str(oracle.write_examples(folder / "train.csv", examples[:64])),
        validation_file=str(oracle.write_examples(folder / "val.csv", examples[64:96])),
        test_file=str(oracle.write_examples(folder / "test.csv", examples[96:128])),
        max_train_examples=None,
        max_val_examples=None,
    )
    config["train"].update(epochs=1, metrics=list(METRIC_NAMES))
    config["output"].update(dir=str(folder / "runs"), name="with-test")
    return run_training(load_config(write_config(folder, config))).run_dir


def header(run_dir: Path) -> list[str]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return next(csv.reader(handle))


def rows(run_dir: Path) -> list[dict[str, Any]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def test_a_real_run_with_a_test_split_has_every_registered_column_in_its_order(run_with_test_split):
    """With every optional metric configured, that is."""
    assert header(run_with_test_split) == [column.name for column in COLUMNS]
    optional = [column.name for column in COLUMNS if column.metric is not None]
    assert [name for name in header(run_with_test_split) if name not in optional] == list(METRICS_COLUMNS) + list(TEST_COLUMNS)
    assert TEST_COLUMNS == ("test_loss", "test_accuracy")
    assert optional == [f"val_{name}" for name in METRIC_NAMES] + [f"test_{name}" for name in METRIC_NAMES]


def test_the_optional_metrics_columns_are_those_configured_in_registry_order():
    assert columns_for(False) == METRICS_COLUMNS
    assert columns_for(True) == METRICS_COLUMNS + TEST_COLUMNS
    chosen = columns_for(True, ["mcc", "f1_macro"])
    assert [name for name in chosen if name not in METRICS_COLUMNS + TEST_COLUMNS] == ["val_f1_macro", "val_mcc", "test_f1_macro", "test_mcc"]
    assert SCALARS["val_mcc"] == "val/mcc" and SCALARS["test_auroc"] == "test/auroc"


def test_every_column_is_tracked_or_says_why_not():
    for column in COLUMNS:
        assert column.meaning
        assert (column.scalar is None) == bool(column.untracked), column
    with pytest.raises(ValueError):
        Column("x", "a column", None)
    assert len({column.name for column in COLUMNS}) == len(COLUMNS)
    assert len(set(SCALARS.values())) == len(SCALARS)


class FakeWriter:
    def __init__(self):
        self.names: list[str] = []

    def add_scalar(self, name, value, step):
        self.names.append(name)

    def flush(self):
        pass


class FakeClient:
    def __init__(self):
        self.keys: list[str] = []

    def log_batch(self, run_id, metrics=(), **kwargs):
        self.keys += [metric.key for metric in metrics]


def test_the_trackers_log_exactly_the_tracked_columns_of_a_real_row(run_with_test_split):
    row = rows(run_with_test_split)[-1]
    tensorboard = TensorBoardTracker.__new__(TensorBoardTracker)
    tensorboard.writer = FakeWriter()
    tensorboard.log_row(row, 7)
    assert tensorboard.writer.names == [SCALARS[name] for name in TRACKED]

    pytest.importorskip("mlflow")
    mlflow = MlflowTracker.__new__(MlflowTracker)
    mlflow.client, mlflow.run_id = FakeClient(), "run"
    mlflow.log_row(row, 7)
    assert mlflow.client.keys == TRACKED


def readme_columns() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("| column | meaning |\n| --- | --- |\n", 1)[1].split("\n\n", 1)[0]
    names: list[str] = []
    for line in table.splitlines():
        first_cell = line.split(" | ", 1)[0]
        names += re.findall(r"`([a-z0-9_]+)`", first_cell)
    return names


def test_the_readme_table_of_metrics_columns_lists_exactly_the_registry():
    assert readme_columns() == [column.name for column in COLUMNS]


def test_the_readme_quotes_the_definitions_of_the_optional_metrics():
    from flood_cli.core.metrics import DEFINITIONS

    assert DEFINITIONS in (ROOT / "README.md").read_text(encoding="utf-8")
