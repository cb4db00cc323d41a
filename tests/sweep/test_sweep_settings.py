"""`flood sweep`'s settings, without training: one experiment is one setting and one run
per seed (whatever the key order or spelling), two settings never share a run, the keys
a sweep sets itself are refused, and a search or a grid always ends."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flood_cli.cli.main import app
from flood_cli.config.schema import NAME_MAX
from flood_cli.core.errors import FloodError
from flood_cli.sweep import create as sweep_create
from flood_cli.sweep import queue as sweep_queue
from flood_cli.sweep import spec as sweep_spec
from flood_cli.sweep import storage as sweep_storage
from flood_cli.sweep import worker as sweep_worker
from tests.conftest import ROOT, small_config, write_config


def tiny_config(tmp_path: Path, **train) -> Path:
    config = small_config(train={"epochs": 1, "batch_size": 8, **train})
    return write_config(tmp_path, config, "base.yaml")


def grid(tmp_path: Path, axes: dict, seeds=(1,), name: str = "grid", **kwargs) -> sweep_spec.SweepSpec:
    return sweep_create.create_sweep(tiny_config(tmp_path), None, axes, list(seeds), [], 0, tmp_path / "sweeps", name, None, None, **kwargs)


def queued_runs(spec: sweep_spec.SweepSpec) -> list[str]:
    storage = sweep_storage.open_storage(spec.storage_url)
    return [t.user_attrs["run"] for t in sweep_storage.load_study(storage, spec.grid_study).get_trials(deepcopy=False)]


def refused(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "flood_cli", "sweep", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1, (args, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result


# ---------------------------------------------------------------------------
# Item 4: a setting in another key order or spelling is the setting the sweep has


def test_resume_settings_in_another_key_order_or_spelling_add_nothing(tmp_path):
    spec = grid(tmp_path, {"train.b": [0.1], "train.lr": [0.001]}, seeds=(1, 2))
    before = queued_runs(spec)
    assert before == ["baseline-lr0.001-s1", "baseline-lr0.001-s2", "flooding-b0.1-lr0.001-s1", "flooding-b0.1-lr0.001-s2"]
    listed = tmp_path / "more.yaml"
    listed.write_text("- {train.mode: flooding, train.lr: 0.001, train.b: 0.1}\n- {train.mode: flooding, train.lr: 1e-3, train.b: 1.0e-1}\n"
                      "- {train.mode: baseline, train.lr: 0.0010}\n")
    assert sweep_create.add_settings(spec, sweep_spec.read_settings(listed)[:1]) == []
    assert sweep_create.add_settings(spec, sweep_spec.read_settings(listed)[1:]) == []
    assert queued_runs(spec) == before and len(sweep_create.read_spec(Path(spec.folder)).settings) == 2
    # What it lacks is added once, named in the config's order of keys.
    listed.write_text("- {train.mode: flooding, train.lr: 0.001, train.b: 0.2}\n")
    assert sweep_create.add_settings(spec, sweep_spec.read_settings(listed)) == ["flooding b=0.2 lr=0.001"]
    assert queued_runs(spec)[4:] == ["flooding-b0.2-lr0.001-s1", "flooding-b0.2-lr0.001-s2"]
    assert sweep_create.add_settings(spec, sweep_spec.read_settings(listed)) == [] and len(queued_runs(spec)) == 6


def test_run_names_and_labels_do_not_follow_key_order():
    one = sweep_spec.Setting({"train.mode": "flooding", "train.b": 0.1, "train.lr": 0.001})
    other = sweep_spec.Setting({"train.lr": 0.001, "train.b": 0.1, "train.mode": "flooding"})
    assert one.run_name(1) == other.run_name(1) == "flooding-b0.1-lr0.001-s1"
    assert one.label() == other.label() == "flooding b=0.1 lr=0.001" and one.identity() == other.identity()


def test_a_settings_file_listing_one_experiment_twice_is_refused(tmp_path):
    listed = tmp_path / "methods.yaml"
    listed.write_text("- {train.mode: flooding, train.b: 0.1, train.lr: 0.001}\n- {train.mode: flooding, train.lr: 1e-3, train.b: 0.1}\n")
    with pytest.raises(FloodError, match=r"--settings: .* are the same experiment once validated \(as flooding b=0.1 lr=0.001\); keep one"):
        grid(tmp_path, {}, listed=sweep_spec.read_settings(listed))
    assert not (tmp_path / "sweeps" / "grid").exists()
    # A listed baseline that is the base config's own (its lr spelt out) stands in for it.
    base_lr = small_config()["train"]["lr"]
    listed.write_text(f"- {{train.mode: baseline, train.lr: {base_lr}}}\n- {{train.mode: flooding, train.b: 0.1}}\n")
    spec = grid(tmp_path, {}, listed=sweep_spec.read_settings(listed))
    assert [sweep_spec.Setting(s).run_name(1) for s in spec.settings] == [f"baseline-lr{base_lr:g}-s1", "flooding-b0.1-s1"]


# ---------------------------------------------------------------------------
# Item 8: two settings never share a run; one experiment never makes two


def test_close_values_get_their_own_runs_and_equal_ones_are_refused(tmp_path):
    spec = grid(tmp_path, {"train.b": [0.1, 0.1000001]}, seeds=(1, 2))
    runs = queued_runs(spec)
    assert runs == ["baseline-s1", "baseline-s2", "flooding-b0.1-s1", "flooding-b0.1-s2", "flooding-b0.1000001-s1", "flooding-b0.1000001-s2"]
    assert spec.settings[1:] == [{"train.mode": "flooding", "train.b": 0.1}, {"train.mode": "flooding", "train.b": 0.1000001}]
    with pytest.raises(FloodError, match=r"the grid: \{train.mode: 'baseline', train.epochs: 1\} and \{train.mode: 'baseline', "
                                          r"train.epochs: 1.0\} are the same experiment once validated \(as baseline epochs=1\); give each value once"):
        grid(tmp_path, {"train.epochs": [1, 1.0]}, name="epochs")
    assert not (tmp_path / "sweeps" / "epochs").exists()


def test_values_are_kept_as_the_validated_config_holds_them(tmp_path):
    spec = grid(tmp_path, {"train.b": [1], "train.epochs": [2.0]})
    assert spec.settings == [{"train.mode": "baseline", "train.epochs": 2}, {"train.mode": "flooding", "train.epochs": 2, "train.b": 1.0}]
    assert [type(v) for v in spec.settings[1].values()] == [str, int, float]
    # Keys in the config's order, the flags' keys (b, lr, ascent_lr) last.
    assert queued_runs(spec) == ["baseline-epochs=2-s1", "flooding-epochs=2-b1-s1"]
    assert sweep_spec.Setting({"train.lr": 0.2, "train.optimizer": "sgd", "train.mode": "baseline"}).run_name(1) == "baseline-optimizer=sgd-lr0.2-s1"


def test_a_long_or_unsafe_value_never_cuts_off_the_seed_nor_merges_two_settings():
    long = "/data/" + "x" * 190
    names = {(path, seed): sweep_spec.Setting({"train.mode": "baseline", "data.train_file": path}).run_name(seed)
             for path in (long + "/a.csv", long + "/b.csv") for seed in (1, 2)}
    assert len(set(names.values())) == 4
    for (_path, seed), name in names.items():
        assert len(name) <= NAME_MAX and name.endswith(f"-s{seed}") and name.startswith("baseline-train_file=_data_xxx")
    # Characters a run name cannot hold: a/b and a_b are two settings, two runs.
    slash, underscore = (sweep_spec.Setting({"train.mode": "baseline", "data.train_file": f}).run_name(1) for f in ("a/b.csv", "a_b.csv"))
    assert slash != underscore and underscore == "baseline-train_file=a_b.csv-s1"
    # A text with '-' could read as two keys: hashed. Keys sharing their last part too.
    dash = sweep_spec.Setting({"train.mode": "baseline", "data.text_column": "x-lr0.1"}).run_name(1)
    plain = sweep_spec.Setting({"train.mode": "baseline", "data.text_column": "x", "train.lr": 0.1}).run_name(1)
    assert dash != plain and plain == "baseline-text_column=x-lr0.1-s1"
    folds = {sweep_spec.Setting({"train.mode": "adaflood", key: 3}).run_name(1) for key in ("train.adaflood.folds", "data.holdout.folds")}
    assert len(folds) == 2
    # The common names are as before.
    assert sweep_spec.Setting({"train.mode": "alternate", "train.lr": 1e-3, "train.ascent_lr": 1e-4}).run_name(3) == "alternate-lr0.001-alr0.0001-s3"
    assert sweep_spec.Setting({"train.mode": "gradnorm", "train.gradnorm.alpha": 1.0}).run_name(1) == "gradnorm-alpha=1-s1"
    assert sweep_spec.Setting({"train.mode": "flooding", "train.b": 2e-05}).run_name(5) == "flooding-b2e-05-s5"


# ---------------------------------------------------------------------------
# Item 9: keys a sweep sets itself, and flags a resumed sweep would ignore


def test_keys_the_sweep_sets_itself_are_refused(tmp_path):
    base = str(tiny_config(tmp_path))
    out = str(tmp_path / "sweeps")
    for args, message in [
        (["--set", "train.seed=1,2"], "--set sets train.seed, which a sweep sets itself: each run's seed comes from --seeds"),
        (["--b", "0.1", "--set", "output.name=x,y"], "--set sets output.name, which a sweep sets itself: the sweep names each run itself"),
        (["--b", "0.1", "--set", f"output.dir={tmp_path}"], "--set sets output.dir, which a sweep sets itself"),
    ]:
        assert message in refused("-c", base, "--out", out, *args).stderr
    listed = tmp_path / "seeded.yaml"
    listed.write_text("- {train.mode: flooding, train.b: 0.1, train.seed: 7}\n")
    with pytest.raises(FloodError, match=r"setting 1 sets train.seed, which a sweep sets itself: .* give --seeds"):
        sweep_spec.read_settings(listed)
    with pytest.raises(FloodError, match=r"--settings sets train.seed"):
        sweep_create.add_settings(grid(tmp_path, {"train.b": [0.1]}), [{"train.mode": "flooding", "train.b": 0.2, "train.seed": 7}])
    assert [p.name for p in (tmp_path / "sweeps").iterdir()] == ["grid"]


@pytest.mark.parametrize("flags", [
    ["--seeds", "5"], ["--mode", "flooding"], ["--trials", "3"], ["--study", "x"], ["--storage", "sqlite:///x.db"],
    ["--out", "elsewhere"], ["--prune"], ["--b", "0.2"], ["--set", "train.epochs=2"], ["--name", "x"],
])
def test_resume_refuses_every_flag_it_would_ignore(tmp_path, flags):
    spec = grid(tmp_path, {"train.b": [0.1]})
    saved = (Path(spec.folder) / "sweep.yaml").read_text()
    result = CliRunner().invoke(app, ["sweep", "--resume", spec.folder, *flags])
    assert result.exit_code == 1
    assert result.stderr == f"error: --resume continues the saved sweep, so {flags[0]} cannot be given; drop it " \
                            "(--settings FILE adds the settings it lists that the sweep lacks)\n"
    assert (Path(spec.folder) / "sweep.yaml").read_text() == saved and queued_runs(spec) == ["baseline-s1", "flooding-b0.1-s1"]


def test_a_worker_refuses_the_flags_it_would_ignore(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--worker", "--resume", str(tmp_path), "--seeds", "5", "--workers", "2", "--study", "x"])
    assert result.exit_code == 1
    assert result.stderr == "error: --worker runs the trials of a sweep made already, so --seeds, --workers, --study cannot be given; drop them\n"


def test_resume_names_every_ignored_flag_in_one_line(tmp_path):
    result = refused("--resume", str(tmp_path / "any"), "--seeds", "5", "--mode", "iflood", "--out", "x", "--prune")
    assert result.stderr == "error: --resume continues the saved sweep, so --mode, --seeds, --prune, --out cannot be given; " \
                            "drop them (--settings FILE adds the settings it lists that the sweep lacks)\n"


# ---------------------------------------------------------------------------
# Item 12: a search and a grid always end, and bad counts are refused


def _search(tmp_path: Path, text: str, trials: int) -> tuple[sweep_spec.SweepSpec, sweep_queue.Queue]:
    spec = sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1], [sweep_spec.parse_search(text)], trials, tmp_path / "sweeps", "tpe", None, None)
    storage = sweep_storage.open_storage(spec.storage_url)
    return spec, sweep_queue.Queue(storage, sweep_storage.load_study(storage, spec.study))


def test_an_integer_key_is_searched_over_integers_and_failed_trials_count(tmp_path):
    spec, queue = _search(tmp_path, "train.batch_size=8:32", 2)
    assert spec.search == [{"key": "train.batch_size", "low": 8, "high": 32, "log": False, "integer": True}]
    for _ in range(2):
        claimed = sweep_worker._ask(queue, spec)
        value = claimed.params["train.batch_size"]
        assert type(value) is int and 8 <= value <= 32
        assert sweep_spec.config_for(spec, claimed.attrs["overrides"], 1, "probe").train.batch_size == value
        queue.storage.set_trial_user_attr(claimed.trial_id, "error", "FloodError: failed")
        queue.study.tell(claimed.number, state=sweep_worker._state("FAIL"))
    assert sweep_worker._ask(queue, spec) is None  # two failed trials used the budget of 2


def test_failed_trials_count_and_an_interrupted_one_counts_once(tmp_path):
    spec, queue = _search(tmp_path, "b=0:0.6", 2)
    first = sweep_worker._ask(queue, spec)
    queue.study.tell(first.number, state=sweep_worker._state("FAIL"))  # failed: counts
    second = sweep_worker._ask(queue, spec)
    sweep_queue._requeue(queue, second)  # interrupted: its retry counts, once
    retry = sweep_worker._ask(queue, spec)
    assert retry.attrs["retry_of"] == second.number and retry.attrs["overrides"] == second.attrs["overrides"]
    queue.study.tell(retry.number, 0.5)
    assert sweep_worker._ask(queue, spec) is None


def test_the_retry_of_an_interrupted_search_trial_trains_its_own_values(tmp_path, monkeypatch):
    """The retry is a queued trial whose params Optuna leaves empty until suggested: it
    must still train the b it was asked with (it trained the base config's)."""
    spec, queue = _search(tmp_path, "b=0:0.6", 2)
    first = sweep_worker._ask(queue, spec)
    sweep_queue._requeue(queue, first)
    retry = sweep_worker._ask(queue, spec)
    assert retry.attrs["retry_of"] == first.number
    trained = []
    monkeypatch.setattr(sweep_worker, "_run_one", lambda spec, overrides, seed, name, reporter: trained.append((overrides, name)) or {"best_val_loss": 0.5})
    sweep_worker._run_trial(spec, retry, lambda: __import__("contextlib").nullcontext(__import__("types").SimpleNamespace(live_loss_every=0)), lambda text: None)
    assert trained == [(first.attrs["overrides"], sweep_spec.Setting(first.attrs["overrides"]).run_name(1))]
    assert trained[0][0]["train.b"] == first.params["train.b"]


def test_search_bounds_of_whole_number_and_non_number_keys(tmp_path):
    assert sweep_spec.parse_search("b=0:0.6").integer is False
    for text, message in [
        ("train.batch_size=8.5:32", "train.batch_size is a whole number; give whole bounds"),
        ("train.schedule=0:1", "train.schedule is not a number"),
        ("b=0:inf", "LOW must be below HIGH"),
    ]:
        with pytest.raises(FloodError, match=message):
            sweep_spec.parse_search(text)


def test_bad_counts_are_refused_at_once(tmp_path):
    with pytest.raises(FloodError, match=r"--trials -1: give the number of settings TPE may try \(1 or more\)"):
        sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1], [sweep_spec.parse_search("b=0:0.6")], -1, tmp_path / "sweeps", "neg", None, None)
    assert not (tmp_path / "sweeps").exists()
    for text, message in [
        ("1_0", "in plain digits"), ("1,2_0", "in plain digits"), ("+3", "in plain digits"), ("", "in plain digits"),
        ("99999999999", f"at most {sweep_spec.MAX_SEEDS} seeds per setting"), ("1,4294967296", "seeds must be distinct, from 0 to 4294967295"),
    ]:
        with pytest.raises(FloodError, match=message):
            sweep_spec.parse_seeds(text)
    assert sweep_spec.parse_seeds(" 2 ") == [1, 2] and sweep_spec.parse_seeds("0,7") == [0, 7]
    # 20 baselines (one per lr) + 100 × 20 flooding settings, × 3 seeds: 6060 runs.
    with pytest.raises(FloodError, match=rf"this sweep would make 6060 runs \(2020 setting\(s\) or trial\(s\) × 3 seed\(s\)\), more than {sweep_spec.MAX_RUNS}"):
        grid(tmp_path, {"train.b": [i / 1000 for i in range(1, 101)], "train.lr": [i / 1e5 for i in range(1, 21)]}, seeds=(1, 2, 3))
    assert not (tmp_path / "sweeps" / "grid").exists()


def test_a_huge_settings_file_is_refused_quickly(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text("".join(f"- {{train.mode: flooding, train.b: {i / 1e6}}}\n" for i in range(200_000)))
    started = time.monotonic()
    with pytest.raises(FloodError, match=rf"is 8\.\d MB; a sweep takes at most {sweep_spec.MAX_SETTINGS} settings"):
        sweep_spec.read_settings(huge)
    assert time.monotonic() - started < 2
    many = tmp_path / "many.yaml"
    many.write_text("".join(f"- {{train.mode: flooding, train.b: {i / 1e4}}}\n" for i in range(sweep_spec.MAX_SETTINGS + 1)))
    with pytest.raises(FloodError, match=rf"lists {sweep_spec.MAX_SETTINGS + 1} settings; a sweep takes at most {sweep_spec.MAX_SETTINGS}"):
        sweep_spec.read_settings(many)


# ---------------------------------------------------------------------------
# Item 10 and 14: a hand-edited sweep.yaml


def test_an_edited_sweep_yaml_is_refused_naming_the_keys(tmp_path):
    """base.train.lr edited by hand: --resume (and --resume --settings) would train new
    runs at the new lr and compare them with the old baseline. Refused in one line, as
    flood train --resume refuses an edited config; put back, it resumes."""
    spec = grid(tmp_path, {"train.b": [0.1]})
    path = Path(spec.folder) / sweep_spec.SPEC_FILE
    original = path.read_text()
    lr = spec.base["train"]["lr"]
    path.write_text(original.replace(f"lr: {lr}", "lr: 0.5", 1))
    assert path.read_text() != original
    result = refused("--resume", spec.folder)
    assert result.stderr == (
        f"error: {path} was edited since the sweep was made: base.train.lr {lr!r} → 0.5; its runs were trained with "
        "the values its study holds: put them back to go on, add settings with --resume --settings FILE, or start a "
        "new sweep\n"
    )
    path.write_text(original)
    assert sweep_create.read_spec(Path(spec.folder)).base["train"]["lr"] == lr


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seeds", "abc", "seeds is 'abc', not a list of whole-number seeds"),
        ("settings", 5, "settings is 5, not a list of settings (mappings)"),
        ("base", 7, "base is 7, not a mapping (the base config)"),
        ("seeds", [1, True], "seeds is [1, True], not a list of whole-number seeds"),
    ],
)
def test_a_sweep_yaml_with_fields_of_the_wrong_type_is_one_line(tmp_path, field, value, message):
    import yaml

    spec = grid(tmp_path, {"train.b": [0.1]})
    path = Path(spec.folder) / sweep_spec.SPEC_FILE
    data = yaml.safe_load(path.read_text())
    data[field] = value
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(FloodError) as excinfo:
        sweep_create.read_spec(Path(spec.folder))
    assert str(excinfo.value) == (
        f"{path}: {message}; it was not written by flood sweep, or was edited: put back what flood sweep wrote"
    )


# ---------------------------------------------------------------------------
# -q / --quiet: no overall progress bar


@pytest.mark.parametrize("flag", [None, "-q", "--quiet"])
def test_quiet_sweep_shows_no_progress_bar(tmp_path, monkeypatch, flag):
    from flood_cli.core import progress as core_progress
    from flood_cli.sweep import driver

    # A terminal: the sweep would draw its overall bar.
    monkeypatch.setattr(core_progress, "make_sweep_progress", lambda: core_progress.SweepProgress(live=True))
    seen = []

    def run_sweep(spec, workers, verbose, echo, progress):
        seen.append(progress.bar is not None)
        return driver.SweepOutcome(spec, [], [], 0)

    monkeypatch.setattr(driver, "run_sweep", run_sweep)
    args = ["sweep", "-c", str(tiny_config(tmp_path)), "--b", "0.1", "--seeds", "1", "--out", str(tmp_path / "sweeps")]
    result = CliRunner().invoke(app, [*args, *([flag] if flag else [])])
    assert result.exit_code == 0, result.output
    assert seen == [flag is None]
    assert "no completed runs yet" in result.stdout


def test_quiet_and_verbose_are_refused_together(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--resume", str(tmp_path), "-q", "--verbose"])
    assert result.exit_code == 1
    assert result.stderr == "error: --quiet hides the progress bars that --verbose shows; pick one\n"
