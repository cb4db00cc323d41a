"""Data: every bad file or column gives one clear line; good files in every format load,
labels keep their names, the validation split is stratified and seeded, and batches
are padded and ordered as the training loop expects."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flood_cli.config.schema import DataConfig, ModelConfig
from flood_cli.core.errors import FloodError
from flood_cli.data.batches import Collator, EpochShuffleSampler, eval_shard, length_sorted_batches, plan_steps
from flood_cli.data.prepare import TokenizedSplit, prepare_data, read_splits
from flood_cli.model import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig(tiny={}))


def frame(n: int, labels=("ham", "spam"), **extra_columns) -> pd.DataFrame:
    """n distinct short texts with labels cycling through ``labels``."""
    data = {"text": [f"message number {i} about money" for i in range(n)], "label": [labels[i % len(labels)] for i in range(n)]}
    data.update(extra_columns)
    return pd.DataFrame(data)


Content = str | bytes | pd.DataFrame


def write(path: Path, content: Content) -> Path:
    """Write text, bytes, or a DataFrame in the format the suffix names."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        writers = {
            ".csv": lambda: content.to_csv(path, index=False),
            ".tsv": lambda: content.to_csv(path, sep="\t", index=False),
            ".json": lambda: content.to_json(path, orient="records"),
            ".jsonl": lambda: content.to_json(path, orient="records", lines=True),
            ".parquet": lambda: content.to_parquet(path, index=False),
        }
        writers[path.suffix]()
    return path


def data_config(tmp_path: Path, files: dict[str, Content], **options: Any) -> DataConfig:
    """Write ``files`` into tmp_path; options naming a file (train_file=...) point at it."""
    for name, content in files.items():
        write(tmp_path / name, content)
    for key in ("train_file", "validation_file", "test_file"):
        if key in options:
            options[key] = str(tmp_path / options[key])
    options.setdefault("train_file", str(tmp_path / "train.csv"))
    return DataConfig(**options)


def raises_one_line(fragment: str):
    return pytest.raises(FloodError, match=re.escape(fragment))


# ---------------------------------------------------------------------------
# Bad inputs


GOOD_CSV = frame(20)
RAGGED_HINT = 'quote texts that contain commas ("like, this") or fix that line'

BAD_DATA = [
    # (case, files in tmp, DataConfig options, expected message; {tmp} is the folder)
    ("missing train file", {}, {"train_file": "nope.csv"}, "train file {tmp}/nope.csv not found; fix data.train_file"),
    (
        "train file is a folder",
        {},
        {"train_file": ""},
        "train file {tmp} is a folder; data.train_file must be a csv/tsv/json/jsonl/parquet file",
    ),
    (
        "unknown extension",
        {"train.xlsx": b"PK\x03\x04"},
        {"train_file": "train.xlsx"},
        "train file {tmp}/train.xlsx has an unknown format '.xlsx'; use .csv, .tsv, .json, .jsonl or .parquet",
    ),
    ("empty file", {"train.csv": b""}, {}, "train file {tmp}/train.csv is empty; it needs a header and at least one example"),
    (
        "header only",
        {"train.csv": "text,label\n"},
        {},
        "train file {tmp}/train.csv has no examples (only a header?); it needs at least one row",
    ),
    (
        "empty json list",
        {"train.json": "[]"},
        {"train_file": "train.json"},
        "train file {tmp}/train.json has no examples (only a header?); it needs at least one row",
    ),
    (
        "ragged row (unquoted comma)",
        {"train.csv": "text,label\nhello,ham\nhello, world,spam\nbye,ham\n"},
        {},
        "train file {tmp}/train.csv: line 3 has 3 fields but the header has 2; " + RAGGED_HINT,
    ),
    (
        # pandas would silently take the first column as an index and shift the others
        "ragged first row",
        {"train.csv": "text,label\nhello, world,spam\nbye,ham\n"},
        {},
        "train file {tmp}/train.csv: line 2 has more fields than the header; quote texts that contain commas",
    ),
    (
        "ragged tsv",
        {"train.tsv": "text\tlabel\nhello\tham\nhello\tworld\tspam\n"},
        {"train_file": "train.tsv"},
        "train file {tmp}/train.tsv: line 3 has 3 fields but the header has 2; "
        'quote texts that contain tabs ("like, this") or fix that line',
    ),
    (
        "latin-1 bytes",
        {"train.csv": "text,label\nhello,ham\ncafé olé,spam\n".encode("latin-1")},
        {},
        "train file {tmp}/train.csv is not UTF-8 text (line 3); re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8",
    ),
    (
        "broken json",
        {"train.json": "{not json"},
        {"train_file": "train.json"},
        "cannot read train file {tmp}/train.json: JSON parse error: Missing a name for object member. in row 0; "
        "check that it is valid json text in UTF-8",
    ),
    (
        "not parquet",
        {"train.parquet": "text,label\n"},
        {"train_file": "train.parquet"},
        "cannot read train file {tmp}/train.parquet: Parquet magic bytes not found in footer. "
        "Either the file is corrupted or this is not a parquet file; check that it is valid parquet",
    ),
    (
        "missing text column",
        {"train.csv": GOOD_CSV.rename(columns={"text": "body"})},
        {},
        "train data has no column 'text' (columns: body, label); set data.text_column",
    ),
    (
        "missing label column",
        {"train.csv": GOOD_CSV.rename(columns={"label": "category"}).assign(group=1)},
        {},
        "train data has no column 'label' (columns: text, category, group); set data.label_column",
    ),
    (
        "missing text pair column",
        {"train.csv": GOOD_CSV},
        {"text_pair_column": "hypothesis"},
        "train data has no column 'hypothesis' (columns: text, label); set data.text_pair_column",
    ),
    (
        "NaN label",
        {"train.csv": "text,label\na,ham\nb,\nc,spam\nd,spam\n"},
        {},
        "train data: 1 of 4 rows have no label in column 'label' (first: data row 2); fill or drop them",
    ),
    (
        "blank and null labels (json)",
        {"train.jsonl": '{"text": "a", "label": "ham"}\n{"text": "b", "label": "  "}\n{"text": "c", "label": null}\n'},
        {"train_file": "train.jsonl"},
        "train data: 2 of 3 rows have no label in column 'label' (first: data row 2); fill or drop them",
    ),
    (
        "text empty in every row",
        {"train.csv": "text,label\n,ham\n,spam\n\"\",ham\n"},
        {},
        "train data: column 'text' is empty in every row; point data.text_column to the text",
    ),
    (
        "text blank in every row (json)",
        {"train.jsonl": '{"text": " ", "label": "ham"}\n{"text": "", "label": "spam"}\n{"text": null, "label": "spam"}\n'},
        {"train_file": "train.jsonl"},
        "train data: column 'text' is empty in every row; point data.text_column to the text",
    ),
    (
        "some texts missing",
        {"train.csv": "text,label\na,ham\nb,spam\n,spam\nd,ham\n"},
        {},
        "train data: 1 of 4 rows have no text in column 'text' (first: data row 3); fill or drop them",
    ),
    (
        "one class only",
        {"train.csv": frame(10, labels=("ham",))},
        {},
        "training data has one class only ('ham' in column 'label'); a classifier needs at least two",
    ),
    (
        "label seen only in validation",
        {"train.csv": GOOD_CSV, "val.csv": frame(4, labels=("ham", "eggs"))},
        {"validation_file": "val.csv"},
        "validation labels 'eggs' do not occur in the training data (labels: ham, spam); "
        "fix the validation file or add examples of them to training",
    ),
    (
        "validation file without the label column",
        {"train.csv": GOOD_CSV, "val.csv": frame(4).rename(columns={"label": "y"})},
        {"validation_file": "val.csv"},
        "validation data has no column 'label' (columns: text, y); set data.label_column",
    ),
    ("missing test file", {"train.csv": GOOD_CSV}, {"test_file": "test.csv"}, "test file {tmp}/test.csv not found; fix data.test_file"),
    (
        "a label with one example",
        {"train.csv": frame(10, labels=("ham", "spam", "ham", "spam", "ham", "spam", "ham", "spam", "ham", "eggs"))},
        {},
        "label 'eggs' has only one training example, too few to split off a stratified validation set; "
        "add examples of it, drop it, or give data.validation_file",
    ),
    (
        "validation part smaller than the label count",
        {"train.csv": frame(6, labels=("a", "b", "c"))},
        {"validation_fraction": 0.2},
        "data.validation_fraction 0.2 of 6 examples gives 2 validation and 4 training examples, fewer than the 3 labels; "
        "add examples, change data.validation_fraction, or give data.validation_file",
    ),
]


@pytest.mark.parametrize("case, files, options, expected", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data(tmp_path, tokenizer, case, files, options, expected):
    cfg = data_config(tmp_path, files, **options)
    with raises_one_line(expected.format(tmp=tmp_path)) as excinfo:
        prepare_data(cfg, tokenizer)
    message = str(excinfo.value)
    assert "\n" not in message, message


def test_bad_file_is_reported_without_datasets_log(tmp_path, tokenizer, capfd):
    """datasets logs a multi-line report of a file it cannot read; the one line is ours."""
    cfg = data_config(tmp_path, {"train.csv": "text,label\nhello,ham\nhello, world,spam\n"})
    with pytest.raises(FloodError):
        prepare_data(cfg, tokenizer)
    captured = capfd.readouterr()
    assert "Failed to read file" not in captured.err + captured.out


def test_class_label_test_split_with_unlabelled_rows(tmp_path, tokenizer):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["pos", "neg"])})
    Dataset.from_dict({"text": [f"t {i}" for i in range(10)], "label": [0, 1] * 5}, features=features).to_parquet(tmp_path / "train.parquet")
    Dataset.from_dict({"text": ["a", "b"], "label": [0, -1]}, features=features).to_parquet(tmp_path / "test.parquet")
    cfg = data_config(tmp_path, {}, train_file="train.parquet", test_file="test.parquet", validation_fraction=0.2)
    with raises_one_line("test data has labels outside 0..1 (e.g. -1 for unlabelled test sets); drop that split"):
        prepare_data(cfg, tokenizer)
    # ClassLabel names keep their own order (not sorted)
    prepared = prepare_data(cfg.model_copy(update={"test_file": None}), tokenizer)
    assert prepared.label_names == ["pos", "neg"]


# ---------------------------------------------------------------------------
# Good inputs


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_file_formats_load(tmp_path, tokenizer, suffix):
    cfg = data_config(tmp_path, {f"train{suffix}": frame(20)}, train_file=f"train{suffix}", validation_fraction=0.2)
    assert set(read_splits(cfg)["train"].column_names) == {"text", "label"}
    prepared = prepare_data(cfg, tokenizer)
    assert prepared.label_names == ["ham", "spam"]
    assert prepared.counts == {"train": 16, "validation": 4}
    assert prepared.description == f"train{suffix}"
    first = prepared.train.input_ids[0]
    assert first[0] == tokenizer.cls_token_id and first[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in first  # the shipped vocabulary knows these words
    assert prepared.train.token_type_ids is None


LABEL_CASES = [
    # (case, label values cycled through the rows, expected label names in id order)
    ("integer labels", (0, 1), ["0", "1"]),
    ("integers sort as numbers", (10, 2, 1), ["1", "2", "10"]),
    ("strings sort by name", ("spam", "ham"), ["ham", "spam"]),
    ("surrounding spaces are one label", ("spam", "ham", " spam "), ["ham", "spam"]),
    ("float labels that are integers", (1.0, 0.0), ["0", "1"]),
]


@pytest.mark.parametrize("case, labels, expected", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_label_names(tmp_path, tokenizer, case, labels, expected):
    df = frame(30, labels=labels)
    cfg = data_config(tmp_path, {"train.jsonl": df}, train_file="train.jsonl", validation_fraction=0.2)
    prepared = prepare_data(cfg, tokenizer)
    assert prepared.label_names == expected
    assert set(prepared.train.labels) == set(range(len(expected)))


def test_validation_and_test_files_are_encoded_with_the_training_labels(tmp_path, tokenizer):
    files = {
        "train.csv": frame(10, labels=(1, 0)),
        "val.jsonl": pd.DataFrame({"text": ["a", "b", "c"], "label": ["1", "1", "0"]}),  # strings this time
        "test.csv": frame(4, labels=(0,)),
    }
    cfg = data_config(tmp_path, files, validation_file="val.jsonl", test_file="test.csv")
    prepared = prepare_data(cfg, tokenizer)
    assert prepared.counts == {"train": 10, "validation": 3, "test": 4}
    assert prepared.validation.labels == [1, 1, 0]
    assert prepared.test.labels == [0, 0, 0, 0]


def test_text_pairs_get_token_type_ids(tmp_path, tokenizer):
    df = frame(20, hypothesis=[f"the answer is {i}" for i in range(20)])
    cfg = data_config(tmp_path, {"train.csv": df}, text_pair_column="hypothesis", validation_fraction=0.2)
    prepared = prepare_data(cfg, tokenizer)
    for split in (prepared.train, prepared.validation):
        assert split.token_type_ids is not None
        assert all(len(t) == len(i) for t, i in zip(split.token_type_ids, split.input_ids, strict=True))
        assert all(t[0] == 0 and t[-1] == 1 for t in split.token_type_ids)
    batch = Collator(prepared.train, tokenizer.pad_token_id)([0, 1])
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["token_type_ids"].max() == 1


def test_stratified_validation_split_is_seeded_by_split_seed(tmp_path, tokenizer):
    labels = ["ham"] * 60 + ["spam"] * 40
    df = pd.DataFrame({"text": [f"message number {i}" for i in range(100)], "label": labels})
    write(tmp_path / "train.csv", df)

    def validation(seed: int):
        cfg = DataConfig(train_file=str(tmp_path / "train.csv"), validation_fraction=0.2, split_seed=seed)
        return prepare_data(cfg, tokenizer)

    first, again, other = validation(1), validation(1), validation(2)
    assert first.counts == {"train": 80, "validation": 20}
    # Class proportions kept on both sides: 60/40 -> 12/8 and 48/32
    assert Counter(first.validation.labels) == {0: 12, 1: 8}
    assert Counter(first.train.labels) == {0: 48, 1: 32}
    assert first.validation.input_ids == again.validation.input_ids
    assert sorted(map(tuple, first.validation.input_ids)) != sorted(map(tuple, other.validation.input_ids))
    assert Counter(other.validation.labels) == {0: 12, 1: 8}
    # No example is in both splits
    assert not set(map(tuple, first.train.input_ids)) & set(map(tuple, first.validation.input_ids))


def test_example_limits(tmp_path, tokenizer):
    cfg = data_config(tmp_path, {"train.csv": frame(100)}, validation_fraction=0.2, max_train_examples=10, max_val_examples=5)
    prepared = prepare_data(cfg, tokenizer)
    assert prepared.counts == {"train": 10, "validation": 5}
    assert len(prepared.train.input_ids) == len(prepared.train.labels) == 10


def test_limits_above_the_data_size_keep_everything(tmp_path, tokenizer):
    cfg = data_config(tmp_path, {"train.csv": frame(20)}, validation_fraction=0.2, max_train_examples=1000, max_val_examples=1000)
    assert prepare_data(cfg, tokenizer).counts == {"train": 16, "validation": 4}


def test_long_texts_are_truncated_to_max_length(tmp_path, tokenizer):
    df = frame(10).assign(text=[" ".join(["money"] * 100)] * 10)
    cfg = data_config(tmp_path, {"train.csv": df}, validation_fraction=0.2, max_length=16)
    prepared = prepare_data(cfg, tokenizer)
    assert {len(ids) for ids in prepared.train.input_ids} == {16}


# ---------------------------------------------------------------------------
# Batches


def test_collator_pads_to_a_multiple_of_8_with_attention_mask():
    split = TokenizedSplit(input_ids=[[2, 5, 3], [2, 5, 6, 7, 8, 9, 10, 11, 3], [2, 3]], labels=[1, 0, 1])
    batch = Collator(split, pad_token_id=0, pad_to_multiple_of=8)([0, 1, 2])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (3, 16)
    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 9, 2]
    assert batch["input_ids"][0].tolist() == [2, 5, 3] + [0] * 13
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert batch["labels"].tolist() == [1, 0, 1]


def test_collator_without_multiple_pads_to_the_longest():
    split = TokenizedSplit(input_ids=[[2, 5, 3], [2, 3]], labels=[0, 1])
    batch = Collator(split, pad_token_id=7)([1, 0])
    assert batch["input_ids"].tolist() == [[2, 3, 7], [2, 5, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["labels"].tolist() == [1, 0]


def test_collator_sdpa_format_sends_no_mask_without_padding_and_a_4d_boolean_one_with_it():
    split = TokenizedSplit(input_ids=[[2, 5, 6, 3], [2, 7, 8, 3], [2, 3]], labels=[0, 1, 1])
    full = Collator(split, pad_token_id=0, pad_to_multiple_of=4, attention="sdpa")([0, 1])
    assert set(full) == {"input_ids", "labels"}
    padded = Collator(split, pad_token_id=0, pad_to_multiple_of=4, attention="sdpa")([0, 2])
    assert padded["attention_mask"].shape == (2, 1, 1, 4)
    assert padded["attention_mask"].dtype == torch.bool
    assert padded["attention_mask"][:, 0, 0].tolist() == [[True] * 4, [True, True, False, False]]
    # The multiple alone can call for padding.
    rounded = Collator(split, pad_token_id=0, pad_to_multiple_of=8, attention="sdpa")([0, 1])
    assert rounded["attention_mask"][:, 0, 0].sum(dim=1).tolist() == [4, 4]
    with pytest.raises(ValueError, match="unknown attention mask format '3d'"):
        Collator(split, pad_token_id=0, attention="3d")


def test_epoch_shuffle_sampler_depends_only_on_seed_and_epoch():
    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochShuffleSampler(50, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(42, 0) == order(42, 0)
    assert order(42, 3) == order(42, 3)
    assert order(42, 0) != order(42, 1)
    assert order(42, 0) != order(43, 0)
    assert sorted(order(42, 1)) == list(range(50))
    assert len(EpochShuffleSampler(50, 42)) == 50


def test_length_sorted_batches_cover_every_index_once():
    lengths = [5, 1, 9, 3, 3, 7, 2, 8, 6, 4, 1]
    split = TokenizedSplit(input_ids=[[1] * n for n in lengths], labels=[0] * len(lengths))
    batches = length_sorted_batches(split, batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 3]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 120), batch_size=st.integers(1, 9), accum=st.integers(1, 4), processes=st.integers(1, 5),
    seed=st.integers(0, 3),
)
def test_the_step_plan_shares_every_example_out_once_on_any_size(size, batch_size, accum, processes, seed):
    """Over all processes, an epoch's plan uses each example exactly once, in steps of
    batch_size × accum × processes (the last one shorter); every process has at least
    one micro-batch of every step, a placeholder only when the step has fewer examples
    than processes; and shards differ by at most one example."""
    order = list(EpochShuffleSampler(size, seed))
    plans = [plan_steps(order, batch_size, accum, processes, rank) for rank in range(processes)]
    per_step = batch_size * accum * processes
    assert all(len(plan) == -(-size // per_step) for plan in plans)
    used = []
    for number, steps in enumerate(zip(*plans, strict=True)):
        examples = min(per_step, size - number * per_step)
        assert {step.examples for step in steps} == {examples}
        shards = [step.local_examples for step in steps]
        assert sum(shards) == examples and max(shards) - min(shards) <= 1
        for step in steps:
            assert step.micro_batches and all(1 <= len(b) <= batch_size for b in step.micro_batches)
            assert step.placeholder == (step.local_examples == 0)
            if not step.placeholder:
                used += [i for batch in step.micro_batches for i in batch]
        assert any(step.placeholder for step in steps) == (examples < processes)
    assert sorted(used) == list(range(size))


def test_one_process_plans_the_order_in_consecutive_batches():
    order = list(EpochShuffleSampler(23, 1))
    plan = plan_steps(order, batch_size=4, grad_accum_steps=2)
    assert [list(map(list, step.micro_batches)) for step in plan] == [
        [order[0:4], order[4:8]], [order[8:12], order[12:16]], [order[16:20], order[20:23]]
    ]
    assert [step.examples for step in plan] == [8, 8, 7]


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 80), batch_size=st.integers(1, 20), processes=st.integers(1, 6))
def test_evaluation_shards_cover_every_example_once(size, batch_size, processes):
    split = TokenizedSplit(input_ids=[[1] * (1 + (i * 7) % 13) for i in range(size)], labels=[0] * size)
    batches = length_sorted_batches(split, batch_size)
    scored = [i for rank in range(processes) for batch in eval_shard(batches, processes, rank) for i in batch]
    assert sorted(scored) == list(range(size))


# ---------------------------------------------------------------------------
# Hub datasets, through a dataset repository laid out as on the Hub, on disk


def hub_style_repo(folder: Path) -> Path:
    """A GLUE/SST-2-like dataset repository: parquet shards per split, ClassLabel names
    in the schema, and a test split whose labels are hidden (-1), as GLUE's are."""
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])})
    words = ["good", "bad", "fine", "awful", "great", "dull"]
    for split, size in (("train", 40), ("validation", 12), ("test", 8)):
        rows = {"sentence": [f"a {words[i % 6]} film number {i}" for i in range(size)], "label": [i % 2 if split != "test" else -1 for i in range(size)]}
        if split == "test":
            features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.Value("int64")})
        shard = folder / "data" / f"{split}-00000-of-00001.parquet"
        shard.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(shard))
    return folder


def test_a_hub_layout_dataset_loads_its_splits_and_class_names(tmp_path, tokenizer):
    repo = hub_style_repo(tmp_path / "sst2-like")
    cfg = DataConfig(dataset=str(repo), train_split="train", validation_split="validation", text_column="sentence", max_length=16)
    prepared = prepare_data(cfg, tokenizer)
    assert prepared.label_names == ["negative", "positive"]  # from the ClassLabel, not the values
    assert (len(prepared.train), len(prepared.validation)) == (40, 12)
    assert prepared.train.labels[:4] == [0, 1, 0, 1]
    assert prepared.test is None


def test_a_hub_test_split_with_hidden_labels_is_refused_in_one_line(tmp_path, tokenizer):
    repo = hub_style_repo(tmp_path / "sst2-like")
    cfg = DataConfig(dataset=str(repo), train_split="train", validation_split="validation", test_split="test", text_column="sentence")
    with raises_one_line("test data has labels outside 0..1 (e.g. -1 for unlabelled test sets); drop that split"):
        prepare_data(cfg, tokenizer)


def test_a_missing_hub_split_names_the_split_and_what_to_check(tmp_path, tokenizer):
    repo = hub_style_repo(tmp_path / "sst2-like")
    cfg = DataConfig(dataset=str(repo), train_split="train", validation_split="dev", text_column="sentence")
    with raises_one_line(f"cannot load validation split 'dev' of dataset '{repo}' ("):
        prepare_data(cfg, tokenizer)


def test_label_noise_flips_a_seeded_fifth_of_the_training_labels_and_nothing_else(tmp_path, tokenizer):
    """data.label_noise: 0.2 flips exactly 20 % of the training labels (chosen by
    label_noise_seed, to another class); validation labels are read as written; the
    same seed flips the same examples, another seed others; 3 classes flip to both others."""
    import csv as csv_module

    rows = [(f"message {i} about topic {i % 3}", ("ham", "spam", "eggs")[i % 3]) for i in range(150)]
    train_file, val_file = tmp_path / "train.csv", tmp_path / "val.csv"
    with open(train_file, "w", newline="") as handle:
        csv_module.writer(handle).writerows([("text", "label"), *rows])
    with open(val_file, "w", newline="") as handle:
        csv_module.writer(handle).writerows([("text", "label"), *rows[:30]])

    def prepared(**data):
        return prepare_data(DataConfig(train_file=str(train_file), validation_file=str(val_file), max_length=16, **data), tokenizer)

    clean = prepared()
    noisy = prepared(label_noise=0.2, label_noise_seed=7)
    flipped = [i for i, (a, b) in enumerate(zip(clean.train.labels, noisy.train.labels, strict=True)) if a != b]
    assert len(flipped) == 30  # exactly a fifth of 150
    assert noisy.validation.labels == clean.validation.labels
    assert noisy.train.input_ids == clean.train.input_ids  # texts untouched
    assert prepared(label_noise=0.2, label_noise_seed=7).train.labels == noisy.train.labels
    other = prepared(label_noise=0.2, label_noise_seed=8)
    assert [i for i, (a, b) in enumerate(zip(clean.train.labels, other.train.labels, strict=True)) if a != b] != flipped
    moves = {(clean.train.labels[i], noisy.train.labels[i]) for i in flipped}
    assert all(a != b for a, b in moves) and len(moves) == 6  # every class to both others
