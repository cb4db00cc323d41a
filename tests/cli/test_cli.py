"""The `flood` command line: flags, overrides, exact error lines, exit codes, start-up cost."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flood_cli.cli.main import app
from tests.conftest import small_config, write_config

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_help_imports_no_torch():
    code = "import sys; from flood_cli.cli.main import app; import flood_cli.config.load, flood_cli.runs.folder; print('torch' in sys.modules, 'transformers' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]
    result = subprocess.run([sys.executable, "-m", "flood_cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout and "compare" in result.stdout


@pytest.mark.slow
def test_train_prints_the_run_folder_and_best_loss(config_file, tmp_path):
    result = invoke("train", "--config", config_file, "--quiet", "--epochs", "1", "--name", "first")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "first"
    summary = json.loads((run_dir / "summary.json").read_text())
    # output.save_best_model is on by default, and the last line says what it takes on disk.
    best = run_dir / "best_model"
    size = sum(path.stat().st_size for path in best.rglob("*") if path.is_file())
    assert (best / "config.json").is_file() and 1e5 < size < 1e8
    from flood_cli.train import setup

    threads = setup.cpu_threads(os.environ.get("OMP_NUM_THREADS"), len(os.sched_getaffinity(0)), setup._TORCH_DEFAULT_THREADS[0])
    assert result.stdout.splitlines() == [
        threads[1],  # a CPU run says its thread count
        f"run folder: {run_dir}",
        f"best val_loss: {summary['best_val_loss']:.6f} (epoch 1, step {summary['best_step']})",
        f"best model {size / 1e6:.1f} MB in {best}",
    ]


@pytest.mark.slow
def test_flags_override_the_file_and_b_alone_switches_to_flooding(config_file, tmp_path):
    out = tmp_path / "elsewhere"
    result = invoke(
        "train", "-c", config_file, "-q", "--b", "0.4", "--lr", "2e-3", "--seed", "3", "--out", out,
        "--set", "train.epochs=1", "--set", "train.batch_size=32",
    )
    assert result.exit_code == 0, result.output
    run_dir = only_run(out)
    assert run_dir.name.startswith("flooding-b0.4-lr0.002-s3-")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["mode"], summary["b"], summary["lr"], summary["seed"], summary["epochs"]) == ("flooding", 0.4, 2e-3, 3, 1)
    saved = (run_dir / "config.yaml").read_text()
    assert "batch_size: 32" in saved and f"name: {run_dir.name}" in saved


@pytest.mark.slow
def test_alternate_mode_from_flags(config_file, tmp_path):
    result = invoke("train", "-c", config_file, "-q", "--mode", "alternate", "--lr", "1e-3", "--ascent-lr", "1e-4", "--epochs", "1", "--name", "alt")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs" / "alt" / "summary.json").read_text())
    assert (summary["mode"], summary["ascent_lr"], summary["b"]) == ("alternate", 1e-4, None)


@pytest.mark.slow
def test_saved_config_trains_again(config_file, tmp_path):
    assert invoke("train", "-c", config_file, "-q", "--epochs", "1", "--name", "one").exit_code == 0
    saved = tmp_path / "runs" / "one" / "config.yaml"
    result = invoke("train", "-c", saved, "-q", "--name", "two")
    assert result.exit_code == 0, result.output
    first = (tmp_path / "runs" / "one" / "metrics.csv").read_text().splitlines()
    second = (tmp_path / "runs" / "two" / "metrics.csv").read_text().splitlines()
    strip_time = lambda lines: [line.rsplit(",", 1)[0] for line in lines]  # noqa: E731
    assert strip_time(first) == strip_time(second)


BAD_INPUTS = [
    # (arguments after `train -c CONFIG -q`, expected error line)
    (["--mode", "sideways"], "error: --mode 'sideways' is not a mode; use baseline, flooding, iflood, adaflood, alternate, backstitch or gradnorm"),
    (
        ["--mode", "alternate", "--b", "0.5", "--ascent-lr", "1e-4"],
        "error: --b (flood level) applies only to modes flooding and iflood, but the mode is alternate; drop --b or pass --mode flooding",
    ),
    (["--mode", "baseline", "--b", "0.5"], "error: --b (flood level) applies only to mode flooding; drop --b or --mode baseline"),
    (["--b", "-0.1"], "error: config error in {cfg}: train.b: input should be greater than or equal to 0 (got -0.1)"),
    (["--epochs", "0"], "error: config error in {cfg}: train.epochs: input should be greater than or equal to 1 (got 0)"),
    (
        ["--mode", "alternate", "--lr", "1e-4", "--ascent-lr", "1e-3"],
        "error: config error in {cfg}: train: ascent_lr (0.001) must be smaller than lr (0.0001) in mode alternate, or training ascends on average",
    ),
    (
        ["--mode", "alternate"],
        "error: config error in {cfg}: train: mode alternate needs train.ascent_lr (or --ascent-lr), smaller than lr",
    ),
    (["--mode", "flooding"], "error: config error in {cfg}: train: mode flooding needs a flood level: set train.b (or pass --b)"),
    (["--set", "train.lrr=1"], "error: --set train.lrr=1: unknown key 'train.lrr'; did you mean 'lr'?"),
    (["--set", "epochs"], "error: --set 'epochs': expected section.key=value, e.g. --set train.epochs=5"),
    (["--set", "train.batch_size=many"], "error: --set train.batch_size=many: train.batch_size: input should be a valid integer, unable to parse string as an integer (got 'many')"),
    (["--name", "a/b"], "error: config error in {cfg}: output.name: 'a/b' is not a plain folder name; use 1 to 200 letters, digits and . _ - + = @ , (not . or ..)"),
]


@pytest.mark.parametrize("args, expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_flags_give_one_line_and_exit_1(config_file, tmp_path, args, expected):
    result = invoke("train", "-c", config_file, "-q", *args)
    assert result.exit_code == 1
    assert result.stderr.strip() == expected.format(cfg=config_file)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_config_file(tmp_path):
    result = invoke("train", "--config", tmp_path / "nope.yaml")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: config file {tmp_path / 'nope.yaml'} not found; pass an existing YAML file, e.g. --config configs/tiny.yaml"


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  tiny: {}\ndata:\n  train_file: [unclosed\n")
    result = invoke("train", "--config", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: YAML syntax error in {path} at line ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_data_file_and_missing_column_are_one_line(tmp_path):
    config = small_config(output={"dir": str(tmp_path / "runs")})
    config["data"]["train_file"] = "missing.csv"
    result = invoke("train", "-c", write_config(tmp_path, config), "-q")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: train file {tmp_path / 'missing.csv'} not found; fix data.train_file"

    config["data"]["train_file"] = str(Path(__file__).resolve().parents[2] / "data" / "spam-assassin-small.csv")
    config["data"]["text_column"] = "body"
    result = invoke("train", "-c", write_config(tmp_path, config), "-q")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: train data has no column 'body' (columns: text, label, group); set data.text_column"


@pytest.mark.slow
def test_an_existing_run_name_is_refused_and_kept(config_file, tmp_path):
    assert invoke("train", "-c", config_file, "-q", "--epochs", "1", "--name", "kept").exit_code == 0
    metrics = (tmp_path / "runs" / "kept" / "metrics.csv").read_bytes()
    result = invoke("train", "-c", config_file, "-q", "--epochs", "1", "--name", "kept")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: run folder {tmp_path / 'runs' / 'kept'} already exists; pass another --name (runs are never overwritten)"
    assert (tmp_path / "runs" / "kept" / "metrics.csv").read_bytes() == metrics


def test_unwritable_output_is_reported_before_training(config_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("train", "-c", config_file, "-q", "--out", blocker / "runs")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot create output folder {blocker / 'runs'}: ")



# -- what a researcher sees: the progress bar, help pages, --version, errors -----------


def _flood(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flood_cli", *map(str, args)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "100", **env},
    )


def _bar(width: int, evaluated: bool) -> str:
    """The training bar of a BERT-base-sized run (2,105 steps an epoch, 0.5 s a step) at
    the end of its first epoch, drawn on a console ``width`` columns wide."""
    from rich.console import Console

    from flood_cli.core.progress import RichReporter

    now = [0.0]
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    reporter = RichReporter(console=console, get_time=lambda: now[0])
    reporter.start(6315, 2105, 3)
    for step in range(1, 2106):
        now[0] = step * 0.5
        reporter.step(step, step / 2105, 0.4321 if step % 20 == 0 else None)
    if evaluated:
        reporter.evaluation({"train_loss": 0.41234, "val_loss": 0.30456, "val_accuracy": 0.9, "best_val_loss": 0.30456})
    console.print(reporter.progress.make_tasks_table(reporter.progress.tasks))
    return console.file.getvalue()


@pytest.mark.parametrize(
    "width, evaluated, expected",
    [
        (120, True, "epoch 1.00/3 ━━━━━           2105/6315 train_loss 0.4123 val_loss 0.3046 (best 0.3046) elapsed 0:17:32 remaining 0:35:05"),
        (100, False, "epoch 1.00/3 ━━━━━━━━                  2105/6315 train_loss 0.4321 elapsed 0:17:32 remaining 0:35:05"),
        (100, True, "epoch 1.00/3 ━━━━━           2105/6315 loss 0.4123 val_loss 0.3046 elapsed 0:17:32 remaining 0:35:05"),
        (80, False, "epoch 1.00/3 ━━━╸        2105/6315 loss 0.4321 elapsed 0:17:32 remaining 0:35:05"),
        (80, True, "epoch 1.00/3 ━━━╸        2105/6315 loss 0.4123 elapsed 0:17:32 remaining 0:35:05"),
        (60, True, "2105/6315 loss 0.4123 elapsed 0:17:32 remaining 0:35:05"),
    ],
)
def test_progress_bar_fits_the_terminal_keeping_counter_and_times(width, evaluated, expected):
    """Narrower terminals lose the last evaluation, then the bar and the epoch, never the
    step counter or the labelled times (rich squeezed them to `21… 0:1… 0:3…`). After an
    evaluation the loss is the row's train_loss (0.4123), not the last step's (0.4321)."""
    line = _bar(width, evaluated)
    assert line == expected + "\n"
    assert len(expected) <= width


class _Recorder:
    """A reporter that asks for the training loss every 5 steps and keeps what it gets."""

    live_loss_every = 5

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, float | None]] = []
        self.steps_per_epoch = 0

    def start(self, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    def step(self, step: int, epoch: float, train_loss: float | None) -> None:
        self.steps.append((step, epoch, train_loss))

    def evaluation(self, row: dict) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    warning = notice = before_write = lambda self, *args: None


@pytest.mark.slow
def test_the_bars_loss_is_the_csvs_train_loss(tmp_path):
    """The loss the bar gets is the mean since the last evaluation, read every
    live_loss_every steps: at an evaluation's step it equals the CSV's train_loss; the
    epoch is step / steps_per_epoch, as the CSV's."""
    from flood_cli.config.load import load_config
    from flood_cli.runs.folder import read_metrics
    from flood_cli.train.entry import run_training

    # 10 steps an epoch, an evaluation every 5 steps: the loss is read at each evaluation.
    config = small_config(output={"dir": str(tmp_path / "runs"), "name": "bar"})
    config["data"].update(max_train_examples=160)
    config["train"].update(eval_every=5)
    recorder = _Recorder()
    run_training(load_config(write_config(tmp_path, config)), reporter=recorder)
    rows = read_metrics(tmp_path / "runs" / "bar" / "metrics.csv")

    assert recorder.steps_per_epoch == 10 and [step for step, _, _ in recorder.steps] == list(range(1, 21))
    assert [step for step, _, loss in recorder.steps if loss is not None] == [5, 10, 15, 20]
    assert [int(row["step"]) for row in rows] == [5, 10, 15, 20]
    reported = {step: (epoch, loss) for step, epoch, loss in recorder.steps}
    for row in rows:
        epoch, loss = reported[int(row["step"])]
        assert loss == pytest.approx(float(row["train_loss"]), rel=1e-7, abs=0)  # the CSV keeps 8 digits
        assert round(epoch, 4) == float(row["epoch"])


def test_flood_alone_prints_the_help_once():
    result = _flood()
    assert result.returncode == 2
    assert result.stdout.count("Usage: flood [OPTIONS] COMMAND [ARGS]...") == 1
    assert result.stderr == ""


def test_version_names_flood_torch_transformers_accelerate_datasets_optuna_and_cuda():
    import accelerate
    import datasets
    import optuna
    import torch
    import transformers

    from flood_cli import __version__

    result = _flood("--version")
    assert result.returncode == 0, result.stderr
    cuda = f"CUDA {torch.version.cuda}" if torch.cuda.is_available() else "CUDA: not available"
    lines = result.stdout.splitlines()
    assert lines[:6] == [
        f"flood {__version__}", f"torch {torch.__version__}", f"transformers {transformers.__version__}",
        f"accelerate {accelerate.__version__}", f"datasets {datasets.__version__}", f"optuna {optuna.__version__}",
    ]
    assert lines[6].startswith(cuda) and len(lines) == 7


def test_version_says_not_installed_for_a_missing_package(monkeypatch):
    from importlib import metadata

    from flood_cli.cli.main import version_lines

    real = metadata.version

    def version(name: str) -> str:
        if name in ("datasets", "optuna"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    lines = version_lines()
    assert lines[4:6] == ["datasets: not installed", "optuna: not installed"]
    assert lines[3] == f"accelerate {real('accelerate')}"


def test_help_imports_no_torch_but_version_does():
    """`-X importtime` lists every module a command imports, on stderr."""
    imported = lambda result: {line.split("|")[-1].strip() for line in result.stderr.splitlines()}  # noqa: E731
    assert "torch" not in imported(subprocess.run([sys.executable, "-X", "importtime", "-m", "flood_cli", "--help"], capture_output=True, text=True))
    by_version = imported(subprocess.run([sys.executable, "-X", "importtime", "-m", "flood_cli", "--version"], capture_output=True, text=True))
    assert "torch" in by_version
    assert not {"transformers", "accelerate", "datasets", "optuna"} & by_version  # their versions come from the metadata


def test_debug_works_before_and_after_the_command(tmp_path):
    missing = tmp_path / "missing.yaml"
    for args in (["--debug", "train", "-c", missing], ["train", "--debug", "-c", missing], ["train", "-c", missing, "--debug"]):
        result = _flood(*args)
        assert result.returncode != 0
        assert "Traceback" in result.stderr and "FloodError" in result.stderr, (args, result.stderr)
    result = _flood("compare", "--debug", tmp_path / "gone")
    assert "Traceback" in result.stderr and "FloodError" in result.stderr, result.stderr
    assert "--debug" in _flood("train", "--help").stdout


def test_help_pages_show_no_bool_type_and_an_upper_case_argument():
    train = _flood("train", "--help").stdout
    assert [line.split("│")[1].split() for line in train.splitlines() if "--quiet" in line] == [["--quiet", "-q", "no", "progress", "bar"]]
    assert "<bool>" not in train + _flood("--help").stdout + _flood("compare", "--help").stdout
    assert "<float>" in train  # options with values keep their type
    usage = [line.strip() for line in _flood("compare", "--help").stdout.splitlines() if "Usage:" in line]
    assert usage == ["Usage: flood compare [OPTIONS] PATHS..."]


def test_resume_of_a_folder_that_does_not_exist(tmp_path):
    result = invoke("train", "--resume", tmp_path / "runs" / "does-not-exist")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: run folder {tmp_path / 'runs' / 'does-not-exist'} does not exist; pass the folder that flood train printed (run folder: …)"
    )


def test_a_failed_run_removes_the_output_folders_it_created(tmp_path):
    """fp16 on the CPU fails after the output folder was made (and checked writable)."""
    config = write_config(tmp_path, small_config(runtime={"device": "cpu", "precision": "fp16"}))
    result = invoke("train", "-c", config, "-q", "--out", tmp_path / "new" / "runs")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: precision fp16 needs a CUDA GPU")
    assert not (tmp_path / "new").exists()
    # A folder that was there before is kept, empty or not.
    (tmp_path / "kept").mkdir()
    assert invoke("train", "-c", config, "-q", "--out", tmp_path / "kept" / "runs").exit_code == 1
    assert list((tmp_path / "kept").iterdir()) == []
    (tmp_path / "kept" / "runs").mkdir()
    assert invoke("train", "-c", config, "-q", "--out", tmp_path / "kept" / "runs").exit_code == 1
    assert (tmp_path / "kept" / "runs").is_dir()


MISSING_COLUMN = "error: train data has no column 'body' (columns: text, label, group); set data.text_column"


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"text_column": "body"}, MISSING_COLUMN),
        ({"train_file": "nope.csv"}, "error: train file {tmp}/nope.csv not found; fix data.train_file"),
        ({"label_column": "text"}, "error: data.text_column and data.label_column are both 'text': the model would read the answer; point data.text_column to the text"),
    ],
)
def test_data_errors_come_before_torch_is_imported(tmp_path, data, expected):
    """Checked before the imports of torch, transformers and datasets (seconds; 17-20 s
    on a busy machine) and before the model loads."""
    config = write_config(tmp_path, small_config(output={"dir": str(tmp_path / "runs")}, data=data))
    code = (
        "import sys\n"
        "from flood_cli.cli.main import main\n"
        f"sys.argv = ['flood', 'train', '-c', {str(config)!r}, '-q']\n"
        "try:\n    main()\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.stderr.strip() == expected.format(tmp=tmp_path)
    assert result.stdout.split() == ["1", "[]"]
    assert not (tmp_path / "runs").exists()


def test_top_level_help_names_every_mode_of_the_registry():
    from flood_cli.core.modes import MODE_NAMES

    result = _flood("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "Fine-tune BERT classifiers in the modes baseline, flooding, iflood, adaflood, alternate, backstitch or gradnorm;" in text
    assert all(mode in text for mode in MODE_NAMES)
    from flood_cli.cli.main import app_help  # built from the registry: a new mode appears by itself

    assert app_help(("a", "b", "new")) == "Fine-tune BERT classifiers in the modes a, b or new; sweep settings and compare the runs."


def test_a_cpu_run_takes_one_thread_per_core_it_may_use_at_most_torchs_default():
    from flood_cli.train.setup import cpu_threads

    assert cpu_threads(None, 2, 8) == (2, "CPU: 2 threads (the 2 core(s) this process may use; set OMP_NUM_THREADS to change)")
    assert cpu_threads(None, 16, 8) == (8, "CPU: 8 threads (torch's default, below the 16 cores this process may use; set OMP_NUM_THREADS to change)")
    assert cpu_threads("", 1, 4) == (1, "CPU: 1 thread (the 1 core(s) this process may use; set OMP_NUM_THREADS to change)")
    assert cpu_threads("3", 16, 8) == (3, "CPU: 3 threads (OMP_NUM_THREADS=3)")  # a sweep worker's share, or the user's
    assert cpu_threads("many", 4, 8)[0] == 4
