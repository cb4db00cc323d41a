"""Bad input, end to end: every case runs the real `flood` command and must give exactly
one line `error: ...` on stderr, exit code 1, no traceback, and leave nothing behind
(no run folder; files that existed before are untouched byte for byte).

The function-level tables (tests/config/test_config.py, test_data.py, test_model.py) pin the
exact messages; this table checks the CLI contract across config files, flags, data
files and model paths. No case may start training: each fails before the first step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flood_cli.cli.main import app
from tests.conftest import ROOT, small_config, write_config

runner = CliRunner()


class Ctx:
    """What a case builds its bad input with: its own folder, and (built once, on
    demand) a save_pretrained folder of a tiny BERT with only 64 positions."""

    def __init__(self, tmp: Path, saved_model: Callable[[], Path]):
        self.tmp = tmp
        self.out = tmp / "runs"
        self._saved_model = saved_model

    @property
    def saved(self) -> Path:
        return self._saved_model()

    def config(self, name: str = "cfg.yaml", **sections) -> Path:
        """The small test config, runs going to self.out; sections update whole keys."""
        config = small_config(**sections)
        config.setdefault("output", {})["dir"] = str(self.out)
        return write_config(self.tmp, config, name)

    def train(self, *flags: object, **sections) -> list[str]:
        return ["train", "-c", str(self.config(**sections)), "-q", *map(str, flags)]

    def text(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def raw_config(self, content: str | bytes) -> list[str]:
        return ["train", "-c", str(self.text("cfg.yaml", content)), "-q"]

    def data(self, files: dict[str, str | bytes], **data) -> list[str]:
        """Write data files and train on them: data keys naming a file get its path."""
        for name, content in files.items():
            self.text(name, content)
        data.setdefault("train_file", "train.csv")
        for key in ("train_file", "validation_file", "test_file"):
            if key in data:
                data[key] = str(self.tmp / data[key])
        return self.train(data=data)

    def model(self, name_or_path: str, **data) -> list[str]:
        config = small_config(data=data)
        config["model"] = {"name_or_path": name_or_path}
        config["output"]["dir"] = str(self.out)
        return ["train", "-c", str(write_config(self.tmp, config)), "-q"]

    def fake_run(self, name: str, status: str | None) -> Path:
        """A run folder as an earlier `flood train` left it (no real training)."""
        run = self.out / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(small_config(output={"dir": str(self.out), "name": name})))
        (run / "metrics.csv").write_text("epoch,step,train_loss,val_loss,val_accuracy\n1,6,0.69,0.68,0.55\n")
        if status is not None:
            (run / "summary.json").write_text(json.dumps({"status": status, "name": name}))
        return run


def rows(n: int, labels=("ham", "spam")) -> str:
    """A CSV of n short texts whose labels cycle through ``labels``."""
    return "text,label\n" + "".join(f"message number {i} about money,{labels[i % len(labels)]}\n" for i in range(n))


GOOD = rows(20)
TINY_TOKENIZER = ROOT / "flood_cli" / "assets" / "tiny-tokenizer"


def _tokenizer_only(c: Ctx) -> Path:
    folder = c.tmp / "tokenizer-only"
    folder.mkdir()
    for file in c.saved.iterdir():
        if file.name != "config.json" and not file.name.startswith("model"):
            (folder / file.name).write_bytes(file.read_bytes())
    return folder


def _config_only(c: Ctx) -> Path:
    folder = c.tmp / "config-only"
    folder.mkdir()
    (folder / "config.json").write_bytes((c.saved / "config.json").read_bytes())
    return folder


def _not_a_folder(c: Ctx) -> Path:
    c.text("file", "not a folder")
    return c.tmp / "file"


def _existing_name(c: Ctx) -> list[str]:
    c.fake_run("kept", "completed")
    return c.train("--name", "kept")


BASE = "model:\n  tiny: {}\ndata:\n  train_file: x.csv\n"  # lines 1 to 4


def _alias_bomb(levels: int = 8) -> str:
    """A billion laughs in 400 bytes: anchors in meta (dropped when loaded), train.lr the
    last one, 10**9 values once expanded; it used to hang `flood train` for minutes."""
    anchors = "  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, levels + 1)
    )
    return f"{BASE}meta:\n{anchors}train:\n  lr: *a{levels}\n"


def _compare_only(c: Ctx, config_text: str) -> list[str]:
    """`flood compare` on a folder whose only run has this config.yaml."""
    run = c.fake_run("only", "completed")
    (run / "config.yaml").write_text(config_text)
    return ["compare", str(c.out)]


NAME_RULE = "is not a plain folder name; use 1 to 200 letters, digits and . _ - + = @ , (not . or ..)"
SEED_RULE = "is out of range; use a whole number from 0 to 4294967295 (2**32 - 1)"


def _compare_empty(c: Ctx) -> list[str]:
    c.out.mkdir()
    return ["compare", str(c.out)]


def _folder_and_config(c: Ctx) -> list[str]:
    (c.tmp / "conf.d").mkdir()
    return ["train", "-c", str(c.tmp / "conf.d"), "-q"]


# (id, build the bad input in Ctx and return the CLI arguments, the error: a distinctive
# part of it, or, starting with "error: ", the whole line, {tmp} standing for the case's folder)
CASES: list[tuple[str, Callable[[Ctx], list[str]], str]] = [
    # -- the config file ---------------------------------------------------------------
    ("config missing", lambda c: ["train", "-c", str(c.tmp / "nope.yaml")], "nope.yaml not found; pass an existing YAML file"),
    ("config is a folder", _folder_and_config, "conf.d is a folder; pass a YAML file"),
    ("config YAML syntax", lambda c: c.raw_config("model:\n  tiny: {}\ndata:\n  train_file: [unclosed\n"), "YAML syntax error in"),
    ("config empty", lambda c: c.raw_config(""), "is empty; it needs at least the model and data sections"),
    ("config a list", lambda c: c.raw_config("- model\n- data\n"), "must be a mapping of sections (model, data, train…), not a list"),
    ("config not UTF-8", lambda c: c.raw_config("# café\nmodel: {}\n".encode("latin-1")), "is not UTF-8 text (invalid continuation byte at byte 5)"),
    ("config impossible date", lambda c: c.raw_config("model: {tiny: {}}\ndata: {train_file: x.csv}\ntrain: {lr: 2001-13-45}\n"), "cannot read the value '2001-13-45' (month must be in 1..12)"),
    ("config alias bomb", lambda c: c.raw_config(_alias_bomb()), "error: {tmp}/cfg.yaml: YAML aliases repeat more than 10000 values (seen at line 9, column 7); write the values out, or use fewer aliases"),
    ("config recursive alias", lambda c: c.raw_config(BASE + "train:\n  lr: &a [*a]\n"), "error: {tmp}/cfg.yaml: recursive YAML alias at line 6, column 7 (a value that contains itself); replace the alias with a plain value"),
    ("config section twice", lambda c: c.raw_config(BASE + "train:\n  epochs: 2\nruntime: {}\ntrain:\n  lr: 0.1\n"), "error: {tmp}/cfg.yaml: key 'train' appears twice (lines 5 and 8); keep one"),
    ("config key twice in a section", lambda c: c.raw_config(BASE + "train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.5\n"), "error: {tmp}/cfg.yaml: key 'train.lr' appears twice (lines 6 and 8); keep one"),
    ("config long value echoed", lambda c: c.raw_config(BASE + "train:\n  lr: [" + ", ".join(["0.1"] * 100_000) + "]\n"), "error: config error in {tmp}/cfg.yaml: train.lr: input should be a valid number (got [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, ...])"),
    ("unknown section, suggested", lambda c: c.raw_config(Path(c.config()).read_text().replace("model:", "modle:")), "unknown key 'modle'; did you mean 'model'?"),
    ("unknown key, suggested", lambda c: c.train(train={"lrr": 1e-3}), "unknown key 'train.lrr'; did you mean 'lr'?"),
    ("missing data section", lambda c: c.raw_config("model:\n  tiny: {}\n"), "data: missing section; add it"),
    ("wrong type", lambda c: c.train(train={"epochs": "many"}), "train.epochs: input should be a valid integer"),
    ("boolean for a number", lambda c: c.train(train={"epochs": True}), "train.epochs: must be a number, not the boolean true"),
    ("lr nan", lambda c: c.raw_config(Path(c.config()).read_text().replace("lr: 0.001", "lr: .nan")), "train.lr: input should be a finite number (got nan)"),
    ("b < 0 in the file", lambda c: c.train(train={"mode": "flooding", "b": -0.5}), "train.b: input should be greater than or equal to 0 (got -0.5)"),
    ("ascent_lr >= lr in the file", lambda c: c.train(train={"mode": "alternate", "lr": 1e-4, "ascent_lr": 1e-4}), "ascent_lr (0.0001) must be smaller than lr (0.0001)"),
    ("zero epochs in the file", lambda c: c.train(train={"epochs": 0}), "train.epochs: input should be greater than or equal to 1 (got 0)"),
    ("tiny and name_or_path", lambda c: c.train(model={"name_or_path": "bert-base-uncased"}), "model: set exactly one of name_or_path"),
    ("data path ~nosuchuser", lambda c: c.train(data={"train_file": "~nosuchuser-flood/x.csv"}), "is not a usable path (no home folder for ~nosuchuser-flood)"),
    ("fp16 on the CPU", lambda c: c.train(runtime={"device": "cpu", "precision": "fp16"}), "precision fp16 needs a CUDA GPU"),
    # -- flags ---------------------------------------------------------------------------
    ("no --config", lambda c: ["train", "-q"], "flood train needs --config FILE"),
    ("--mode sideways", lambda c: c.train("--mode", "sideways"), "--mode 'sideways' is not a mode; use baseline, flooding, iflood, adaflood, alternate, backstitch or gradnorm"),
    ("--b with mode alternate", lambda c: c.train("--mode", "alternate", "--ascent-lr", "1e-4", "--b", "0.5"), "--b (flood level) applies only to modes flooding and iflood, but the mode is alternate"),
    ("--epochs 0", lambda c: c.train("--epochs", "0"), "train.epochs: input should be greater than or equal to 1 (got 0)"),
    ("--set without =", lambda c: c.train("--set", "epochs"), "--set 'epochs': expected section.key=value"),
    ("--set into a value", lambda c: c.train("--set", "train.lr.x=1"), "cannot set train.lr.x: lr is a value, not a section; set train.lr=VALUE instead"),
    ("--set bad value", lambda c: c.train("--set", "train.batch_size=many"), "train.batch_size: input should be a valid integer"),
    ("--name with /", lambda c: c.train("--name", "../escape"), f"error: config error in {{tmp}}/cfg.yaml: output.name: '../escape' {NAME_RULE}"),
    ("--name ..", lambda c: c.train("--name", ".."), f"error: config error in {{tmp}}/cfg.yaml: output.name: '..' {NAME_RULE}"),
    ("--name .", lambda c: c.train("--name", "."), f"error: config error in {{tmp}}/cfg.yaml: output.name: '.' {NAME_RULE}"),
    ("--name with a newline", lambda c: c.train("--name", "run\nsplit"), f"error: config error in {{tmp}}/cfg.yaml: output.name: 'run\\nsplit' {NAME_RULE}"),
    ("--name with a NUL byte", lambda c: c.train("--name", "run\x00x"), f"error: config error in {{tmp}}/cfg.yaml: output.name: 'run\\x00x' {NAME_RULE}"),
    ("--name with ESC", lambda c: c.train("--name", "run\x1b[31mred"), f"error: config error in {{tmp}}/cfg.yaml: output.name: 'run\\x1b[31mred' {NAME_RULE}"),
    ("--name of 300 characters", lambda c: c.train("--name", "r" * 300), f"error: config error in {{tmp}}/cfg.yaml: output.name: '{'r' * 52}…{'r' * 25}' {NAME_RULE}"),
    ("output.name with a tab in the file", lambda c: c.train(output={"name": "a\tb"}), f"error: config error in {{tmp}}/cfg.yaml: output.name: 'a\\tb' {NAME_RULE}"),
    ("--seed -1", lambda c: c.train("--seed", "-1"), f"error: config error in {{tmp}}/cfg.yaml: train.seed: -1 {SEED_RULE}"),
    ("--seed 2**40", lambda c: c.train("--seed", "1099511627776"), f"error: config error in {{tmp}}/cfg.yaml: train.seed: 1099511627776 {SEED_RULE}"),
    ("data.split_seed -1", lambda c: c.train(data={"split_seed": -1}), f"error: config error in {{tmp}}/cfg.yaml: data.split_seed: -1 {SEED_RULE}"),
    ("--set data.split_seed=2**32", lambda c: c.train("--set", "data.split_seed=4294967296"), f"error: --set data.split_seed=4294967296: data.split_seed: 4294967296 {SEED_RULE}"),
    ("--set an unknown key", lambda c: c.train("--set", "train.lrr=1"), "error: --set train.lrr=1: unknown key 'train.lrr'; did you mean 'lr'?"),
    ("--out is a file", lambda c: c.train("--out", _not_a_folder(c)), "cannot create output folder"),
    ("--resume with --lr", lambda c: ["train", "--resume", str(c.fake_run("stopped", "running")), "--lr", "1e-3"], "--resume continues the saved experiment, so --lr cannot be changed"),
    ("--resume not a run", lambda c: ["train", "--resume", str(c.tmp)], "is not a run folder (no config.yaml)"),
    ("--resume a folder that does not exist", lambda c: ["train", "--resume", str(c.tmp / "runs" / "does-not-exist")], "error: run folder {tmp}/runs/does-not-exist does not exist; pass the folder that flood train printed (run folder: …)"),
    ("--resume a completed run", lambda c: ["train", "--resume", str(c.fake_run("done", "completed"))], "already completed; nothing to resume"),
    ("--resume without checkpoint", lambda c: ["train", "--resume", str(c.fake_run("early", "running"))], "has no checkpoint although metrics.csv has rows (writing it failed); metrics.csv keeps its 1 row(s) (to step 6)"),
    ("existing --name", lambda c: _existing_name(c), "runs/kept already exists; pass another --name"),
    # -- data files ----------------------------------------------------------------------
    ("train file missing", lambda c: c.data({}, train_file="nope.csv"), "nope.csv not found; fix data.train_file"),
    ("train file is a folder", lambda c: c.data({}, train_file=""), "is a folder; data.train_file must be a csv/tsv/json/jsonl/parquet file"),
    ("empty file (0 bytes)", lambda c: c.data({"train.csv": b""}), "train.csv is empty; it needs a header and at least one example"),
    ("header only", lambda c: c.data({"train.csv": "text,label\n"}), "has no examples (only a header?)"),
    ("latin-1 file", lambda c: c.data({"train.csv": "text,label\nhello,ham\ncafé olé,spam\n".encode("latin-1")}), "is not UTF-8 text (line 3); re-save it as UTF-8"),
    ("ragged CSV", lambda c: c.data({"train.csv": "text,label\nhello,ham\nhello, world,spam\nbye,ham\n"}), "line 3 has 3 fields but the header has 2"),
    ("NaN labels", lambda c: c.data({"train.csv": "text,label\na,ham\nb,\nc,spam\nd,spam\n"}), "1 of 4 rows have no label in column 'label'"),
    ("one class only", lambda c: c.data({"train.csv": rows(10, labels=("ham",))}), "training data has one class only ('ham' in column 'label')"),
    ("text empty in every row", lambda c: c.data({"train.csv": 'text,label\n,ham\n,spam\n"",ham\n'}), "column 'text' is empty in every row"),
    ("missing text column", lambda c: c.data({"train.csv": GOOD}, text_column="body"), "train data has no column 'body' (columns: text, label); set data.text_column"),
    ("missing label column", lambda c: c.data({"train.csv": GOOD.replace("text,label", "text,category", 1)}), "train data has no column 'label' (columns: text, category); set data.label_column"),
    ("label only in validation", lambda c: c.data({"train.csv": GOOD, "val.csv": rows(4, labels=("ham", "eggs"))}, validation_file="val.csv"), "validation labels 'eggs' do not occur in the training data"),
    ("validation file missing", lambda c: c.data({"train.csv": GOOD}, validation_file="val.csv"), "val.csv not found; fix data.validation_file"),
    ("a label with one example", lambda c: c.data({"train.csv": rows(9) + "lonely text,eggs\n"}), "label 'eggs' has only one training example"),
    (".xlsx file", lambda c: c.data({"train.xlsx": b"PK\x03\x04"}, train_file="train.xlsx"), "has an unknown format '.xlsx'; use .csv, .tsv, .json, .jsonl or .parquet"),
    ("broken JSON lines", lambda c: c.data({"train.jsonl": '{"text": "a", "label": "ham"}\n{"text": "b", "label": \n'}, train_file="train.jsonl"), "cannot read train file"),
    ("parquet that isn't", lambda c: c.data({"train.parquet": GOOD}, train_file="train.parquet"), "Parquet magic bytes not found"),
    # -- model paths ---------------------------------------------------------------------
    ("model folder missing", lambda c: c.model("./nope"), "nope does not exist; fix model.name_or_path"),
    ("model path is a file", lambda c: c.model(str(c.saved / "model.safetensors")), "model.safetensors is a file, not a folder"),
    ("model folder without config.json", lambda c: c.model(str(_tokenizer_only(c))), "has no config.json; point model.name_or_path to a folder written by save_pretrained"),
    ("model folder without tokenizer", lambda c: c.model(str(_config_only(c))), "holds no tokenizer files"),
    ("Hub name offline", lambda c: c.model("bert-base-uncased"), "'bert-base-uncased' is neither a local folder nor loadable from the Hugging Face Hub"),
    ("tokenizer folder missing", lambda c: c.train(model={"tokenizer": "./no-tokenizer"}), "no-tokenizer does not exist; fix model.tokenizer"),
    ("max_length over positions", lambda c: c.model(str(c.saved), max_length=128), "data.max_length 128 exceeds the model's 64 positions"),
    # -- compare -------------------------------------------------------------------------
    ("compare: empty folder", lambda c: _compare_empty(c), "(an empty folder); pass run folders or folders that hold them"),
    ("compare: no such folder", lambda c: ["compare", str(c.tmp / "gone")], "gone (no such folder); pass run folders"),
    ("compare: only run an alias bomb", lambda c: _compare_only(c, _alias_bomb()), "error: no usable runs in {tmp}/runs: {tmp}/runs/only: config.yaml: YAML aliases repeat more than 10000 values (seen at line 9, column 7); skipped"),
    ("compare: only run a recursive alias", lambda c: _compare_only(c, BASE + "train:\n  lr: &a [*a]\n"), "error: no usable runs in {tmp}/runs: {tmp}/runs/only: config.yaml: recursive YAML alias at line 6, column 7 (a value that contains itself); skipped"),
    ("compare: only run a key twice", lambda c: _compare_only(c, BASE + "train:\n  lr: 0.1\n  lr: 0.5\n"), "error: no usable runs in {tmp}/runs: {tmp}/runs/only: config.yaml: key 'train.lr' appears twice (lines 6 and 7); skipped"),
]


# -- files from others: checkpoints, links, pipes (issue "Safe with files from others") ----


def _resume_with_checkpoint(c: Ctx, content: bytes | Callable[[Path], None]) -> list[str]:
    run = c.fake_run("shared", "interrupted")
    last = run / "checkpoints" / "last.pt"
    last.parent.mkdir()
    if callable(content):
        content(last)
    else:
        last.write_bytes(content)
    return ["train", "--resume", str(run)]


class _RunsCode:
    """A pickle that runs a command when it is unpickled: what a hostile last.pt holds.
    The command writes a file under the case's folder, which the table would see."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _code_in_checkpoint(c: Ctx) -> list[str]:
    import torch

    return _resume_with_checkpoint(c, lambda last: torch.save({"format": 2, "model": _RunsCode(c.tmp / "PWNED")}, last))


def _truncated_checkpoint(c: Ctx) -> list[str]:
    import torch

    def write(last: Path) -> None:
        torch.save({"format": 2, "model": {"w": torch.zeros(1000)}}, last)
        last.write_bytes(last.read_bytes()[:1500])

    return _resume_with_checkpoint(c, write)


def _fifo(c: Ctx) -> list[str]:
    os.mkfifo(c.tmp / "train.csv")
    return c.data({})


def _link_to_passwd(c: Ctx) -> list[str]:
    (c.tmp / "train.csv").symlink_to("/etc/passwd")
    return c.data({})


HOSTILE_CASES: list[tuple[str, Callable[[Ctx], list[str]], str]] = [
    ("--resume: a checkpoint that runs code", _code_in_checkpoint, "last.pt is not a flood checkpoint (it asks to load posix.system, which flood never loads); nothing in it was run; metrics.csv keeps its 1 row(s) (to step 6) but training cannot continue from them: start the run again under a new name"),
    ("--resume: random bytes as checkpoint", lambda c: _resume_with_checkpoint(c, os.urandom(3000)), "last.pt is damaged ("),
    ("--resume: a truncated checkpoint", _truncated_checkpoint, "last.pt is damaged ("),
    ("--resume: a checkpoint of another format", lambda c: _resume_with_checkpoint(c, _saved_bytes({"format": 1, "model": {}})), "last.pt has format '1', not 2 (written by another version of flood, or not by flood)"),
    ("train file is a named pipe", _fifo, "train.csv is not a regular file (a named pipe); save the data to a file"),
    ("train file links to /etc/passwd", _link_to_passwd, "train.csv, a link to /etc/passwd) has no column 'text' (columns: "),
    ("JSONL label is a list", lambda c: c.data({"train.jsonl": '{"text": "a", "label": ["ham", "spam"]}\n{"text": "b", "label": ["spam"]}\n'}, train_file="train.jsonl"), "train data: the label in data row 1 is a list (['ham', 'spam']), not one value"),
    ("text column is the label column", lambda c: c.data({"train.csv": GOOD}, text_column="label"), "data.text_column and data.label_column are both 'label': the model would read the answer"),
    ("header echoed short and printable", lambda c: c.data({"train.csv": "x" * 500 + ",\x1b[31mred\n1,2\n3,4\n"}), "(columns: " + "x" * 20 + "…" + "x" * 9 + ", \\x1b[31mred)"),
]


def _replace_run_file(c: Ctx, status: str | None, name: str, replace: Callable[[Path], None], run: str = "only") -> Path:
    """A fake run whose file ``name`` is replaced (by a named pipe, a sparse file…)."""
    folder = c.fake_run(run, status)
    (folder / name).unlink(missing_ok=True)
    replace(folder / name)
    return folder


def _sparse(size: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as handle:  # holes: no disk used
            handle.truncate(size)

    return write


def _pipe_only(c: Ctx) -> list[str]:
    (c.out / "only").mkdir(parents=True)
    os.mkfifo(c.out / "only" / "metrics.csv")
    return ["compare", str(c.out)]


# Run files that are not regular files or are over their cap: never opened or read
# (a named pipe blocked `flood compare` and `--resume` forever).
RUN_FILE_CASES: list[tuple[str, Callable[[Ctx], list[str]], str]] = [
    ("compare: only run's metrics.csv a named pipe", lambda c: ["compare", str(_replace_run_file(c, "completed", "metrics.csv", os.mkfifo))],
     "error: no usable runs in {tmp}/runs/only: {tmp}/runs/only: metrics.csv is not a regular file (a named pipe); skipped"),
    ("compare: only run's summary.json a named pipe", lambda c: ["compare", str(_replace_run_file(c, "completed", "summary.json", os.mkfifo).parent)],
     "error: no usable runs in {tmp}/runs: {tmp}/runs/only: summary.json is not a regular file (a named pipe); skipped"),
    ("compare: only run's config.yaml a named pipe", lambda c: ["compare", str(_replace_run_file(c, "completed", "config.yaml", os.mkfifo).parent)],
     "error: no usable runs in {tmp}/runs: {tmp}/runs/only: config.yaml is not a regular file (a named pipe); skipped"),
    ("compare: a folder with only a named pipe metrics.csv", _pipe_only,
     "error: no usable runs in {tmp}/runs: {tmp}/runs/only: metrics.csv is not a regular file (a named pipe); skipped"),
    ("compare: only run's metrics.csv over 64 MiB", lambda c: ["compare", str(_replace_run_file(c, "completed", "metrics.csv", _sparse(64 * 2**20 + 1)))],
     "error: no usable runs in {tmp}/runs/only: {tmp}/runs/only: metrics.csv is too large to read (67,108,865 bytes; flood reads at most 64 MiB); skipped"),
    ("compare: only run's summary.json over 1 MiB", lambda c: ["compare", str(_replace_run_file(c, "completed", "summary.json", _sparse(2**20 + 1)))],
     "error: no usable runs in {tmp}/runs/only: {tmp}/runs/only: summary.json is too large to read (1,048,577 bytes; flood reads at most 1 MiB); skipped"),
    ("--resume: summary.json a named pipe", lambda c: ["train", "--resume", str(_replace_run_file(c, None, "summary.json", os.mkfifo, "shared"))],
     "error: {tmp}/runs/shared: summary.json is not a regular file (a named pipe); put the file the run wrote in its place, or start the run again under a new name"),
    ("--resume: metrics.csv a named pipe", lambda c: ["train", "--resume", str(_replace_run_file(c, "interrupted", "metrics.csv", os.mkfifo, "shared"))],
     "error: {tmp}/runs/shared: metrics.csv is not a regular file (a named pipe); put the file the run wrote in its place, or start the run again under a new name"),
    ("--resume: metrics.csv over 64 MiB", lambda c: ["train", "--resume", str(_replace_run_file(c, "interrupted", "metrics.csv", _sparse(64 * 2**20 + 1), "shared"))],
     "error: {tmp}/runs/shared: metrics.csv is too large to read (67,108,865 bytes; flood reads at most 64 MiB); put the file the run wrote in its place, or start the run again under a new name"),
]


def _saved_bytes(payload: dict) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


CASES += HOSTILE_CASES
CASES += RUN_FILE_CASES


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Callable[[], Path]:
    """A save_pretrained tiny BERT (64 positions) with the shipped tokenizer, made on first use."""
    made: list[Path] = []

    def make() -> Path:
        if not made:
            from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

            folder = tmp_path_factory.mktemp("saved") / "tiny-bert"
            tokenizer = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))
            config = BertConfig(
                vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=64, num_labels=2,
            )
            BertForSequenceClassification(config).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            made.append(folder)
        return made[0]

    return make


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder``: file contents, or None for a folder."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.timeout(60)  # an alias bomb once hung here for minutes
@pytest.mark.parametrize("build, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_1(tmp_path, saved_model, capfd, caplog, build, expected):
    ctx = Ctx(tmp_path, saved_model)
    args = build(ctx)
    before = snapshot(tmp_path)
    capfd.readouterr()

    result = runner.invoke(app, args)

    lines = result.stderr.splitlines()
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # nothing escaped the CLI
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    if expected.startswith("error: "):
        assert lines[0] == expected.format(tmp=tmp_path)
    else:
        assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    # and no library (datasets, transformers) wrote or logged its own report around it
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # Nothing left behind: no run folder, no partial files, not even the output folder
    # (made to check it is writable, and removed again); what existed is unchanged.
    after = snapshot(tmp_path)
    added = set(after) - set(before)
    assert not added, sorted(added)
    assert {k: after.get(k, "gone") for k in before} == before, "an existing file or folder changed"


def test_the_table_is_wide():
    assert len(CASES) >= 35
    assert len({case[0] for case in CASES}) == len(CASES)


def _flood(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "flood_cli", *args], capture_output=True, text=True, env=env, timeout=60)


def test_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    plain = _flood("train", "--config", missing)
    assert plain.returncode == 1
    assert plain.stderr.splitlines() == [
        f"error: config file {missing} not found; pass an existing YAML file, e.g. --config configs/tiny.yaml"
    ]
    assert "Traceback" not in plain.stdout + plain.stderr

    debug = _flood("--debug", "train", "--config", missing)
    assert debug.returncode != 0
    output = debug.stdout + debug.stderr
    assert "Traceback" in output and "FloodError" in output, output


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--epochs", "many"], "error: Invalid value for '--epochs': Input should be a valid integer, unable to parse string as an integer; see flood train --help"),
        (["train", "--lrr", "3"], "error: No such option: --lrr (Possible options: --lr); see flood train --help"),
        (["frobnicate"], "error: No such command 'frobnicate'; see flood --help"),
        (["compare"], "error: Missing argument 'paths'; see flood compare --help"),
    ],
)
def test_click_usage_errors_are_one_line_too(args, expected):
    """Errors that Click finds while parsing the command line, through the real console entry."""
    result = subprocess.run([sys.executable, "-m", "flood_cli", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == expected


HUB_UNREACHABLE = re.compile(
    r"error: model 'bert-base-uncased' is not a local folder and not in the Hugging Face cache, and the Hub cannot be "
    r"reached \(https://huggingface\.co: [^()]+\); point model\.name_or_path to a downloaded folder, or cache the model "
    r"where the Hub can be reached and run with HF_HUB_OFFLINE=1"
)


def _hub_answers() -> bool:
    import threading
    import urllib.error
    import urllib.request

    answered = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request("https://huggingface.co", method="HEAD"), timeout=5).close()
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)
        except Exception:
            pass

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(5)
    return bool(answered)


def test_a_hub_name_without_the_network_fails_at_once_in_one_line(tmp_path):
    """HF_HUB_OFFLINE unset (for this one command), no network, nothing cached: one
    line within seconds (it was 20 lines of retry warnings over about 50 s)."""
    if _hub_answers():
        pytest.skip("the Hugging Face Hub answers here: the command would download bert-base-uncased")
    config = small_config(output={"dir": str(tmp_path / "runs")})
    config["model"] = {"name_or_path": "bert-base-uncased"}
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # an empty cache
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flood_cli", "train", "-c", str(write_config(tmp_path, config)), "-q"],
        capture_output=True, text=True, env=env, timeout=15,
    )
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert HUB_UNREACHABLE.fullmatch(result.stderr.rstrip("\n")), result.stderr
    assert not (tmp_path / "runs").exists()
