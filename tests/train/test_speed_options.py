"""Speed options must not change results that they have no business changing; the
tokenization cache must make a second run skip tokenizing."""

import glob
import math
import os
from pathlib import Path

import pytest
import transformers

from flood_cli.config.load import load_config
from flood_cli.data.prepare import prepare_data
from flood_cli.model import load_tokenizer
from flood_cli.runs.columns import TIME_COLUMNS
from flood_cli.train.entry import run_training
from tests.conftest import small_config, write_config

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)


def rows_of(tmp_path: Path, name: str, **sections) -> list[dict]:
    config = small_config(**sections)
    config.setdefault("output", {}).update(dir=str(tmp_path / "runs"), name=name)
    result = run_training(load_config(write_config(tmp_path, config, f"{name}.yaml")))
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in result.rows]


CPU = {"device": "cpu", "precision": "fp32"}


def test_num_workers_gives_bit_identical_csv(tmp_path):
    """Batches collated in worker processes are the same batches."""
    assert rows_of(tmp_path, "workers", runtime={**CPU, "num_workers": 2}) == rows_of(tmp_path, "plain")


def test_eval_batch_size_changes_evaluation_figures_only_by_float_rounding(tmp_path):
    """Evaluation batches of other sizes pad to other lengths, and matrix products of
    other shapes round differently in the last bit of an example's loss (seen: 2e-9
    relative on val_loss); the mean is accumulated in float64, so that shows. Training
    is untouched and the accuracy is the same count."""
    plain, other = rows_of(tmp_path, "plain"), rows_of(tmp_path, "eval7", train={"eval_batch_size": 7})
    assert len(plain) == len(other)
    for a, b in zip(plain, other, strict=True):
        for column in a:
            if column in ("val_loss", "best_val_loss", "val_loss_top10_share", "val_ece", "val_confidence"):
                assert a[column] == pytest.approx(b[column], rel=1e-7), column
            else:
                assert a[column] == b[column], column


def test_padding_multiple_is_neutral_up_to_rounding_without_dropout(tmp_path):
    """Padding only adds masked positions. (With dropout on, a longer padded tensor draws
    other dropout masks, so runs with different multiples are not bit-identical.)"""
    no_dropout = {"tiny": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "dropout": 0.0}}
    plain = rows_of(tmp_path, "pad8", model=no_dropout)
    padded = rows_of(tmp_path, "pad64", model=no_dropout, runtime={**CPU, "pad_to_multiple_of": 64})
    assert len(padded) == len(plain) > 0
    for a, b in zip(plain, padded, strict=True):
        for column in ("train_loss", "val_loss", "val_accuracy"):
            assert a[column] == pytest.approx(b[column], rel=1e-5, abs=1e-7)


def test_group_by_length_batches_similar_lengths_and_is_seeded(tmp_path):
    from flood_cli.data.batches import EpochShuffleSampler

    lengths = [(i * 37) % 101 for i in range(400)]
    sampler = EpochShuffleSampler(400, seed=1, lengths=lengths, batch_size=4)
    order = list(sampler)
    assert sorted(order) == list(range(400))
    assert order == list(EpochShuffleSampler(400, seed=1, lengths=lengths, batch_size=4))
    spread = lambda batches: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)  # noqa: E731
    grouped = [order[i : i + 4] for i in range(0, 400, 4)]
    shuffled = list(EpochShuffleSampler(400, seed=1))
    assert spread(grouped) < spread([shuffled[i : i + 4] for i in range(0, 400, 4)]) / 5


def test_a_second_run_does_not_tokenize_again(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    cfg = load_config(write_config(tmp_path, small_config()))
    tokenizer = load_tokenizer(cfg.model)
    first = prepare_data(cfg.data, tokenizer)
    cached = {path: os.stat(path).st_mtime_ns for path in glob.glob(str(tmp_path / "cache" / "**" / "cache-*.arrow"), recursive=True)}
    assert cached, "tokenized splits should be cached on disk"

    calls = {"n": 0}
    real_call = type(tokenizer).__call__

    def counting_call(self, *args, **kwargs):
        calls["n"] += 1
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting_call)
    second = prepare_data(cfg.data, tokenizer)
    assert calls["n"] == 0, "the second run called the tokenizer"
    again = {path: os.stat(path).st_mtime_ns for path in glob.glob(str(tmp_path / "cache" / "**" / "cache-*.arrow"), recursive=True)}
    assert again == cached  # nothing new written, nothing rewritten
    assert second.train.input_ids == first.train.input_ids
    assert second.validation.labels == first.validation.labels


@pytest.mark.parametrize("max_length", [48, 256], ids=["mostly unpadded", "padded"])
def test_the_sdpa_mask_format_gives_bit_identical_csv(tmp_path, monkeypatch, max_length):
    """Batches carry no mask or a 4-D boolean one (no device read per step); the run
    is bit for bit the run with the usual 2-D mask, dropout on."""
    from flood_cli.model import attention_format
    from flood_cli.train import setup as train_setup

    fast = rows_of(tmp_path, "sdpa", data={"max_length": max_length})
    monkeypatch.setattr(train_setup, "attention_format", lambda model: "2d")
    assert fast == rows_of(tmp_path, "2d", data={"max_length": max_length})
    trainer_model = build_tiny_model()
    expected = "sdpa" if int(transformers.__version__.split(".")[0]) >= 5 else "2d"
    assert attention_format(trainer_model) == expected


def build_tiny_model():
    from flood_cli.config.schema import ModelConfig
    from flood_cli.model import build_model

    cfg = ModelConfig.model_validate(small_config()["model"])
    return build_model(cfg, ["ham", "spam"], load_tokenizer(cfg), 48)


def test_compile_trains_the_same_model_up_to_kernel_rounding(tmp_path):
    """runtime.compile runs the same model through inductor's kernels: with dropout off
    the figures match eager up to float rounding, and the folder is a normal run
    (checkpoint and best model from the plain module, not the compiled wrapper)."""
    no_dropout = {"tiny": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "dropout": 0.0}}
    eager = rows_of(tmp_path, "eager", model=no_dropout)
    compiled = rows_of(
        tmp_path, "compiled", model=no_dropout, runtime={**CPU, "compile": True}, output={"save_best_model": True, "keep_checkpoint": True}
    )
    assert len(compiled) == len(eager)
    for a, b in zip(eager, compiled, strict=True):
        for column in ("train_loss", "val_loss", "val_accuracy"):
            assert a[column] == pytest.approx(b[column], rel=1e-4, abs=1e-6)
    run = tmp_path / "runs" / "compiled"
    assert (run / "checkpoints" / "last.pt").exists()
    assert (run / "best_model" / "config.json").exists()


def test_a_data_file_rewritten_with_the_same_size_and_mtime_is_read_again(tmp_path, monkeypatch):
    """cp -p, rsync -t and tar keep a file's modification time; Datasets' cache, keyed by
    path and mtime, would then serve the old content (and its old tokens). The cache is
    keyed by the file's content."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "emails.csv"
    rows = [("free money now", "spam"), ("lunch at noon", "ham")] * 10
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    config = small_config()
    config["data"].update(train_file=str(data), validation_fraction=0.5, max_train_examples=None, max_val_examples=None)
    cfg = load_config(write_config(tmp_path, config))
    tokenizer = load_tokenizer(cfg.model)
    before = prepare_data(cfg.data, tokenizer)

    stat = data.stat()
    edited = [("FREE MONEY NOW", "ham"), ("LUNCH AT NOON", "spam")] * 10  # same size, labels swapped
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in edited))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (data.stat().st_size, data.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    after = prepare_data(cfg.data, tokenizer)
    assert after.train.input_ids != before.train.input_ids  # upper case: other tokens
    expected = [tokenizer(t, truncation=True, max_length=cfg.data.max_length)["input_ids"] for t in ("FREE MONEY NOW", "LUNCH AT NOON")]
    assert {tuple(ids) for ids in after.train.input_ids} == {tuple(ids) for ids in expected}


def test_padding_never_goes_past_the_models_positions(tmp_path):
    """max_length 513 rounds up to 520 with pad_to_multiple_of 8, past a 513-position
    model; a multiple of 1000 would pass any BERT's 512. Both now train."""
    from flood_cli.data.batches import Collator
    from flood_cli.data.prepare import TokenizedSplit

    split = TokenizedSplit(input_ids=[[1] * 513, [1] * 30], labels=[0, 1])
    assert Collator(split, 0, 8, max_positions=513)([0, 1])["input_ids"].shape == (2, 513)
    assert Collator(split, 0, 1000, max_positions=512)([1])["input_ids"].shape == (1, 512)
    assert Collator(split, 0, 8)([1])["input_ids"].shape == (1, 32)  # no cap given: plain rounding

    rows = rows_of(
        tmp_path, "long", train={"epochs": 1, "batch_size": 8}, data={"max_length": 513, "max_train_examples": 16, "max_val_examples": 8}
    )
    assert len(rows) == 1 and math.isfinite(rows[0]["val_loss"])
