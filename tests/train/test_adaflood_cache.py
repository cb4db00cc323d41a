"""AdaFlood's cache (issue 20): held-out losses that are damaged, the wrong size, not
finite or not data are never used and never fatal: one warning line names the file and
what is wrong, and the losses are computed again from the auxiliary runs, equal to
those of a run from a clean cache folder. A cache folder removed while its runs train
is said as such and built again.

One clean adaflood run (auxiliary runs and main run) is trained once for the module;
each case works on its own copy of the cache folder."""

from __future__ import annotations

import csv
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from flood_cli.config.load import load_config
from flood_cli.core.errors import FloodError
from flood_cli.core.progress import QuietReporter
from flood_cli.train import adaflood
from flood_cli.train.entry import resume_training, run_training
from tests.conftest import SHIPPED_DATA, csv_bytes_without_time, small_config, write_config
from tests.train.test_modes import TINY

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)

TRAIN_EXAMPLES = 40


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Any]:
    """A γ = 0 adaflood run from an empty cache folder: its config, cache folder, the
    held-out losses it computed, and its run folder."""
    from tests import oracle

    tmp_path = tmp_path_factory.mktemp("adaflood-cache")
    examples = oracle.read_examples(SHIPPED_DATA)
    train_file = oracle.write_examples(tmp_path / "train.csv", examples[:TRAIN_EXAMPLES])
    val_file = oracle.write_examples(tmp_path / "val.csv", examples[100:116])
    config = small_config(
        model={"tiny": {**TINY, "dropout": 0.0}},
        train={"mode": "adaflood", "adaflood": {"gamma": 0.0, "folds": 2}, "epochs": 1, "batch_size": 8},
        output={"dir": str(tmp_path / "runs"), "name": "clean"},
    )
    config["data"].update(train_file=str(train_file), validation_file=str(val_file), max_train_examples=None, max_val_examples=None, max_length=32)
    cfg = load_config(write_config(tmp_path, config))
    run_training(cfg, QuietReporter())
    folder = tmp_path / "runs" / adaflood.CACHE_DIR / adaflood.cache_key(cfg)
    losses = torch.load(folder / adaflood.LOSSES_FILE, weights_only=True)
    assert losses.shape == (TRAIN_EXAMPLES,) and torch.isfinite(losses).all()
    return {"cfg": cfg, "folder": folder, "losses": losses, "run": tmp_path / "runs" / "clean"}


def _copy(clean: dict[str, Any], tmp_path: Path, name: str) -> tuple[Any, Path]:
    """The clean run's config with its output in tmp_path/runs, holding a copy of the cache."""
    cfg = clean["cfg"].model_copy(deep=True)
    cfg.output.dir = str(tmp_path / "runs")
    cfg.output.name = name
    folder = tmp_path / "runs" / adaflood.CACHE_DIR / clean["folder"].name
    shutil.copytree(clean["folder"], folder, symlinks=True)
    assert adaflood.cache_key(cfg) == clean["folder"].name  # where it is does not change what it is
    return cfg, folder


class _RunsCode:
    """A pickle that runs a command when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zeros(count: int) -> Callable[[Path], None]:
    return lambda path: torch.save(torch.zeros(count, dtype=torch.float64), path)


def _nan(path: Path) -> None:
    torch.save(torch.full((TRAIN_EXAMPLES,), float("nan"), dtype=torch.float64), path)


def _one(value: float) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        losses = torch.load(path, weights_only=True)
        losses[7] = value
        torch.save(losses, path)

    return write


DAMAGE = [
    ("5000 zeros", _zeros(5000), "holds 5000 losses, not one for each of the 40 training examples"),
    ("10 zeros", _zeros(10), "holds 10 losses, not one for each of the 40 training examples"),
    ("NaN", _nan, "holds 40 NaN or infinite loss(es) of 40"),
    ("one inf", _one(float("inf")), "holds 1 NaN or infinite loss(es) of 40"),
    ("one negative", _one(-0.5), "holds 1 negative loss(es) of 40 (a cross-entropy is at least 0)"),
    ("2-D", lambda path: torch.save(torch.ones(TRAIN_EXAMPLES, 2), path), "holds a tensor of shape (40, 2), not one for each of the 40 training examples"),
    ("int64", lambda path: torch.save(torch.ones(TRAIN_EXAMPLES, dtype=torch.int64), path), "holds int64 values, not floating-point losses"),
    ("a dict", lambda path: torch.save({"losses": [1.0] * TRAIN_EXAMPLES}, path), "holds a dict, not a tensor of losses"),
    ("random bytes", lambda path: path.write_bytes(bytes(range(256)) * 8), "is damaged ("),
    ("cut short", lambda path: path.write_bytes(path.read_bytes()[:300]), "is damaged ("),
    ("code", lambda path: torch.save(_RunsCode(path.parent / "PWNED"), path), "asks to load posix.system, which flood never loads (nothing in it was run)"),
]


@pytest.mark.parametrize("damage, problem", [case[1:] for case in DAMAGE], ids=[case[0] for case in DAMAGE])
def test_damaged_held_out_losses_are_computed_again_with_one_warning(clean, tmp_path, capsys, damage, problem):
    cfg, folder = _copy(clean, tmp_path, "unused")
    path = folder / adaflood.LOSSES_FILE
    damage(path)
    capsys.readouterr()

    losses = adaflood.held_out_losses(cfg, QuietReporter(), run_training, resume_training)

    lines = capsys.readouterr().err.splitlines()
    warning = f"warning: adaflood: {path} {problem}"
    assert lines[0].startswith(warning) if problem.endswith("(") else lines[0] == warning + "; computing the held-out losses again from the auxiliary runs"
    assert lines[0].endswith("; computing the held-out losses again from the auxiliary runs")
    assert lines[1:] == [f"adaflood: reusing auxiliary run {folder / f'fold-{k}'}" for k in range(2)]
    assert "weights_only" not in lines[0] and "unexpected" not in lines[0]
    assert not (folder / "PWNED").exists()
    # The losses of the clean run, computed again from its auxiliary runs' best models,
    # and the cache repaired: the next run reuses it.
    assert torch.equal(losses, clean["losses"])
    assert torch.equal(torch.load(path, weights_only=True), clean["losses"])
    assert torch.equal(adaflood.held_out_losses(cfg, QuietReporter(), run_training, resume_training), clean["losses"])
    assert capsys.readouterr().err.splitlines() == [f"adaflood: reusing the held-out losses of 2 auxiliary runs in {folder}"]


def _flood_active(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [float(row["flood_active"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("damage", [_nan, _zeros(5000)], ids=["NaN", "5000 zeros"])
def test_a_run_on_a_damaged_cache_floods_as_a_run_on_a_clean_one(clean, tmp_path, damage):
    """NaN levels made the adaflood run the baseline (``loss < NaN`` is false: no example
    ascends), silently. The run on a damaged cache writes the clean run's CSV, in which
    examples did ascend."""
    cfg, folder = _copy(clean, tmp_path, "clean")  # same name: the CSVs compare byte for byte
    damage(folder / adaflood.LOSSES_FILE)
    run_training(cfg, QuietReporter())
    assert any(share > 0 for share in _flood_active(clean["run"]))
    assert csv_bytes_without_time(tmp_path / "runs" / "clean") == csv_bytes_without_time(clean["run"])


def _remove_at_first_row(folder: Path, times: int, monkeypatch) -> list[str]:
    """Remove the cache folder as an auxiliary run writes its first metrics row (up to
    ``times`` times): the run's files vanish under it, as with rm -rf in another shell."""
    from flood_cli.runs.folder import RunDir

    real = RunDir.append_metrics
    removed: list[str] = []

    def append(self, row):
        if self.path.parent == folder and len(removed) < times:
            removed.append(self.path.name)
            shutil.rmtree(folder.parent)  # the whole .adaflood folder
        return real(self, row)

    monkeypatch.setattr(RunDir, "append_metrics", append)
    return removed


def test_a_cache_folder_removed_while_an_auxiliary_run_trains_is_built_again(clean, tmp_path, capsys, monkeypatch):
    cfg, folder = _copy(clean, tmp_path, "unused")
    shutil.rmtree(folder)  # start empty
    removed = _remove_at_first_row(folder, 1, monkeypatch)

    losses = adaflood.held_out_losses(cfg, QuietReporter(), run_training, resume_training)

    assert removed == ["fold-0"]
    training = [f"adaflood: training auxiliary run {k + 1} of 2, without fold {k} ({folder / f'fold-{k}'})" for k in range(2)]
    assert capsys.readouterr().err.splitlines() == [
        training[0],
        f"warning: adaflood: the cache folder {folder} was removed while auxiliary run 1 of 2 trained; training the auxiliary runs again",
        *training,
    ]
    assert torch.equal(losses, clean["losses"])
    assert torch.equal(torch.load(folder / adaflood.LOSSES_FILE, weights_only=True), clean["losses"])


def test_a_cache_folder_removed_twice_is_one_error_line(clean, tmp_path, monkeypatch):
    cfg, folder = _copy(clean, tmp_path, "unused")
    shutil.rmtree(folder)
    _remove_at_first_row(folder, 2, monkeypatch)
    with pytest.raises(FloodError) as raised:
        adaflood.held_out_losses(cfg, QuietReporter(), run_training, resume_training)
    assert str(raised.value) == (
        f"adaflood: the cache folder {folder} was removed while auxiliary run 1 of 2 trained, a second time; "
        "stop what removes it, then run the command again"
    )


def test_a_process_waiting_on_a_removed_lock_waits_for_the_new_one(tmp_path):
    """flock locks the file, not its name: a process that waited on the lock of a folder
    removed since must not go on while another holds the lock of the folder made again."""
    folder = tmp_path / "cache"
    release_first, release_second, release_third = threading.Event(), threading.Event(), threading.Event()
    release_second.set()  # second leaves the lock as soon as it has it
    entered: list[str] = []

    def hold(name: str, release: threading.Event) -> None:
        with adaflood._locked(folder):
            entered.append(name)
            release.wait(30)

    first = threading.Thread(target=hold, args=("first", release_first))
    first.start()
    while "first" not in entered:
        first.join(0.01)
    second = threading.Thread(target=hold, args=("second", release_second))
    second.start()
    second.join(0.3)
    shutil.rmtree(folder)  # while first holds the lock and second waits on it
    third = threading.Thread(target=hold, args=("third", release_third))
    third.start()
    third.join(0.3)
    assert entered == ["first", "third"]  # the new lock file: nobody holds it
    release_first.set()
    first.join(10)
    second.join(0.5)
    assert entered == ["first", "third"]  # second waits for third, on the new lock file
    release_third.set()
    third.join(10)
    second.join(10)
    assert entered == ["first", "third", "second"] and not second.is_alive()
