"""`flood predict`: the streaming reader (bounded chunks), the probabilities against a
plain transformers forward, the metrics against scikit-learn, and each bad input's line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flood_cli.cli.main import app
from flood_cli.config.schema import OutputConfig
from flood_cli.predict import reader
from flood_cli.predict.reader import read_chunks
from tests.conftest import SHIPPED_DATA, small_config, write_config

runner = CliRunner()
ROWS = 23  # not a multiple of the batch size (8)


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def sample(rows: int = ROWS) -> pd.DataFrame:
    return pd.read_csv(SHIPPED_DATA).head(rows)[["text", "label"]]


def write_formats(frame: pd.DataFrame, folder: Path) -> dict[str, Path]:
    paths = {suffix: folder / f"in.{suffix}" for suffix in ("csv", "tsv", "jsonl", "json", "parquet")}
    frame.to_csv(paths["csv"], index=False)
    frame.to_csv(paths["tsv"], index=False, sep="\t")
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    frame.to_json(paths["json"], orient="records")
    frame.to_parquet(paths["parquet"])
    return paths


# ---------------------------------------------------------------------------
# The reader: bounded chunks, the same rows in every format


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_the_reader_yields_bounded_chunks_of_every_row(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(reader, "READ_BYTES", 100)  # a JSON array read in many small pieces
    frame = sample(50)
    path = write_formats(frame, tmp_path)[suffix]
    chunks = list(read_chunks(path, 8))
    assert [len(chunk["text"]) for chunk in chunks] == [8] * 6 + [2]
    assert [text for chunk in chunks for text in chunk["text"]] == frame["text"].tolist()
    assert [label for chunk in chunks for label in chunk["label"]] == frame["label"].tolist()


def test_the_reader_takes_json_objects_of_columns_and_of_rows(tmp_path):
    columns, wrapped = tmp_path / "columns.json", tmp_path / "wrapped.json"
    columns.write_text(json.dumps({"text": ["a", "b", "c"], "label": ["x", "y", "x"]}))
    wrapped.write_text(json.dumps({"data": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}))
    assert list(read_chunks(columns, 2)) == [{"text": ["a", "b"], "label": ["x", "y"]}, {"text": ["c"], "label": ["x"]}]
    assert list(read_chunks(wrapped, 2)) == [{"text": ["a", "b"]}, {"text": ["c"]}]


def test_save_best_model_is_on_by_default():
    assert OutputConfig().save_best_model is True


# ---------------------------------------------------------------------------
# Without a model: the lines said before anything is loaded


@pytest.fixture
def modelless_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {}\n")
    return run


def test_a_run_without_a_saved_model_says_how_to_get_one(modelless_run, tmp_path):
    (tmp_path / "in.csv").write_text("text\nhello\n")
    result = invoke("predict", modelless_run, "--input", tmp_path / "in.csv")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: run {modelless_run} has no saved model (best_model/); train with output.save_best_model: true "
        "(the default), or pass --last to apply its latest checkpoint (kept with output.keep_checkpoint: true)"
    )
    result = invoke("predict", modelless_run, "--input", tmp_path / "in.csv", "--last")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: run {modelless_run} has no checkpoint (checkpoints/last.pt): a completed run keeps it only with "
        "output.keep_checkpoint: true; drop --last to apply its best model"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "run"]


def test_not_a_run_folder(tmp_path):
    result = invoke("predict", tmp_path, "--input", tmp_path / "in.csv")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {tmp_path} is not a run folder (no config.yaml); pass the folder that flood train printed"


# ---------------------------------------------------------------------------
# A trained run (slow): the oracle and the errors that need the model


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("predict")
    config = small_config(output={"dir": str(folder / "runs"), "name": "r", "keep_checkpoint": True}, train={"epochs": 1})
    result = invoke("train", "-c", write_config(folder, config), "-q")
    assert result.exit_code == 0, result.output
    return folder / "runs" / "r"


def plain_probabilities(model_dir: Path, texts: list[str], max_length: int):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        logits = torch.cat([
            model(**tokenizer(texts[i : i + 5], truncation=True, max_length=max_length, padding=True, return_tensors="pt")).logits
            for i in range(0, len(texts), 5)
        ])
    return logits.double().softmax(-1).numpy(), logits.double()


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_predictions_match_a_plain_forward_and_metrics_match_scikit_learn(trained, tmp_path, suffix):
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, matthews_corrcoef, roc_auc_score

    frame = sample()
    path = write_formats(frame, tmp_path)[suffix]
    result = invoke("predict", trained, "--input", path, "--batch-size", 8, "-q")
    assert result.exit_code == 0, result.output
    output = tmp_path / "in.predictions.csv"
    metrics_file = tmp_path / "in.predictions.metrics.json"
    lines = result.stdout.splitlines()
    assert lines[0] == f"predictions: {ROWS} rows in {output}" and lines[-1] == f"metrics: {metrics_file}"

    rows = read_rows(output)
    assert list(rows[0]) == ["id", "prediction", "prob_ham", "prob_spam"]
    assert [row["id"] for row in rows] == [str(i) for i in range(1, ROWS + 1)]
    probs = np.array([[float(row["prob_ham"]), float(row["prob_spam"])] for row in rows])
    expected, logits = plain_probabilities(trained / "best_model", frame["text"].tolist(), 48)
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)
    assert [row["prediction"] for row in rows] == [["ham", "spam"][i] for i in expected.argmax(1)]

    labels = (frame["label"] == "spam").astype(int).to_numpy()
    metrics = json.loads(metrics_file.read_text())
    predicted = expected.argmax(1)
    assert metrics["rows"] == ROWS
    assert metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.tensor(labels))), abs=1e-5)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro", zero_division=0))
    assert metrics["f1_weighted"] == pytest.approx(f1_score(labels, predicted, average="weighted", zero_division=0))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, expected[:, 1]), abs=1e-6)
    assert metrics["auprc"] == pytest.approx(average_precision_score(labels, expected[:, 1]), abs=1e-6)
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(labels, predicted), abs=1e-9)


@pytest.mark.slow
def test_last_applies_the_checkpoint_and_unlabelled_input_gets_no_metrics(trained, tmp_path):
    frame = sample()
    frame.insert(0, "id", [f"mail-{i}" for i in range(ROWS)])
    frame[["id", "text"]].to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "last.csv"
    result = invoke("predict", trained, "--input", tmp_path / "in.csv", "--last", "--output", out, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"predictions: {ROWS} rows in {out}"]
    rows = read_rows(out)
    assert [row["id"] for row in rows] == frame["id"].tolist()
    # One epoch, one evaluation: the last weights are the best ones.
    assert invoke("predict", trained, "--input", tmp_path / "in.csv", "-q").exit_code == 0
    best = read_rows(tmp_path / "in.predictions.csv")
    for a, b in zip(rows, best, strict=True):
        assert float(a["prob_spam"]) == pytest.approx(float(b["prob_spam"]), abs=1e-6)
    assert not list(tmp_path.glob("*.metrics.json"))
    # Without best_model/, --last takes the label names from the run's training data.
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    shutil.copy(trained / "config.yaml", bare / "config.yaml")
    shutil.copy(trained / "checkpoints" / "last.pt", bare / "checkpoints" / "last.pt")
    result = invoke("predict", bare, "--input", tmp_path / "in.csv", "--last", "--output", tmp_path / "bare.csv", "-q")
    assert result.exit_code == 0, result.output
    assert read_rows(tmp_path / "bare.csv") == rows


@pytest.mark.slow
def test_bad_inputs_are_one_line_and_leave_nothing(trained, tmp_path):
    frame = sample()
    frame.loc[19, "label"] = "eggs"
    frame.to_csv(tmp_path / "odd-label.csv", index=False)
    frame.rename(columns={"text": "body"}).to_csv(tmp_path / "no-text.csv", index=False)
    (tmp_path / "taken.csv").write_text("text\nhi\n")
    (tmp_path / "taken.predictions.csv").write_text("mine\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = {
        # batch 1: chunks of 16 rows, so the bad row comes after a chunk was written
        ("odd-label.csv", "--batch-size", "1"): f"error: input file {tmp_path / 'odd-label.csv'}: label 'eggs' (data row 20) is not one the model "
        "knows (ham, spam); fix the label or drop the column 'label'",
        ("no-text.csv",): f"error: input file {tmp_path / 'no-text.csv'} has no column 'text' (columns: body, label); the run was trained "
        "on it (data.text_column): rename the input's text column",
        ("taken.csv",): f"error: {tmp_path / 'taken.predictions.csv'} exists already; pass --output {tmp_path / 'taken.predictions.csv'} "
        "to replace it, or another --output FILE",
        ("nope.csv",): f"error: input file {tmp_path / 'nope.csv'} not found; pass --input FILE (csv, tsv, json, jsonl or parquet)",
        ("taken.csv", "--batch-size", "0"): "error: --batch-size 0: give at least 1",
    }
    for (name, *more), expected in cases.items():
        result = invoke("predict", trained, "--input", tmp_path / name, "-q", *more)
        assert result.exit_code == 1, (name, result.output)
        assert result.stderr.strip() == expected
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name
    assert (tmp_path / "taken.predictions.csv").read_text() == "mine\n"
