"""Property test: the config loader, fed random YAML and random --set strings, either
returns a Config or raises FloodError with a one-line message; never anything else
(which the CLI would show as "unexpected ...", or with --debug as a traceback)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from flood_cli.config.load import load_config
from flood_cli.config.schema import Config, TinyBertConfig
from flood_cli.core.errors import FloodError

# The real section and key names (read from the models, so new keys are fuzzed too),
# plus "tiny" and "meta", which are valid only in some places.
SECTION_KEYS = {
    name: list(field.annotation.model_fields)
    for name, field in Config.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}
SECTION_KEYS["model.tiny"] = list(TinyBertConfig.model_fields)
SECTIONS = [name for name in SECTION_KEYS if "." not in name] + ["meta", "tiny"]
KEYS = sorted({key for keys in SECTION_KEYS.values() for key in keys})
WORDS = [
    "baseline", "flooding", "alternate", "epoch", "linear", "cosine", "auto", "cpu", "cuda", "fp16", "bf16",
    "stop", "skip", "glue", "sst2", "x.csv", "./x.csv", "../data/x.csv", "/abs/x.jsonl", "~/x.csv",
    "~nosuchuser-flood/x.csv", "bert-base-uncased", "./model", "a/b", ".", "..", "", " ", "a\x00b",
    "a" * 300, "1e-5", "yes", "no", "null", "~", "a\nb", "\u2028", "function-x", "literal['x']",
]
# YAML text that the loader's constructors handle in their own ways: dates, explicit
# tags, anchors and aliases (cycles), special floats, flow collections, tabs.
YAML_TOKENS = [
    "2001-13-45", "2001-01-01", "2001-12-14t21:59:43.10-05:00", "!!int abc", "!!float abc", "!!bool maybe",
    "!!binary '###'", "!!timestamp nope", "!!python/object:os.system x", "!!set {a, b}", "!!omap [a]",
    "!!str 3", "!foo bar", "&a [*a]", "&b {x: *b}", "*undefined", ".nan", ".inf", "-.inf", "1e400", "0x1f",
    "0o17", "1_000", "190:20:30", "[", "]", "{", "}", "{a: 1", "[[[[", "? [a, b]\n: 1", "\t", "- a", "'", '"\\q"',
    "%YAML 1.1\n---", "---", "...", "<<: {lr: 1}", "<<: *x", "@", "`", "|", ">-", "#",
    "[&c [x, x, x], [*c, *c, *c]]", "{lr: 1, lr: 2}", "&d {<<: *d}", "!!set {a, a}",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=2),
    st.sampled_from(WORDS),
    st.text(max_size=20),
)
keys = st.one_of(
    st.sampled_from(SECTIONS + KEYS + ["function-x", "literal['x']", "a\nb"]),
    st.text(max_size=10),
    st.integers(-2, 2),
    st.none(),
    st.booleans(),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=20,
)


NEAR_SECTIONS = [name for name in SECTION_KEYS if "." not in name]


@st.composite
def near_valid(draw) -> dict:
    """A valid minimal config with a few random edits, mostly of real keys: reaches the
    checks that run only once the structure is right (cross-field rules, paths)."""
    config = {"model": {"tiny": {}}, "data": {"train_file": "x.csv"}, "train": {}, "runtime": {}, "output": {}}
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from(NEAR_SECTIONS * 4 + SECTIONS))
        target = config.get(section, {})
        choice = draw(st.integers(0, 19))
        if choice == 0 or not isinstance(target, dict):
            config[section] = draw(values)
            continue
        config[section] = target
        known = [key for key in SECTION_KEYS.get(section, []) if key != "tiny"]
        key = draw(st.sampled_from(known)) if known and choice > 2 else draw(st.sampled_from(KEYS))
        target[key] = draw(scalars) if choice > 5 else draw(values)
    return config


def dump(document) -> str:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


yaml_texts = st.one_of(
    st.builds(dump, near_valid()),
    st.builds(dump, near_valid()),
    st.builds(dump, near_valid()),
    st.builds(dump, values),
    st.builds(dump, st.dictionaries(st.sampled_from(SECTIONS), values, max_size=5)),
    # a valid document with a raw YAML token spliced in as a value
    st.builds(
        lambda section, key, token: f"model:\n  tiny: {{}}\ndata:\n  train_file: x.csv\n{section}:\n  {key}: {token}\n",
        st.sampled_from(SECTIONS),
        st.sampled_from(KEYS),
        st.sampled_from(YAML_TOKENS),
    ),
    # lines of real keys, tokens and random text: mostly broken YAML
    st.lists(
        st.one_of(
            st.sampled_from([f"{w}:" for w in SECTIONS + KEYS]),
            st.sampled_from(YAML_TOKENS),
            st.sampled_from(WORDS).map(lambda w: "  " + w),
            st.text(max_size=15),
        ),
        max_size=8,
    ).map("\n".join),
    st.text(max_size=60),
)

REAL_KEYS = [f"{section}.{key}" for section, keys in SECTION_KEYS.items() for key in keys]
well_formed_sets = st.builds(
    lambda key, value: f"{key}={value}",
    st.one_of(
        st.sampled_from(REAL_KEYS),
        st.sampled_from(REAL_KEYS),
        st.builds("{}.{}".format, st.sampled_from(SECTIONS + ["train.lr", "model.tiny"]), st.sampled_from(KEYS)),
    ),
    st.one_of(st.sampled_from(YAML_TOKENS + WORDS), st.integers().map(str), st.floats().map(str), st.text(max_size=12)),
)
# Mostly well-formed: a malformed --set fails first and would hide the rest.
set_items = st.integers(0, 9).flatmap(lambda i: st.text(max_size=25) if i == 0 else well_formed_sets)


def load(folder: Path, text: str, sets: list[str]) -> str:
    """Load ``text`` as a config file; return "" for a Config, else the FloodError's
    message, checked to be one non-empty line. Any other exception fails the test."""
    path = folder / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_config(path, sets=sets)
    except FloodError as exc:
        message = str(exc)
        assert message.strip(), "an empty error message"
        assert len(message.splitlines()) == 1, f"a message of several lines: {message!r}"
        return message
    assert isinstance(config, Config)
    return ""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_texts, sets=st.lists(set_items, max_size=3))
def test_random_yaml_gives_a_config_or_one_line(text, sets):
    with tempfile.TemporaryDirectory() as folder:
        load(Path(folder), text, sets)


# ---------------------------------------------------------------------------
# Regressions: inputs that once escaped as other exceptions (found by the property
# test above or while writing it), each with the line it gives now.

VALID = "model:\n  tiny: {}\ndata:\n  train_file: x.csv\n"
REGRESSIONS = [
    # (case, file text, --set items, expected fragment of the message)
    (
        "impossible date (ValueError)",
        VALID + "train:\n  lr: 2001-13-45\n",
        [],
        "at line 6, column 7: cannot read the value '2001-13-45' (month must be in 1..12); fix the file and retry",
    ),
    ("!!int abc (ValueError)", VALID + "train:\n  epochs: !!int abc\n", [], "cannot read the value 'abc' (invalid literal for int()"),
    ("!!float abc (ValueError)", VALID + "train:\n  lr: !!float abc\n", [], "cannot read the value 'abc' (could not convert string to float"),
    ("!!bool maybe (KeyError)", VALID + "output:\n  save_best_model: !!bool maybe\n", [], "cannot read the value 'maybe' (not a valid bool)"),
    ("!!timestamp nope (AttributeError)", VALID + "meta: !!timestamp nope\n", [], "cannot read the value 'nope' (not a valid timestamp)"),
    ("nested too deeply (RecursionError)", "model: " + "[" * 3000 + "]" * 3000 + "\n", [], "the document is nested too deeply to read"),
    # --set values are read as YAML too; one YAML cannot read stays a string
    ("--set impossible date", VALID, ["train.lr=2001-13-45"], "train.lr: input should be a valid number, unable to parse string as a number (got '2001-13-45')"),
    ("--set !!bool maybe", VALID, ["output.save_best_model=!!bool maybe"], "output.save_best_model: input should be a valid boolean"),
    ("--set nested too deeply", VALID, ["train.lr=" + "[" * 3000], "train.lr: input should be a valid number"),
    # paths are resolved after validation
    (
        "~user that does not exist (RuntimeError)",
        "model:\n  tiny: {}\ndata:\n  train_file: ~nosuchuser-flood/x.csv\n",
        [],
        "data.train_file: '~nosuchuser-flood/x.csv' is not a usable path (no home folder for ~nosuchuser-flood); fix data.train_file",
    ),
    (
        "model ~user that does not exist (RuntimeError)",
        "model:\n  name_or_path: ~nosuchuser-flood/bert\ndata:\n  train_file: x.csv\n",
        [],
        "model.name_or_path: '~nosuchuser-flood/bert' is not a usable path (no home folder for ~nosuchuser-flood)",
    ),
    (
        "NUL byte in a data path (ValueError)",
        'model:\n  tiny: {}\ndata:\n  train_file: "x\\0.csv"\n',
        [],
        "data.train_file: 'x\\x00.csv' is not a usable path (embedded null byte); fix data.train_file",
    ),
    (
        "model name too long for a file name (OSError)",
        "model:\n  name_or_path: " + "m" * 300 + "\ndata:\n  train_file: x.csv\n",
        [],
        "is not a usable path (File name too long); fix model.name_or_path",
    ),
    # messages stay on one line
    ("top-level key named like a pydantic tag (IndexError)", VALID + "function-x: 1\n", [], "unknown key 'function-x'; known keys: model, data"),
    ("key with a line break", VALID + '"a\\nb": 1\n', [], "unknown key 'a\\nb'; known keys: model, data"),
    ("--set key with a line break", VALID, ["train.a\nb=1"], "unknown key 'train.a\\nb'; known keys: mode, b, lr"),
    ("--set through a value with a line break", VALID + '"x\\ny": 1\n', ["x\ny.z=1"], "cannot set x\\ny.z: x\\ny is a value, not a section; set x\\ny=VALUE instead"),
    # aliases and keys: bounded work, nothing silently dropped
    ("recursive alias ([[...]] in the message)", VALID + "train:\n  lr: &a [*a]\n", [], "cfg.yaml: recursive YAML alias at line 6, column 7 (a value that contains itself); replace the alias with a plain value"),
    ("recursive alias in a --set value (kept as text)", VALID, ["train.lr=&a [*a]"], "train.lr: input should be a valid number, unable to parse string as a number (got '&a [*a]')"),
    (
        "alias bomb (a 722 KB message, minutes)",
        VALID + "meta:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 6)) + "train:\n  lr: *a5\n",
        [],
        "cfg.yaml: YAML aliases repeat more than 10000 values (seen at line 9, column 7); write the values out, or use fewer aliases",
    ),
    (
        "alias bomb in a --set value (kept as text)",
        VALID,
        ["train.lr=[&a [x, x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b]]"],
        "train.lr: input should be a valid number, unable to parse string as a number (got '[&a [x, x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, … *b, *b, *b, *b, *b, *b]]')",
    ),
    ("duplicate section", VALID + "data:\n  train_file: y.csv\n", [], "cfg.yaml: key 'data' appears twice (lines 3 and 5); keep one"),
    ("duplicate key", VALID + "train:\n  lr: 0.1\n  lr: 0.2\n", [], "cfg.yaml: key 'train.lr' appears twice (lines 6 and 7); keep one"),
    ("undefined alias with a long name", VALID + "train:\n  lr: *" + "a" * 5000 + "\n", [], "at line 6, column 7: found undefined alias '" + "a" * 110 + "…" + "a" * 65 + "'; fix the file and retry"),
]


@pytest.mark.timeout(30)  # the alias bomb hung for minutes
@pytest.mark.parametrize("case, text, sets, expected", REGRESSIONS, ids=[c[0] for c in REGRESSIONS])
def test_regressions(tmp_path, case, text, sets, expected):
    message = load(tmp_path, text, sets)
    assert expected in message, message
