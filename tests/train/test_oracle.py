"""Every figure flood logs, recomputed outside flood (tests/oracle.py) and compared.

The sizes are ragged on purpose: 100 training examples (batches of 16 leave 4, batches
of 8 with 3 accumulation steps leave 4), 37 validation examples (evaluation batches of
16 leave 5) and 23 test examples. Rows are checked mid-epoch, at the end of an epoch
and at the last step, in every mode. The model a row was computed with is copied when
the row is reported; the oracle loads it into a plain transformers classifier and
scores every example on its own.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from flood_cli.config.load import load_config
from flood_cli.core.reporting import NullReporter
from flood_cli.train.entry import _fit_and_record
from flood_cli.train.loop import Trainer
from tests import oracle
from tests.conftest import SHIPPED_DATA, small_config, write_config

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)

NO_DROPOUT = {"tiny": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "dropout": 0.0}}
MAX_LENGTH = 48
MODES = {
    "baseline": {"mode": "baseline"},
    "flooding": {"mode": "flooding", "b": 0.6},
    "alternate": {"mode": "alternate", "lr": 1e-3, "ascent_lr": 1e-4},
}


@pytest.fixture(scope="module")
def ragged_files(tmp_path_factory) -> dict[str, Path]:
    """100 / 37 / 23 examples of the shipped e-mails, both labels in each split."""
    folder = tmp_path_factory.mktemp("ragged")
    examples = oracle.read_examples(SHIPPED_DATA)
    parts = {"train": examples[:100], "validation": examples[100:137], "test": examples[137:160]}
    for part in parts.values():
        assert {label for _, label in part} == {"ham", "spam"}
    return {role: oracle.write_examples(folder / f"{role}.csv", part) for role, part in parts.items()}


class SnapshotReporter(NullReporter):
    """Keeps a copy of the model's weights at every evaluation row."""

    def __init__(self) -> None:
        self.trainer: Any = None
        self.snapshots: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def evaluation(self, row: dict[str, Any]) -> None:
        self.snapshots.append((dict(row), copy.deepcopy(self.trainer.raw_model.state_dict())))


def train_with_snapshots(tmp_path: Path, files: dict[str, Path], name: str, levels: Any = None, **sections: Any) -> tuple[Trainer, SnapshotReporter]:
    config = small_config(**sections)
    config["data"].update(
        train_file=str(files["train"]),
        validation_file=str(files["validation"]),
        test_file=str(files["test"]),
        max_train_examples=None,
        max_val_examples=None,
        max_length=MAX_LENGTH,
    )
    config["output"].update(dir=str(tmp_path / "runs"), name=name)
    (tmp_path / "runs").mkdir(parents=True, exist_ok=True)
    reporter = SnapshotReporter()
    trainer = Trainer(load_config(write_config(tmp_path, config, f"{name}.yaml")), reporter, levels)
    reporter.trainer = trainer
    trainer.open_new_run()
    _fit_and_record(trainer)
    return trainer, reporter


def csv_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def assert_matches(logged: float, expected: float, what: str) -> None:
    assert logged == pytest.approx(expected, rel=1e-4, abs=1e-7), what


def check_split(row: dict[str, float], prefix: str, truth: oracle.Figures, examples: int) -> None:
    assert truth.examples == examples
    assert_matches(row[f"{prefix}_loss"], truth.loss, f"{prefix}_loss at step {row['step']}")
    # A count out of the split's size, to the digits the CSV keeps.
    assert row[f"{prefix}_accuracy"] == pytest.approx(truth.correct / examples, abs=1e-8), f"{prefix}_accuracy at step {row['step']}"


@pytest.mark.parametrize("mode", MODES)
def test_every_evaluation_row_scores_every_example_once(tmp_path, ragged_files, mode):
    """Rows at steps 3, 6, 9 and 12 (mid-epoch) and 14 (the end of epoch 2 and the last
    step: 100 = 6 × 16 + 4 per epoch), with dropout on."""
    trainer, reporter = train_with_snapshots(
        tmp_path, ragged_files, mode,
        train={**MODES[mode], "epochs": 2, "batch_size": 16, "eval_batch_size": 16, "eval_every": 3},
        output={"save_best_model": True},
    )
    run_dir = trainer.recorder.run.path
    logged = csv_rows(run_dir)
    assert [int(r["step"]) for r in logged] == [3, 6, 9, 12, 14]
    assert [r["epoch"] for r in logged] == [round(s / 7, 4) for s in (3, 6, 9, 12, 14)]

    tokenizer = oracle.load_tokenizer()
    validation = oracle.read_examples(ragged_files["validation"])
    test = oracle.read_examples(ragged_files["test"])
    truths = []
    for (row, weights), written in zip(reporter.snapshots, logged, strict=True):
        model = oracle.load_model(weights, config=trainer.raw_model.config)
        val = oracle.figures(model, tokenizer, validation, MAX_LENGTH)
        truths.append(val)
        check_split(written, "val", val, 37)
        assert_matches(written["val_loss_top10_share"], val.top10_share, f"top10 share at step {row['step']}")
        assert_matches(written["val_confidence"], val.confidence, f"confidence at step {row['step']}")
        assert written["val_ece"] == pytest.approx(val.ece, abs=1e-5), f"ECE at step {row['step']}"
        assert written["val_confident_wrong"] == val.confident_wrong
        check_split(written, "test", oracle.figures(model, tokenizer, test, MAX_LENGTH), 23)

    # best_val_loss is the running minimum of the true losses, and best_model/ holds
    # the model that scored it, as plain transformers loads it.
    running = [min(t.loss for t in truths[: i + 1]) for i in range(len(truths))]
    for written, best in zip(logged, running, strict=False):
        assert_matches(written["best_val_loss"], best, f"best_val_loss at step {written['step']}")
    best_index = min(range(len(truths)), key=lambda i: truths[i].loss)
    saved = oracle.figures(oracle.load_model(folder=run_dir / "best_model"), oracle.load_tokenizer(run_dir / "best_model"), validation, MAX_LENGTH)
    assert_matches(saved.loss, truths[best_index].loss, "best_model's validation loss")
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    assert_matches(summary["best_val_loss"], truths[best_index].loss, "summary best_val_loss")
    assert summary["best_step"] == int(logged[best_index]["step"])
    assert summary["val_accuracy_at_best"] == pytest.approx(truths[best_index].accuracy, abs=1e-12)
    best_accuracy = max(range(len(truths)), key=lambda i: (truths[i].correct, -i))  # the first of the most accurate
    assert summary["best_val_accuracy"] == pytest.approx(truths[best_accuracy].accuracy, abs=1e-12)
    assert summary["best_val_accuracy_step"] == int(logged[best_accuracy]["step"])
    assert summary["final_val_loss"] == pytest.approx(truths[-1].loss, rel=1e-4)


def test_gradient_accumulation_rows_score_every_example_once(tmp_path, ragged_files):
    """Batches of 8, 3 accumulation steps: 100 = 4 × 24 + 4, the last step one short micro-batch."""
    trainer, reporter = train_with_snapshots(
        tmp_path, ragged_files, "accum",
        train={"epochs": 1, "batch_size": 8, "grad_accum_steps": 3, "eval_batch_size": 16, "eval_every": 2},
    )
    logged = csv_rows(trainer.recorder.run.path)
    assert [int(r["step"]) for r in logged] == [2, 4, 5]
    tokenizer = oracle.load_tokenizer()
    validation = oracle.read_examples(ragged_files["validation"])
    for (_, weights), written in zip(reporter.snapshots, logged, strict=True):
        check_split(written, "val", oracle.figures(oracle.load_model(weights, config=trainer.raw_model.config), tokenizer, validation, MAX_LENGTH), 37)


FROZEN = {"lr": 1e-12}  # Adam moves each weight by about lr per step: the model stays as built


@pytest.mark.parametrize(
    "mode, train, objective, flood_active",
    [
        ("baseline", {"mode": "baseline"}, lambda loss: [loss, loss], [0.0, 0.0]),
        ("flooding, b above every loss", {"mode": "flooding", "b": 5.0}, lambda loss: [10.0 - loss] * 2, [1.0, 1.0]),
        ("flooding, b = 0", {"mode": "flooding", "b": 0.0}, lambda loss: [loss, loss], [0.0, 0.0]),
        # One step per epoch (batch = the split): epoch 1 descends, epoch 2 ascends.
        ("alternate", {"mode": "alternate", "ascent_lr": 1e-13, "batch_size": 100}, lambda loss: [loss, -loss], [0.0, 1.0]),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_training_figures_equal_the_mean_over_every_training_example(tmp_path, ragged_files, mode, train, objective, flood_active):
    """With the weights frozen and no dropout, an epoch's train_loss is the mean
    cross-entropy of all 100 training examples (ragged last batch included, each once),
    train_accuracy is a count out of 100, the objective is what the mode makes of it,
    and lr follows the linear schedule's formula. The end-of-epoch rows score the
    whole validation and test splits (the rows the old gather trimmed)."""
    trainer, _ = train_with_snapshots(
        tmp_path, ragged_files, "frozen",
        model=NO_DROPOUT,
        train={**FROZEN, "batch_size": 16, "epochs": 2, "warmup_ratio": 0.0, "schedule": "linear", **train},
    )
    logged = csv_rows(trainer.recorder.run.path)
    steps_per_epoch = math.ceil(100 / (train.get("batch_size", 16)))
    assert [int(r["step"]) for r in logged] == [steps_per_epoch, 2 * steps_per_epoch]
    model = oracle.load_model(copy.deepcopy(trainer.raw_model.state_dict()), config=trainer.raw_model.config)
    tokenizer = oracle.load_tokenizer()
    truth = oracle.figures(model, tokenizer, oracle.read_examples(ragged_files["train"]), MAX_LENGTH)
    val = oracle.figures(model, tokenizer, oracle.read_examples(ragged_files["validation"]), MAX_LENGTH)
    test = oracle.figures(model, tokenizer, oracle.read_examples(ragged_files["test"]), MAX_LENGTH)
    for index, written in enumerate(logged):
        check_split(written, "val", val, 37)
        check_split(written, "test", test, 23)
        assert_matches(written["train_loss"], truth.loss, f"train_loss, row {index}")
        assert written["train_accuracy"] == pytest.approx(truth.correct / 100, abs=1e-8)
        assert_matches(written["train_objective"], objective(truth.loss)[index], f"train_objective, row {index}")
        assert written["flood_active"] == flood_active[index]
        total = 2 * steps_per_epoch
        assert written["lr"] == pytest.approx(train.get("lr", FROZEN["lr"]) * (1 - (written["step"] - 1) / total), rel=1e-6)
        assert written["skipped_steps"] == 0


@pytest.mark.parametrize("mode", ["iflood", "adaflood"])
def test_flood_active_of_a_per_example_mode_is_the_share_of_examples_that_ascended(tmp_path, ragged_files, mode):
    """iFlood and AdaFlood's flood_active is ascending examples over examples, not a mean
    of per-step shares: with frozen weights, b between two of the oracle's per-example
    losses, and 100 examples in steps of 16 (the last holds 4), each epoch's flood_active
    is the oracle's count of losses under b, out of 100. (A mean of the 7 step shares
    weighs the 4-example step like a 16-example one.)"""
    import torch

    probe, _ = train_with_snapshots(tmp_path / "probe", ragged_files, "probe", model=NO_DROPOUT, train={**FROZEN, "epochs": 1})
    model = oracle.load_model(copy.deepcopy(probe.raw_model.state_dict()), config=probe.raw_model.config)
    losses, _ = oracle.per_example_losses(model, oracle.load_tokenizer(), oracle.read_examples(ragged_files["train"]), MAX_LENGTH)
    ordered = sorted(losses)
    b = (ordered[29] + ordered[30]) / 2  # 30 of the 100 examples lie under b, each well clear of it
    assert ordered[30] - ordered[29] > 1e-6
    if mode == "iflood":
        train, levels = {"mode": "iflood", "b": b}, None
    else:  # every example at the same level: AdaFlood's per-example path with iFlood's answer
        train, levels = {"mode": "adaflood"}, torch.full((100,), b)
    trainer, _ = train_with_snapshots(
        tmp_path, ragged_files, mode, model=NO_DROPOUT, train={**FROZEN, "epochs": 2, "batch_size": 16, **train}, levels=levels
    )
    logged = csv_rows(trainer.recorder.run.path)
    assert len(logged) == 2
    for written in logged:
        assert written["flood_active"] == pytest.approx(sum(loss < b for loss in losses) / 100, abs=1e-8)
        expected_objective = sum(abs(loss - b) + b for loss in losses) / 100
        assert_matches(written["train_objective"], expected_objective, "train_objective")


def test_calibration_figures_of_a_confident_model_equal_the_oracles(tmp_path, ragged_files):
    """A model made overconfident by hand (classifier weights × 40): ECE, mean confidence
    and the confidently wrong count over 37 validation examples, against the oracle."""
    import torch

    trainer, _ = train_with_snapshots(tmp_path, ragged_files, "confident", train={"epochs": 1, "batch_size": 16, "lr": 3e-3})
    with torch.no_grad():
        trainer.raw_model.classifier.weight.mul_(40.0)
        trainer.raw_model.classifier.bias.mul_(40.0)
    figures = trainer.evaluate("val")
    model = oracle.load_model(copy.deepcopy(trainer.raw_model.state_dict()), config=trainer.raw_model.config)
    truth = oracle.figures(model, oracle.load_tokenizer(), oracle.read_examples(ragged_files["validation"]), MAX_LENGTH)
    assert truth.confident_wrong > 0 and truth.confidence > 0.9, "the hand-made model should be confidently wrong somewhere"
    assert figures["confident_wrong"] == truth.confident_wrong
    assert figures["confidence"] == pytest.approx(truth.confidence, rel=1e-5)
    assert figures["ece"] == pytest.approx(truth.ece, abs=1e-6)
    assert figures["loss"] == pytest.approx(truth.loss, rel=1e-4)


def test_calibration_error_by_hand():
    """Three bins used: (0.6, 0.667] holds 0.62 and 0.65 (one right), (0.933, 1] holds
    0.95, 0.99 and 1.0 (two right): ECE = 2/5·|0.5 − 0.635| + 3/5·|0.667 − 0.98|."""
    import torch

    from flood_cli.train.evaluate import calibration_error

    confidence = torch.tensor([0.62, 0.65, 0.95, 0.99, 1.0], dtype=torch.float64)
    right = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    expected = 2 / 5 * abs(0.5 - 0.635) + 3 / 5 * abs(2 / 3 - 0.98)
    assert calibration_error(confidence, right).item() == pytest.approx(expected)


ALL_METRICS = ["f1_macro", "f1_weighted", "auroc", "auprc", "mcc"]


def test_optional_metrics_equal_scikit_learns_on_the_final_model(tmp_path, ragged_files):
    """train.metrics, all five: the last row's val_ and test_ columns (37 and 23 examples
    in evaluation batches of 16) equal scikit-learn's on a plain transformers forward of
    the final weights, and summary.json names each metric at the best loss and its own best."""
    trainer, _ = train_with_snapshots(
        tmp_path, ragged_files, "metrics",
        train={"lr": 1e-3, "batch_size": 16, "eval_batch_size": 16, "epochs": 2, "eval_every": "0.5 epoch", "metrics": ALL_METRICS},
    )
    run_dir = trainer.recorder.run.path
    with open(run_dir / "metrics.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert [name for name in header if name.removeprefix("val_").removeprefix("test_") in ALL_METRICS] == (
        [f"val_{name}" for name in ALL_METRICS] + [f"test_{name}" for name in ALL_METRICS]
    )
    logged = csv_rows(run_dir)
    model = oracle.load_model(copy.deepcopy(trainer.raw_model.state_dict()), config=trainer.raw_model.config)
    tokenizer = oracle.load_tokenizer()
    for role in ("val", "test"):
        examples = oracle.read_examples(ragged_files["validation" if role == "val" else "test"])
        truth = oracle.sklearn_metrics(*oracle.probabilities(model, tokenizer, examples, MAX_LENGTH))
        for name in ALL_METRICS:
            assert logged[-1][f"{role}_{name}"] == pytest.approx(truth[name], abs=1e-6), (role, name)
    summary = json.loads((run_dir / "summary.json").read_text())
    at_best = next(row for row in logged if row["step"] == summary["best_step"])
    for name in ALL_METRICS:
        column = f"val_{name}"
        top = max(logged, key=lambda row: row[column])
        assert summary[f"val_{name}_at_best"] == pytest.approx(at_best[column], abs=1e-7)
        assert summary[f"best_val_{name}"] == pytest.approx(top[column], abs=1e-7)
        assert summary[f"best_val_{name}_step"] == int(top["step"])
        assert summary[f"best_val_{name}_epoch"] == top["epoch"]
        assert summary[f"final_val_{name}"] == pytest.approx(logged[-1][column], abs=1e-7)
