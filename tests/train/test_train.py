"""End to end: real training runs on the shipped data with a tiny BERT (seconds each)."""

import csv
import json
import math
import os
import stat
from pathlib import Path

import pytest

from flood_cli.config.load import load_config
from flood_cli.runs.columns import METRICS_COLUMNS, TIME_COLUMNS
from flood_cli.train.entry import run_training
from tests.conftest import small_config, write_config

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)


def train(tmp_path: Path, name: str, overrides: dict | None = None, **sections) -> tuple[Path, list[dict], dict]:
    sections["output"] = {"dir": str(tmp_path / "runs"), "name": name, **sections.get("output", {})}
    config = small_config(**sections)
    cfg = load_config(write_config(tmp_path, config, f"{name}.yaml"), overrides)
    result = run_training(cfg)
    run_dir = result.run_dir
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, rows, summary


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in rows]


MODES = {
    "baseline": {"mode": "baseline"},
    "flooding": {"mode": "flooding", "b": 0.3},
    "alternate": {"mode": "alternate", "lr": 1e-3, "ascent_lr": 1e-4},
}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_writes_a_consistent_run_folder(tmp_path, mode):
    run_dir, rows, summary = train(tmp_path, mode, train=MODES[mode])
    assert list(rows[0]) == list(METRICS_COLUMNS)
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0]
    for row in rows:
        assert all(math.isfinite(float(row[c])) for c in METRICS_COLUMNS), row
        assert 0.0 <= float(row["flood_active"]) <= 1.0
        assert 0.0 <= float(row["val_accuracy"]) <= 1.0
    val_losses = [float(r["val_loss"]) for r in rows]
    running_min = [min(val_losses[: i + 1]) for i in range(len(val_losses))]
    assert [float(r["best_val_loss"]) for r in rows] == pytest.approx(running_min, rel=1e-6)

    assert summary["status"] == "completed"
    assert summary["mode"] == mode
    assert summary["best_val_loss"] == pytest.approx(min(val_losses), rel=1e-6)
    best_row = rows[val_losses.index(min(val_losses))]
    assert summary["best_step"] == int(best_row["step"])
    assert summary["best_epoch"] == float(best_row["epoch"])
    assert summary["final_val_loss"] == pytest.approx(val_losses[-1], rel=1e-6)
    assert summary["num_train_examples"] == 192 and summary["num_val_examples"] == 64
    assert summary["steps_completed"] == summary["total_steps"] == int(rows[-1]["step"])

    umask = os.umask(0)
    os.umask(umask)
    for written in ("config.yaml", "metrics.csv", "summary.json"):
        # Atomic writes go through temporary files; they keep the usual permissions.
        assert stat.S_IMODE((run_dir / written).stat().st_mode) == 0o666 & ~umask, written
    # A completed run needs no checkpoint (output.keep_checkpoint: false by default).
    assert not (run_dir / "checkpoints").exists()

    saved = (run_dir / "config.yaml").read_text()
    assert f"mode: {mode}" in saved and "versions:" in saved and "torch:" in saved
    if mode == "alternate":
        assert float(rows[0]["flood_active"]) == pytest.approx(6 / 12)  # 12 steps per epoch, every other one ascends
    if mode == "baseline":
        assert all(r["train_objective"] == r["train_loss"] for r in rows)


def test_flooding_with_b_zero_is_bit_for_bit_the_baseline(tmp_path):
    _, baseline, _ = train(tmp_path, "baseline")
    _, flooded, summary = train(tmp_path, "b0", overrides={"train.b": 0.0})
    assert summary["mode"] == "flooding" and summary["b"] == 0.0
    assert without_time(flooded) == without_time(baseline)


def test_same_seed_gives_the_same_csv_and_another_seed_does_not(tmp_path):
    _, first, _ = train(tmp_path, "first")
    _, second, _ = train(tmp_path, "second")
    _, other, _ = train(tmp_path, "other", overrides={"train.seed": 7})
    assert without_time(first) == without_time(second)
    assert without_time(other) != without_time(first)


def test_flood_level_above_the_initial_loss_makes_every_step_ascent(tmp_path):
    _, rows, _ = train(tmp_path, "high", overrides={"train.b": 10.0})
    assert len(rows) == 2 and all(float(r["flood_active"]) == 1.0 for r in rows)
    for row in rows:
        # What the optimizer saw is the mirrored loss 2b - L.
        assert float(row["train_objective"]) == pytest.approx(20.0 - float(row["train_loss"]), rel=1e-5)


def test_flooding_under_gradient_accumulation_matches_the_large_batch(tmp_path):
    """Without dropout, 2 micro-batches of 8 flood exactly like one batch of 16."""
    no_dropout = {"tiny": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "dropout": 0.0}}
    flooding = {"mode": "flooding", "b": 0.62, "batch_size": 16}
    _, large, _ = train(tmp_path, "large", model=no_dropout, train=flooding)
    _, accumulated, _ = train(tmp_path, "accum", model=no_dropout, train={**flooding, "batch_size": 8, "grad_accum_steps": 2})
    assert 0.0 < float(large[0]["flood_active"]) < 1.0, "b should make some steps ascend and some descend"
    assert len(accumulated) == len(large) == 2
    for a, b in zip(without_time(large), without_time(accumulated), strict=True):
        assert a["flood_active"] == b["flood_active"]
        for column in ("train_loss", "val_loss", "val_accuracy"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    "eval_every, steps",
    [("0.5 epoch", [6, 12, 18, 24]), ("1/3 epoch", [4, 8, 12, 16, 20, 24]), ("0.4 epoch", [5, 10, 15, 20, 24])],
)
def test_eval_every_a_fraction_of_an_epoch(tmp_path, eval_every, steps):
    """12 steps per epoch, 2 epochs: half an epoch is every 6 steps; 0.4 epoch is 4.8
    steps, so the evaluations fall on the first step at or after 4.8, 9.6, 14.4, 19.2
    and 24 (a fraction that does not divide 1 does not meet every epoch's end)."""
    _, rows, _ = train(tmp_path, "fraction", train={"eval_every": eval_every})
    assert [int(r["step"]) for r in rows] == steps
    assert [float(r["epoch"]) for r in rows] == [round(s / 12, 4) for s in steps]


def test_eval_every_n_steps_and_a_test_split(tmp_path):
    data = small_config()["data"]
    test_file = tmp_path / "test.csv"
    test_file.write_text("text,label\nfree money click now,spam\nmeeting notes attached,ham\n")
    _, rows, summary = train(
        tmp_path,
        "steps",
        train={"eval_every": 5},
        data={**data, "test_file": str(test_file)},
    )
    # 12 steps per epoch, 24 in all: rows at 5, 10, 15, 20 and at the last step.
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 24]
    assert list(rows[0])[-2:] == ["test_loss", "test_accuracy"]
    assert summary["num_test_examples"] == 2


def test_save_best_model_writes_a_loadable_folder(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, rows, _ = train(tmp_path, "saved", output={"save_best_model": True}, train={"eval_every": 3})
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "best_model")
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert AutoTokenizer.from_pretrained(run_dir / "best_model")("hello")["input_ids"][0] == 2
    # best_model is a relative link to the hidden folder that holds the latest best, and
    # .best_model.previous to the one before it (the run improves several times): nothing
    # else is left behind (no staging link, no older best).
    link, previous = run_dir / "best_model", run_dir / ".best_model.previous"
    assert link.is_symlink() and not Path(os.readlink(link)).is_absolute()
    losses = [float(r["val_loss"]) for r in rows]
    assert sum(loss < min(losses[:i], default=math.inf) for i, loss in enumerate(losses)) >= 2  # two bests or more
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == sorted(
        [os.readlink(link), os.readlink(previous), previous.name]
    )
    assert os.readlink(link) != os.readlink(previous)


@pytest.fixture
def cpu_load():
    """Two CPU-bound processes beside the test, as on a loaded machine (killed after)."""
    import subprocess
    import sys

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for spinner in spinners:
        spinner.kill()
        spinner.wait()


def fill_best_model(files: list[str], version: int):
    def fill(folder: Path) -> None:
        for name in files:
            (folder / name).write_text(str(version) * 20_000)
    return fill


def test_a_reader_inside_best_model_can_read_it_whole_after_it_is_replaced(tmp_path, cpu_load):
    """A reader that entered best_model/ (like `cd best_model`, or a tool holding the
    folder open) before a swap, and reads its files after it, finds them all, whole and
    from the one model it entered. (Before, the old folder was deleted at the swap.)
    Then, a swap later, that folder goes: at most two hidden folders are ever kept."""
    import threading

    from flood_cli.runs.folder import RunDir

    run = RunDir(tmp_path)
    files = [f"part{i}.bin" for i in range(5)]
    run.replace_best_model(fill_best_model(files, 0))
    entered, swapped, texts = threading.Event(), threading.Event(), {}

    def reader():
        folder = os.open(tmp_path / "best_model", os.O_RDONLY | os.O_DIRECTORY)
        try:
            entered.set()
            swapped.wait(timeout=60)  # sleeps past the swap
            for name in files:
                try:
                    with open(name, encoding="utf-8", opener=lambda path, flags: os.open(path, flags, dir_fd=folder)) as handle:
                        texts[name] = handle.read()
                except FileNotFoundError:
                    texts[name] = "missing"
        finally:
            os.close(folder)

    thread = threading.Thread(target=reader)
    thread.start()
    assert entered.wait(timeout=60)
    run.replace_best_model(fill_best_model(files, 1))
    swapped.set()
    thread.join(timeout=60)
    assert texts == {name: "0" * 20_000 for name in files}, "a reader inside best_model/ saw its files vanish"
    assert (tmp_path / "best_model" / "part0.bin").read_text() == "1" * 20_000

    hidden = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".best_model-"))  # noqa: E731
    first, second = os.readlink(tmp_path / ".best_model.previous"), os.readlink(tmp_path / "best_model")
    assert hidden() == sorted([first, second])
    run.replace_best_model(fill_best_model(files, 2))
    assert hidden() == sorted([second, os.readlink(tmp_path / "best_model")])  # the first one is gone
    assert os.readlink(tmp_path / ".best_model.previous") == second


def test_replacing_the_best_model_never_leaves_best_model_missing_or_half_written(tmp_path, cpu_load):
    """A reader polling best_model/ while it is replaced 30 times, beside two CPU-bound
    processes, never finds it missing or a file in it half-written: the new folder is
    complete before one rename swaps the link, and the folder it replaces stays until
    the next swap. Each swap waits until the reader has read a whole pass begun after
    the swap before it, as evaluations are far apart in a run: the reader is then
    never in a folder older than the previous one. (Before, best_model was renamed away
    and then replaced; later, the previous folder was deleted at once.)"""
    import threading

    from flood_cli.runs.folder import RunDir

    run = RunDir(tmp_path)
    files = [f"part{i}.bin" for i in range(5)]
    run.replace_best_model(fill_best_model(files, 0))
    seen, stop, passes = [], threading.Event(), {"started": 0, "done": 0}
    progress = threading.Condition()

    def reader():
        while not stop.is_set():
            with progress:
                passes["started"] += 1
            for name in files:
                try:
                    text = (tmp_path / "best_model" / name).read_text()
                except FileNotFoundError:
                    text = "missing"
                seen.append(text)
            with progress:
                passes["done"] += 1
                progress.notify_all()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 31):
            with progress:
                begun = passes["started"]
                assert progress.wait_for(lambda: passes["done"] > begun, timeout=60), "the reader stalled"  # noqa: B023 (called at once)
            run.replace_best_model(fill_best_model(files, version))
    finally:
        stop.set()
        thread.join()
    assert len(seen) >= 30 * len(files)
    whole = {str(version) * 20_000 for version in range(31)}
    assert all(text in whole for text in seen), "a reader found best_model missing or a file half-written"
    assert (tmp_path / "best_model" / "part0.bin").read_text() == "30" * 20_000
    # The latest and the one before it; nothing else (no staging link either).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".best_model.previous", "best_model", os.readlink(tmp_path / "best_model"), os.readlink(tmp_path / ".best_model.previous")]
    )


def test_a_resumed_run_tidies_what_a_killed_swap_left_and_keeps_both_models(tmp_path):
    """A process killed while writing a new best leaves a half-written hidden folder (and
    maybe a staging link): taking the run's lock, as a resume does, removes them and
    keeps the current and previous models."""
    from flood_cli.runs.folder import RunDir

    run = RunDir(tmp_path)
    files = ["part0.bin"]
    for version in range(3):
        run.replace_best_model(fill_best_model(files, version))
    kept = {os.readlink(tmp_path / "best_model"), os.readlink(tmp_path / ".best_model.previous")}
    (tmp_path / ".best_model-killedwhilewriting").mkdir()
    (tmp_path / ".best_model-killedwhilewriting" / "part0.bin").write_text("3" * 10)
    os.symlink(".best_model-killedwhilewriting", tmp_path / ".best_model.link.tmp")
    resumed = RunDir(tmp_path)
    resumed.lock()
    resumed.close()
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith(".best_model")} == kept | {".best_model.previous"}
    assert (tmp_path / "best_model" / "part0.bin").read_text() == "2" * 20_000


def test_an_existing_run_is_never_overwritten(tmp_path):
    from flood_cli.core.errors import FloodError

    run_dir, rows, _ = train(tmp_path, "kept")
    before = (run_dir / "metrics.csv").read_bytes()
    with pytest.raises(FloodError, match="already exists; pass another --name"):
        train(tmp_path, "kept")
    assert (run_dir / "metrics.csv").read_bytes() == before


@pytest.mark.parametrize("kind, shown", [("FSDP", "FSDP"), ("DEEPSPEED", "DeepSpeed"), ("MEGATRON_LM", "Megatron-LM")])
def test_sharded_accelerate_setups_are_refused_in_one_line(monkeypatch, kind, shown):
    """Flooding's sign, clipping and ascent steps act on whole gradients; under FSDP or
    DeepSpeed each process would hold a shard. (Accelerate picks these only on GPUs,
    so the type is stood in for here.)"""
    import accelerate
    from accelerate.utils import DistributedType

    from flood_cli.config.schema import RuntimeConfig
    from flood_cli.core.errors import FloodError
    from flood_cli.train.setup import make_accelerator

    monkeypatch.setattr(accelerate.Accelerator, "distributed_type", property(lambda self: DistributedType[kind]))
    with pytest.raises(FloodError) as caught:
        make_accelerator(RuntimeConfig(device="cpu", precision="fp32"))
    assert str(caught.value) == (
        f"accelerate is configured for {shown}, which flood does not support (flooding, clipping and ascent steps "
        "need whole gradients on every process); launch with a plain multi-GPU config (`accelerate config`: "
        "no DeepSpeed/FSDP) or with torchrun"
    )


def test_a_validation_file_that_is_the_training_file_is_warned_about(tmp_path):
    """Not an error (someone may want training-set figures), but never silent, even with -q."""
    import subprocess
    import sys

    config = small_config(output={"dir": str(tmp_path / "runs"), "name": "same"}, train={"epochs": 1})
    config["data"]["validation_file"] = config["data"]["train_file"]
    path = write_config(tmp_path, config)
    result = subprocess.run([sys.executable, "-m", "flood_cli", "train", "-q", "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        f"warning: the validation file is the training file ({config['data']['train_file']}): "
        "validation figures will measure memorisation, not generalisation"
    )


def test_keep_checkpoint_keeps_a_completed_runs_checkpoint_with_the_usual_permissions(tmp_path):
    run_dir, _, _ = train(tmp_path, "kept-checkpoint", output={"keep_checkpoint": True}, train={"epochs": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((run_dir / "checkpoints" / "last.pt").stat().st_mode) == 0o666 & ~umask


def test_a_run_folders_config_runs_the_same_experiment_again_under_a_fresh_name(tmp_path, monkeypatch):
    """The README's promise: `flood train --config runs/X/config.yaml` from any folder
    trains the same settings again, next to the first run, without refusing the taken name."""
    import yaml

    from flood_cli.config.load import load_config

    first_dir, _, _ = train(tmp_path, "first", train={"epochs": 1})
    saved = yaml.safe_load((first_dir / "config.yaml").read_text())
    assert saved["output"]["dir"] == str(first_dir.parent) and saved["output"]["name"] == "first"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = load_config(first_dir / "config.yaml")
    assert again.output.name is None and again.output.dir == str(first_dir.parent)
    assert again.model_dump(exclude={"output"}) == load_config(first_dir / "config.yaml", new_run=False).model_dump(exclude={"output"})
    result = run_training(again)
    assert result.run_dir.parent == first_dir.parent and result.run_dir != first_dir
    from tests.conftest import csv_bytes_without_time

    assert csv_bytes_without_time(result.run_dir) == csv_bytes_without_time(first_dir)  # same settings: same numbers
