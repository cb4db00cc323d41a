"""The run config: every bad file, value or override gives one clear line; good ones load,
overrides apply, and relative paths are taken from the config file's folder."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from flood_cli.config.load import load_config, parse_set_option
from flood_cli.core.errors import FloodError
from tests.conftest import SHIPPED_DATA, TINY_CONFIG, small_config, write_config


def raises_one_line(fragment: str):
    """pytest.raises for a FloodError whose message contains ``fragment`` verbatim."""
    return pytest.raises(FloodError, match=re.escape(fragment))


def assert_one_line(excinfo: pytest.ExceptionInfo) -> None:
    message = str(excinfo.value)
    assert message and "\n" not in message, message


# ---------------------------------------------------------------------------
# The file itself


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with raises_one_line(f"config file {path} not found; pass an existing YAML file") as excinfo:
        load_config(path)
    assert_one_line(excinfo)


def test_config_path_is_a_folder(tmp_path):
    with raises_one_line(f"config {tmp_path} is a folder; pass a YAML file") as excinfo:
        load_config(tmp_path)
    assert_one_line(excinfo)


FILE_CASES = [
    # (case, file contents, expected message after "<path>")
    ("yaml syntax", "model:\n  tiny:\n    num_layers: 2\n   hidden_size: 64\n", " at line 4, column 4: "),
    ("tab indent", "model:\n\ttiny: {}\n", " at line 2, column 1: found character '\\t' that cannot start any token; fix the file"),
    ("empty file", "", " is empty; it needs at least the model and data sections (see configs/tiny.yaml)"),
    ("comments only", "# nothing yet\n", " is empty; it needs at least the model and data sections"),
    ("top-level list", "- model\n- data\n", " must be a mapping of sections (model, data, train…), not a list"),
    ("top-level string", "configs/tiny.yaml\n", " must be a mapping of sections (model, data, train…), not a str"),
]


@pytest.mark.parametrize("case, text, expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_config_file(tmp_path, case, text, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with raises_one_line(f"{path}{expected}") as excinfo:
        load_config(path)
    assert_one_line(excinfo)
    if case in ("yaml syntax", "tab indent"):
        assert str(excinfo.value).startswith(f"YAML syntax error in {path} at line ")


def test_config_not_utf8(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes("# café\nmodel: {}\n".encode("latin-1"))
    with raises_one_line(f"config {path} is not UTF-8 text (invalid continuation byte at byte 5); save it as UTF-8") as excinfo:
        load_config(path)
    assert_one_line(excinfo)


# ---------------------------------------------------------------------------
# What YAML may hold: aliases with bounded expansion, each key once


BASE = "model:\n  tiny: {}\ndata:\n  train_file: x.csv\n"  # lines 1 to 4


def alias_bomb(levels: int = 8, where: str = "meta") -> str:
    """A billion laughs: each anchor a list of ten aliases to the one before (10**9 values
    for 8 levels, in 400 bytes), used as train.lr; the anchors sit in ``where``."""
    anchors = "  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, levels + 1)
    )
    return BASE + f"{where}:\n{anchors}train:\n  lr: *a{levels}\n"


def repeated(times: int) -> str:
    """An alias to a list of 100 values (99 items and the list), repeated ``times`` times."""
    return BASE + f"meta:\n  a: &a [{', '.join(['1'] * 99)}]\n  b: [{', '.join(['*a'] * times)}]\n"


BOMB = "YAML aliases repeat more than 10000 values (seen at line {}, column 7); write the values out, or use fewer aliases"
RECURSIVE = "recursive YAML alias at line {}, column {} (a value that contains itself); replace the alias with a plain value"
REFUSED_YAML = [
    # (case, file text, expected message after "<path>: ")
    ("section twice", BASE + "train:\n  lr: 0.1\ntrain:\n  epochs: 2\n", "key 'train' appears twice (lines 5 and 7); keep one"),
    ("key twice in a section", BASE + "train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "key 'train.lr' appears twice (lines 6 and 8); keep one"),
    ("key twice, quoted once", BASE + "train:\n  lr: 0.1\n  'lr': 0.2\n", "key 'train.lr' appears twice (lines 6 and 7); keep one"),
    ("key twice on one line", "model:\n  tiny: {num_layers: 2, num_layers: 3}\n", "key 'model.tiny.num_layers' appears twice (both on line 2); keep one"),
    ("model section twice", BASE + "model:\n  tiny: {}\n", "key 'model' appears twice (lines 1 and 5); keep one"),
    ("billion laughs (10**9 values)", alias_bomb(), BOMB.format(9)),
    ("alias bomb under data", alias_bomb(where="data"), BOMB.format(9)),
    ("10,100 repeated values", repeated(101), "YAML aliases repeat more than 10000 values (seen at line 7, column 6); write the values out, or use fewer aliases"),
    ("recursive alias in a list", BASE + "train:\n  lr: &a [*a]\n", RECURSIVE.format(6, 7)),
    ("recursive alias in a mapping", BASE + "meta: &m {x: *m}\n", RECURSIVE.format(5, 7)),
    ("recursive alias through a merge", BASE + "meta: &m\n  <<: *m\n", RECURSIVE.format(5, 7)),
]


@pytest.mark.timeout(30)  # without the checks, the billion laughs hang for minutes
@pytest.mark.parametrize("case, text, expected", REFUSED_YAML, ids=[c[0] for c in REFUSED_YAML])
def test_refused_yaml(tmp_path, case, text, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(FloodError) as excinfo:
        load_config(path)
    assert str(excinfo.value) == f"{path}: {expected}"
    assert time.perf_counter() - started < 2.0


def test_aliases_and_merges_within_the_limit_load(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "model:\n  name_or_path: &m bert-base-uncased\n  tokenizer: *m\ndata:\n  train_file: x.csv\n"
        "meta:\n  defaults: &t {lr: 0.1, epochs: 2}\ntrain:\n  <<: *t\n  lr: 0.2\n"  # a key over a merged one is no duplicate
    )
    config = load_config(path)
    assert (config.model.tokenizer, config.train.lr, config.train.epochs) == ("bert-base-uncased", 0.2, 2)
    path.write_text(repeated(100))  # 10,000 repeated values: the most allowed
    assert load_config(path).data.train_file == str(tmp_path / "x.csv")


def test_a_saved_run_config_goes_through_the_same_checks(tmp_path):
    """`flood train --resume` reads the run's config.yaml with load_config: a key added
    twice to it by hand is refused like in any config file."""
    run = tmp_path / "run"
    run.mkdir()
    saved = yaml.safe_dump({**small_config(), "meta": {"started_at": "2025-01-01"}}, sort_keys=False)
    assert load_config(write_config(run, yaml.safe_load(saved), "config.yaml")).train.lr == 0.001
    lines = saved.splitlines()
    at = lines.index("  lr: 0.001") + 1
    lines.insert(at, "  lr: 0.1")
    (run / "config.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(FloodError) as excinfo:
        load_config(run / "config.yaml")
    assert str(excinfo.value) == f"{run / 'config.yaml'}: key 'train.lr' appears twice (lines {at} and {at + 1}); keep one"


def test_aliases_nested_past_100_levels(tmp_path):
    """Each anchor 60 levels deep and aliasing the one before: 120 levels once expanded."""
    path = tmp_path / "cfg.yaml"
    path.write_text(BASE + "meta:\n  a0: &a0 " + "[" * 60 + "]" * 60 + "\n  a1: &a1 " + "[" * 60 + "*a0" + "]" * 60 + "\n")
    with pytest.raises(FloodError) as excinfo:
        load_config(path)
    assert str(excinfo.value) == (
        f"YAML syntax error in {path} at line 7, column 30: the document is nested too deeply to read "
        "(more than 100 levels); fix the file and retry"
    )


# ---------------------------------------------------------------------------
# Keys and values


def _set(path: str, value):
    """An edit of the small config: set section.key (deeper keys allowed) to value."""

    def edit(config: dict) -> None:
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return edit


def _rename(old: str, new: str):
    def edit(config: dict) -> None:
        config[new] = config.pop(old)

    return edit


def _delete(section: str, key: str):
    def edit(config: dict) -> None:
        del config[section][key]

    return edit


def _edits(*edits):
    def edit(config: dict) -> None:
        for one in edits:
            one(config)

    return edit


NAME_RULE = "is not a plain folder name; use 1 to 200 letters, digits and . _ - + = @ , (not . or ..)"
SEED_RULE = "is out of range; use a whole number from 0 to 4294967295 (2**32 - 1)"

VALUE_CASES = [
    # (case, edit of the small config, expected message after "config error in <path>: ")
    ("unknown key in section", _set("train.lrr", 1e-3), "unknown key 'train.lrr'; did you mean 'lr'?"),
    ("misspelt section", _rename("model", "modle"), "unknown key 'modle'; did you mean 'model'?"),
    ("unknown top-level key", _set("zzz", 1), "unknown key 'zzz'; known keys: model, data, train, runtime, output"),
    ("unknown nested key", _set("model.tiny.hidden_sise", 64), "unknown key 'model.tiny.hidden_sise'; did you mean 'hidden_size'?"),
    ("missing section", lambda c: c.pop("data"), "data: missing section; add it (see configs/tiny.yaml)"),
    ("empty section", _set("model", None), "model: must be a section of key: value lines, not empty; see configs/tiny.yaml"),
    ("section is a list", _set("data", [1, 2]), "data: must be a section of key: value lines, not a list ([1, 2]); see configs/tiny.yaml"),
    ("lr not a number", _set("train.lr", "abc"), "train.lr: input should be a valid number, unable to parse string as a number (got 'abc')"),
    ("lr nan", _set("train.lr", float("nan")), "train.lr: input should be a finite number (got nan)"),
    ("lr inf", _set("train.lr", float("inf")), "train.lr: input should be a finite number (got inf)"),
    ("b negative", _set("train", {"mode": "flooding", "b": -0.1}), "train.b: input should be greater than or equal to 0 (got -0.1)"),
    (
        "ascent_lr >= lr",
        _set("train", {"mode": "alternate", "lr": 1e-4, "ascent_lr": 1e-3}),
        "train: ascent_lr (0.001) must be smaller than lr (0.0001) in mode alternate, or training ascends on average",
    ),
    (
        "alternate without ascent_lr",
        _set("train.mode", "alternate"),
        "train: mode alternate needs train.ascent_lr (or --ascent-lr), smaller than lr",
    ),
    (
        "ascent_lr outside alternate",
        _set("train.ascent_lr", 1e-5),
        "train: ascent_lr applies only to mode alternate, but mode is baseline; drop ascent_lr",
    ),
    ("flooding without b", _set("train.mode", "flooding"), "train: mode flooding needs a flood level: set train.b (or pass --b)"),
    (
        "b with mode baseline",
        _set("train", {"mode": "baseline", "b": 0.1}),
        "train: b (flood level) applies only to modes flooding and iflood, but mode is baseline; drop b or use mode flooding",
    ),
    ("unknown mode", _set("train.mode", "flood"), "train.mode: input should be 'baseline', 'flooding', 'iflood', 'adaflood', 'alternate', 'backstitch' or 'gradnorm' (got 'flood')"),
    ("iflood without b", _set("train.mode", "iflood"), "train: mode iflood needs a flood level: set train.b (or pass --b)"),
    (
        "gradnorm settings outside gradnorm",
        _set("train.gradnorm", {"r": 0.2}),
        "train: gradnorm settings apply only to mode gradnorm, but mode is baseline; drop train.gradnorm",
    ),
    ("adaflood gamma above 1", _set("train", {"mode": "adaflood", "adaflood": {"gamma": 1.5}}), "train.adaflood.gamma: input should be less than or equal to 1 (got 1.5)"),
    ("adaflood one fold", _set("train", {"mode": "adaflood", "adaflood": {"folds": 1}}), "train.adaflood.folds: input should be greater than or equal to 2 (got 1)"),
    ("backstitch interval 0", _set("train", {"mode": "backstitch", "backstitch": {"interval": 0}}), "train.backstitch.interval: input should be greater than or equal to 1 (got 0)"),
    ("unknown backstitch key", _set("train", {"mode": "backstitch", "backstitch": {"alpha": 0.2}}), "unknown key 'train.backstitch.alpha'; known keys: scale, interval"),
    ("holdout fold past folds", _set("data.holdout", {"folds": 2, "fold": 2}), "data.holdout: fold 2 does not exist among 2 folds (0 to 1)"),
    ("zero epochs", _set("train.epochs", 0), "train.epochs: input should be greater than or equal to 1 (got 0)"),
    ("fractional epochs", _set("train.epochs", 2.5), "train.epochs: input should be a valid integer, got a number with a fractional part (got 2.5)"),
    ("boolean epochs (yes)", _set("train.epochs", True), "train.epochs: must be a number, not the boolean true"),
    ("batch_size 0", _set("train.batch_size", 0), "train.batch_size: input should be greater than or equal to 1 (got 0)"),
    ("validation_fraction 1.5", _set("data.validation_fraction", 1.5), "data.validation_fraction: input should be less than 1 (got 1.5)"),
    ("max_length 2", _set("data.max_length", 2), "data.max_length: input should be greater than or equal to 8 (got 2)"),
    ("eval_every 1.5 epoch", _set("train.eval_every", "1.5 epoch"), "train.eval_every: must be 'epoch', a fraction of an epoch such as '0.5 epoch', or a positive number of optimizer steps (got '1.5 epoch'); a fraction of an epoch lies in (0, 1]"),
    ("eval_every x epoch", _set("train.eval_every", "half epoch"), "train.eval_every: must be 'epoch', a fraction of an epoch such as '0.5 epoch', or a positive number of optimizer steps (got 'half epoch')"),
    ("eval_every 0", _set("train.eval_every", 0), "train.eval_every: must be 'epoch', a fraction of an epoch such as '0.5 epoch', or a positive number of optimizer steps (got 0)"),
    ("eval_every foo", _set("train.eval_every", "foo"), "train.eval_every: must be 'epoch', a fraction of an epoch such as '0.5 epoch', or a positive number of optimizer steps (got 'foo')"),
    ("eval_every 1.5", _set("train.eval_every", 1.5), "train.eval_every: must be 'epoch', a fraction of an epoch such as '0.5 epoch', or a positive number of optimizer steps (got 1.5)"),
    ("early_stopping patience 0", _set("train.early_stopping", {"patience": 0}), "train.early_stopping.patience: input should be greater than or equal to 1 (got 0)"),
    ("early_stopping patience 1.5", _set("train.early_stopping", {"patience": 1.5}), "train.early_stopping.patience: input should be a valid integer, got a number with a fractional part (got 1.5)"),
    ("early_stopping patience yes", _set("train.early_stopping", {"patience": True}), "train.early_stopping.patience: must be a number, not the boolean true"),
    ("early_stopping without patience", _set("train.early_stopping", {"min_delta": 0.01}), "train.early_stopping.patience: missing key; add it"),
    ("early_stopping min_delta -0.1", _set("train.early_stopping", {"patience": 2, "min_delta": -0.1}), "train.early_stopping.min_delta: input should be greater than or equal to 0 (got -0.1)"),
    ("early_stopping min_delta .inf", _set("train.early_stopping", {"patience": 2, "min_delta": float("inf")}), "train.early_stopping.min_delta: input should be a finite number (got inf)"),
    ("early_stopping unknown key", _set("train.early_stopping", {"patience": 2, "mode": "max"}), "unknown key 'train.early_stopping.mode'; known keys: patience, min_delta"),
    (
        "tiny heads do not divide hidden",
        _set("model.tiny.hidden_size", 63),
        "model.tiny: hidden_size (63) must be a multiple of num_heads (2)",
    ),
    (
        "both name_or_path and tiny",
        _set("model.name_or_path", "bert-base-uncased"),
        "model: set exactly one of name_or_path (a Hub name or local folder) or tiny (a small BERT built from scratch)",
    ),
    (
        "neither name_or_path nor tiny",
        _set("model", {}),
        "model: set exactly one of name_or_path (a Hub name or local folder) or tiny (a small BERT built from scratch)",
    ),
    (
        "both dataset and train_file",
        _set("data.dataset", "glue"),
        "data: set exactly one of dataset (a Hub dataset name) or train_file (a local csv/tsv/json/jsonl/parquet file)",
    ),
    (
        "neither dataset nor train_file",
        _delete("data", "train_file"),
        "data: set exactly one of dataset (a Hub dataset name) or train_file (a local csv/tsv/json/jsonl/parquet file)",
    ),
    ("output.name with /", _set("output.name", "a/b"), f"output.name: 'a/b' {NAME_RULE}"),
    ("output.name ..", _set("output.name", ".."), f"output.name: '..' {NAME_RULE}"),
    ("output.name .", _set("output.name", "."), f"output.name: '.' {NAME_RULE}"),
    ("output.name empty", _set("output.name", ""), f"output.name: '' {NAME_RULE}"),
    ("output.name with a space", _set("output.name", "run 1"), f"output.name: 'run 1' {NAME_RULE}"),
    ("output.name with a newline", _set("output.name", "a\nb"), f"output.name: 'a\\nb' {NAME_RULE}"),
    ("output.name with a NUL byte", _set("output.name", "a\x00b"), f"output.name: 'a\\x00b' {NAME_RULE}"),
    ("output.name with ESC", _set("output.name", "a\x1b[2Jb"), f"output.name: 'a\\x1b[2Jb' {NAME_RULE}"),
    ("output.name of 201 characters", _set("output.name", "n" * 201), f"output.name: '{'n' * 52}…{'n' * 25}' {NAME_RULE}"),
    ("output.name a number", _set("output.name", 7), "output.name: input should be a valid string (got 7)"),
    ("train.seed -1", _set("train.seed", -1), f"train.seed: -1 {SEED_RULE}"),
    ("train.seed 2**32", _set("train.seed", 2**32), f"train.seed: 4294967296 {SEED_RULE}"),
    ("train.seed 2**40", _set("train.seed", 2**40), f"train.seed: 1099511627776 {SEED_RULE}"),
    ("data.split_seed -1", _set("data.split_seed", -1), f"data.split_seed: -1 {SEED_RULE}"),
    ("data.split_seed 2**32", _set("data.split_seed", 2**32), f"data.split_seed: 4294967296 {SEED_RULE}"),
    # a value echoed in a message is cut to 80 characters, whatever its size
    ("long string for a number", _set("train.lr", "x" * 1000), f"train.lr: input should be a valid number, unable to parse string as a number (got '{'x' * 52}…{'x' * 25}')"),
    (
        "long list for a number",
        _set("train.lr", list(range(100_000))),
        "train.lr: input should be a valid number (got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ...])",
    ),
    (
        "long list for a section",
        _set("data", ["row"] * 100_000),
        "data: must be a section of key: value lines, not a list (['row', 'row', 'row', 'row', 'row', 'row', 'row', 'ro… 'row', 'row', 'row', ...]); see configs/tiny.yaml",
    ),
    (
        "long unknown key",
        _set("train." + "k" * 500, 1),
        f"unknown key 'train.{'k' * 47}…{'k' * 26}'; known keys: mode, b, lr, ascent_lr, ascent_optimizer, optimizer, epochs, batch_size, eval_batch_size, weight_decay, warmup_ratio, schedule, max_grad_norm, grad_accum_steps, group_by_length, seed, eval_every, on_nonfinite, metrics, early_stopping, adaflood, backstitch, gradnorm",
    ),
    ("unknown device", _set("runtime.device", "tpu"), "runtime.device: input should be 'auto', 'cpu' or 'cuda' (got 'tpu')"),
    (
        "two mistakes: the unknown key wins",
        _edits(_rename("model", "modle"), _set("train.epochs", 0)),
        "unknown key 'modle'; did you mean 'model'?",
    ),
]


@pytest.mark.parametrize("case, edit, expected", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_bad_config_value(tmp_path, case, edit, expected):
    config = small_config()
    edit(config)
    path = write_config(tmp_path, config)
    with raises_one_line(f"config error in {path}: {expected}") as excinfo:
        load_config(path)
    assert_one_line(excinfo)
    assert str(excinfo.value) == f"config error in {path}: {expected}"


def test_nan_written_in_yaml(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(small_config()).replace("lr: 0.001", "lr: .nan"))
    with raises_one_line(f"config error in {path}: train.lr: input should be a finite number (got nan)"):
        load_config(path)


# ---------------------------------------------------------------------------
# --set and flag overrides


SET_CASES = [
    # (--set item, parsed (key, value))
    ("train.epochs=5", ("train.epochs", 5)),
    ("train.lr=1e-5", ("train.lr", 1e-5)),  # YAML 1.1 alone would give the string "1e-5"
    ("train.lr=2.5E-4", ("train.lr", 2.5e-4)),
    ("train.b=null", ("train.b", None)),
    ("train.b=", ("train.b", None)),
    ("train.mode = flooding", ("train.mode", "flooding")),
    ("output.name=run 1", ("output.name", "run 1")),
    ("model.tiny.num_layers=4", ("model.tiny.num_layers", 4)),
    ("runtime.device=cpu", ("runtime.device", "cpu")),
    ("output.save_best_model=true", ("output.save_best_model", True)),
]


@pytest.mark.parametrize("item, expected", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_parse_set_option(item, expected):
    key, value = parse_set_option(item)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


BAD_SETS = ["foo", "=3", "train=3", "train.=3", ".lr=3", "a..b=1", ""]


@pytest.mark.parametrize("item", BAD_SETS)
def test_malformed_set_option(item):
    with raises_one_line(f"--set {item!r}: expected section.key=value, e.g. --set train.epochs=5") as excinfo:
        parse_set_option(item)
    assert_one_line(excinfo)


def test_sets_apply_and_are_typed(config_file):
    config = load_config(config_file, sets=["train.epochs=5", "train.lr=1e-5", "train.eval_every=10", "model.tiny.num_layers=1"])
    assert config.train.epochs == 5
    assert config.train.lr == 1e-5 and isinstance(config.train.lr, float)
    assert config.train.eval_every == 10
    assert config.model.tiny.num_layers == 1


def test_exponent_without_dot_in_file_is_a_float(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(small_config()).replace("lr: 0.001", "lr: 1e-3"))
    assert load_config(path).train.lr == 1e-3


OVERRIDE_CASES = [
    # (case, train section of the file, overrides, --set items, expected (mode, b) or error fragment)
    ("b alone switches to flooding", {}, {"train.b": 0.5}, [], ("flooding", 0.5)),
    ("--set train.b alone switches to flooding", {}, {}, ["train.b=0.5"], ("flooding", 0.5)),
    ("b with mode flooding in the file", {"mode": "flooding", "b": 0.1}, {"train.b": 0.3}, [], ("flooding", 0.3)),
    ("b with --mode flooding", {}, {"train.b": 0.2, "train.mode": "flooding"}, [], ("flooding", 0.2)),
    ("b=null keeps baseline", {}, {}, ["train.b=null"], ("baseline", None)),
    (
        "b with mode alternate in the file",
        {"mode": "alternate", "ascent_lr": 1e-4},
        {"train.b": 0.5},
        [],
        "--b (flood level) applies only to modes flooding and iflood, but the mode is alternate; drop --b or pass --mode flooding",
    ),
    (
        "b with --mode alternate",
        {},
        {"train.b": 0.5, "train.mode": "alternate", "train.ascent_lr": 1e-4},
        [],
        "--b (flood level) applies only to modes flooding and iflood, but the mode is alternate; drop --b or pass --mode flooding",
    ),
    (
        "b with --mode baseline",
        {},
        {"train.b": 0.5, "train.mode": "baseline"},
        [],
        "--b (flood level) applies only to mode flooding; drop --b or --mode baseline",
    ),
    ("--set unknown key", {}, {}, ["train.lrr=3"], "unknown key 'train.lrr'; did you mean 'lr'?"),
    ("--set unknown section", {}, {}, ["trian.lr=3"], "unknown key 'trian'; did you mean 'train'?"),
    ("--set below a value", {}, {}, ["train.lr.x=3"], "cannot set train.lr.x: lr is a value, not a section; set train.lr=VALUE instead"),
    ("--set bad value", {}, {}, ["train.batch_size=many"], "train.batch_size: input should be a valid integer, unable to parse string as an integer (got 'many')"),
]


@pytest.mark.parametrize("case, train, overrides, sets, expected", OVERRIDE_CASES, ids=[c[0] for c in OVERRIDE_CASES])
def test_overrides(tmp_path, case, train, overrides, sets, expected):
    path = write_config(tmp_path, small_config(train=train))
    if isinstance(expected, tuple):
        config = load_config(path, overrides, sets)
        assert (config.train.mode, config.train.b) == expected
        return
    with raises_one_line(expected) as excinfo:
        load_config(path, overrides, sets)
    assert_one_line(excinfo)


def test_overrides_do_not_change_the_callers_dict(config_file):
    overrides = {"train.b": 0.5}
    load_config(config_file, overrides)
    assert overrides == {"train.b": 0.5}


# ---------------------------------------------------------------------------
# Paths


def test_relative_data_paths_are_taken_from_the_config_folder(tmp_path):
    (tmp_path / "data").mkdir()
    folder = tmp_path / "configs"
    folder.mkdir()
    config = small_config()
    config["data"].update(train_file="../data/train.csv", validation_file="../data/val.csv", test_file="test.csv")
    config = load_config(write_config(folder, config))
    assert config.data.train_file == str(tmp_path / "data" / "train.csv")
    assert config.data.validation_file == str(tmp_path / "data" / "val.csv")
    assert config.data.test_file == str(folder / "test.csv")


def test_absolute_data_path_is_kept(tmp_path):
    config = load_config(write_config(tmp_path, small_config()))
    assert config.data.train_file == str(SHIPPED_DATA)


def test_shipped_tiny_config_points_at_the_shipped_data():
    config = load_config(TINY_CONFIG)
    assert Path(config.data.train_file).resolve() == SHIPPED_DATA.resolve()
    assert config.model.describe() == "tiny-bert(L2,H64,A2)"


MODEL_PATH_CASES = [
    # (case, name_or_path written in the config, folder created next to the config, expected: None = absolute path)
    ("./ folder", "./my-model", "my-model", None),
    ("bare existing folder", "my-model", "my-model", None),
    ("parent folder", "../models/bert", "../models/bert", None),
    ("./ folder not there yet", "./absent", None, None),
    ("hub name", "bert-base-uncased", None, "bert-base-uncased"),
    ("hub name with namespace", "google/bert_uncased_L-2_H-128_A-2", None, "google/bert_uncased_L-2_H-128_A-2"),
]


@pytest.mark.parametrize("case, name, create, expected", MODEL_PATH_CASES, ids=[c[0] for c in MODEL_PATH_CASES])
def test_model_name_or_path(tmp_path, case, name, create, expected):
    folder = tmp_path / "configs"
    folder.mkdir()
    if create:
        (folder / create).mkdir(parents=True)
    config = small_config()
    config["model"] = {"name_or_path": name, "tokenizer": name}
    config = load_config(write_config(folder, config))
    resolved = str((folder / name).resolve()) if expected is None else expected
    assert config.model.name_or_path == resolved
    assert config.model.tokenizer == resolved


def test_resolved_config_loads_again_as_is(tmp_path, config_file):
    """The config saved with a run holds absolute paths and validates unchanged."""
    config = load_config(config_file, {"train.b": 0.25}, ["train.lr=1e-4"])
    saved_in = tmp_path / "run"
    saved_in.mkdir()
    again = load_config(write_config(saved_in, config.experiment_dict()))
    assert again.experiment_dict() == config.experiment_dict()
    assert (again.train.mode, again.train.b, again.train.lr) == ("flooding", 0.25, 1e-4)


@pytest.mark.parametrize(
    "given, stored, period_of_7",
    [("epoch", "epoch", 7), ("1 epoch", "epoch", 7), ("0.5 epoch", "0.5 epoch", 3.5), ("1/3 epochs", "1/3 epoch", 7 / 3), (5, 5, 5), ("5", 5, 5)],
)
def test_eval_every_takes_fractions_of_an_epoch(given, stored, period_of_7):
    from flood_cli.config.schema import TrainConfig

    train = TrainConfig(eval_every=given)
    assert train.eval_every == stored
    assert float(train.evaluation_period(7)) == pytest.approx(period_of_7)


SET_ORIGIN_CASES = [
    # (case, train section of the file, --set items, the whole message; {path} is the config file)
    ("unknown key", {}, ["train.lrr=3"], "--set train.lrr=3: unknown key 'train.lrr'; did you mean 'lr'?"),
    ("unknown section", {}, ["trian.lr=3"], "--set trian.lr=3: unknown key 'trian'; did you mean 'train'?"),
    ("bad value", {}, ["train.epochs=0"], "--set train.epochs=0: train.epochs: input should be greater than or equal to 1 (got 0)"),
    ("inside a section given whole", {}, ["train.adaflood={gamma: 2}", "train.mode=adaflood"], "--set train.adaflood={gamma: 2}: train.adaflood.gamma: input should be less than or equal to 1 (got 2)"),
    ("the file's own unknown key", {"lrr": 3}, ["train.epochs=2"], "config error in {path}: unknown key 'train.lrr'; did you mean 'lr'?"),
    ("the file's unknown key next to a --set", {"lrr": 3}, ["train.lrr=4"], "--set train.lrr=4: unknown key 'train.lrr'; did you mean 'lr'?"),
]


@pytest.mark.parametrize("case, train, sets, expected", SET_ORIGIN_CASES, ids=[c[0] for c in SET_ORIGIN_CASES])
def test_an_error_in_a_set_names_the_set(tmp_path, case, train, sets, expected):
    """A key or value given with --set is blamed on that --set, not on the config file."""
    path = write_config(tmp_path, small_config(train=train))
    with pytest.raises(FloodError) as excinfo:
        load_config(path, sets=sets)
    assert str(excinfo.value) == expected.replace("{path}", str(path))


def test_an_unknown_section_of_the_file_is_the_files_even_with_a_set_below_it(tmp_path):
    config = small_config()
    config["trian"] = {"lr": 1}
    path = write_config(tmp_path, config)
    with pytest.raises(FloodError) as excinfo:
        load_config(path, sets=["trian.epochs=3"])
    assert str(excinfo.value) == f"config error in {path}: unknown key 'trian'; did you mean 'train'?"


# ---------------------------------------------------------------------------
# train.metrics


@pytest.mark.parametrize(
    "given, sets, expected",
    [
        (["auroc", "f1_macro"], [], ["auroc", "f1_macro"]),
        (None, ["train.metrics=f1_macro, mcc"], ["f1_macro", "mcc"]),
        (None, ["train.metrics=[auprc]"], ["auprc"]),
        (None, [], []),
    ],
)
def test_train_metrics_takes_a_list_or_a_comma_string(tmp_path, given, sets, expected):
    train = {} if given is None else {"metrics": given}
    cfg = load_config(write_config(tmp_path, small_config(train=train)), sets=sets)
    assert cfg.train.metrics == expected


@pytest.mark.parametrize(
    "metrics, problem",
    [
        (["f1_macro", "f1"], "train.metrics: unknown metric 'f1'; use some of f1_macro, f1_weighted, auroc, auprc, mcc"),
        (["mcc", "mcc"], "train.metrics: mcc is listed twice; name each metric once"),
    ],
)
def test_bad_train_metrics_name_the_entry(tmp_path, metrics, problem):
    path = write_config(tmp_path, small_config(train={"metrics": metrics}))
    with pytest.raises(FloodError) as excinfo:
        load_config(path)
    assert str(excinfo.value) == f"config error in {path}: {problem}"
