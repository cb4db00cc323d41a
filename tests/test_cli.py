"""The `flood` command line: flags, overrides, exact error lines, exit codes, start-up cost."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flood_cli.cli import app
from tests.conftest import small_config, write_config

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_help_imports_no_torch():
    code = "import sys; from flood_cli.cli import app; import flood_cli.config, flood_cli.runs; print('torch' in sys.modules, 'transformers' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]
    result = subprocess.run([sys.executable, "-m", "flood_cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout and "compare" in result.stdout


def test_train_prints_the_run_folder_and_best_loss(config_file, tmp_path):
    result = invoke("train", "--config", config_file, "--quiet", "--epochs", "1", "--name", "first")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "first"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result.stdout.splitlines() == [
        f"run folder: {run_dir}",
        f"best val_loss: {summary['best_val_loss']:.6f} (epoch 1, step {summary['best_step']})",
    ]


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


def test_alternate_mode_from_flags(config_file, tmp_path):
    result = invoke("train", "-c", config_file, "-q", "--mode", "alternate", "--lr", "1e-3", "--ascent-lr", "1e-4", "--epochs", "1", "--name", "alt")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs" / "alt" / "summary.json").read_text())
    assert (summary["mode"], summary["ascent_lr"], summary["b"]) == ("alternate", 1e-4, None)


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
    (["--set", "train.lrr=1"], "error: config error in {cfg}: unknown key 'train.lrr'; did you mean 'lr'?"),
    (["--set", "epochs"], "error: --set 'epochs': expected section.key=value, e.g. --set train.epochs=5"),
    (["--set", "train.batch_size=many"], "error: config error in {cfg}: train.batch_size: input should be a valid integer, unable to parse string as an integer (got 'many')"),
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

    config["data"]["train_file"] = str(Path(__file__).resolve().parents[1] / "data" / "spam-assassin-small.csv")
    config["data"]["text_column"] = "body"
    result = invoke("train", "-c", write_config(tmp_path, config), "-q")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: train data has no column 'body' (columns: text, label, group); set data.text_column"


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
