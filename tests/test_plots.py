"""`flood compare --plot`: the PNG is written, readable for 2 to 20 runs, and matplotlib
is loaded only when a plot is asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flood_cli.compare import build_report, compare_command
from flood_cli.errors import FloodError
from flood_cli.plots import _hidden_under, _legend_label, group_colours
from tests.run_factory import write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_runs(root: Path, count: int, groups: int) -> None:
    for index in range(count):
        group = index % groups
        mode, b = ("baseline", None) if group == 0 else ("flooding", round(0.05 * group, 2))
        best = 0.80 - 0.002 * group + 0.003 * (index // groups)
        write_run(
            root, f"run-{index:02d}", val_losses=(best + 0.03, best, best + 0.02, best + 0.05),
            val_accuracies=(0.80, 0.83, 0.85, 0.86), epochs=4, seed=index // groups, mode=mode, b=b,
        )


def image_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@pytest.mark.parametrize(("count", "groups", "x_axis"), [(2, 2, "epoch"), (20, 6, "epoch"), (20, 20, "step")])
def test_plot_is_written(tmp_path, count, groups, x_axis):
    write_runs(tmp_path / "runs", count, groups)
    output = compare_command([tmp_path / "runs"], plot=tmp_path / "curves.png", x_axis=x_axis)
    width, height = image_size(tmp_path / "curves.png")
    assert width > 1500 and 500 < height < 800  # three panels side by side, legend at the right
    assert output.text.endswith(f"wrote {tmp_path / 'curves.png'}")


@pytest.mark.parametrize("count", [1, 2, 10, 11, 20, 35])
def test_group_colours_are_distinct(count):
    colours = group_colours(count)
    assert len(colours) == count and len(set(colours)) == count


def test_plot_to_an_unwritable_place_is_an_error(tmp_path):
    write_runs(tmp_path / "runs", 2, 1)
    with pytest.raises(FloodError, match=r"^cannot write plot .*missing.*curves\.png"):
        compare_command([tmp_path / "runs"], plot=tmp_path / "missing" / "curves.png")


def test_matplotlib_is_loaded_only_for_a_plot(tmp_path):
    write_runs(tmp_path / "runs", 2, 1)
    code = (
        "import sys\nfrom pathlib import Path\nfrom flood_cli.compare import compare_command\n"
        f"compare_command([Path({str(tmp_path / 'runs')!r})])\n"
        "print('matplotlib' in sys.modules)\n"
        f"compare_command([Path({str(tmp_path / 'runs')!r})], plot=Path({str(tmp_path / 'c.png')!r}))\n"
        "print('matplotlib' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_legend_names_seeds_runs_and_a_group_drawn_under_another(tmp_path):
    # b = 0 flooding follows the baseline's curve exactly: its colour would just be missing.
    write_run(tmp_path, "base", val_losses=(0.80, 0.85), seed=1)
    write_run(tmp_path, "base-again", val_losses=(0.80, 0.85), seed=1)
    write_run(tmp_path, "b0", val_losses=(0.80, 0.85), seed=1, mode="flooding", b=0.0)
    write_run(tmp_path, "b5", val_losses=(0.70, 0.75), seed=1, mode="flooding", b=5.0)
    groups = build_report([tmp_path]).groups
    assert [group.label for group in groups] == ["flooding b=5 lr=2e-05", "flooding b=0 lr=2e-05", "baseline lr=2e-05"]
    hidden = _hidden_under(groups)
    assert hidden == {"g2": "g3"}
    labels = [_legend_label(group, hidden.get(group.id), wrap=True) for group in groups]
    assert labels == [
        "g1 flooding b=5 lr=2e-05 (1 seed)",
        "g2 flooding b=0 lr=2e-05 (1 seed)\n    same curves as g3, drawn under it",
        "g3 baseline lr=2e-05 (2 runs, 1 seed)",
    ]
    assert _legend_label(groups[2], None, wrap=False) == "g3 baseline lr=2e-05 (2 runs, 1 seed)"


@pytest.mark.parametrize(("given", "written"), [("curves", "curves.png"), ("curves.", "curves.png"), ("curves.svg", "curves.svg")])
def test_the_file_written_is_the_one_reported(tmp_path, given, written):
    """matplotlib adds .png to a name without a suffix; `wrote curves` named a file that is not there."""
    write_runs(tmp_path / "runs", 2, 2)
    output = compare_command([tmp_path / "runs"], plot=tmp_path / given)
    assert output.text.endswith(f"wrote {tmp_path / written}")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["runs", written])


def test_losses_beyond_any_axis_are_left_out_of_the_curves(tmp_path):
    """A loss of 1e308 made matplotlib's axis margins overflow ("arange: cannot compute length")."""
    write_runs(tmp_path / "runs", 2, 1)
    write_run(tmp_path / "runs", "huge", val_losses=(1e308, 0.9, 1.7e308), seed=9)
    output = compare_command([tmp_path / "runs"], plot=tmp_path / "curves.png")
    assert output.text.endswith(f"wrote {tmp_path / 'curves.png'}")
    assert image_size(tmp_path / "curves.png")[0] > 1500
