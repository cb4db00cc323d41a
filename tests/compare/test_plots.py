"""`flood compare --plot`: the PNG is written, readable for 2 to 20 runs, and matplotlib
is loaded only when a plot is asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flood_cli.compare.command import build_report, compare_command
from flood_cli.compare.plots import _hidden_under, _legend_label, group_colours
from flood_cli.core.errors import FloodError
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
        "import sys\nfrom pathlib import Path\nfrom flood_cli.compare.command import compare_command\n"
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


# ---------------------------------------------------------------------------
# Seed groups as bands, a zoom that zooms, flood levels, markers that stay visible


def write_seed_groups(root: Path, stuck_high: bool = False) -> None:
    """Baseline, flooding b = 0.1 and iflood b = 0.05, three seeds each (best at epoch 4),
    and with ``stuck_high`` a flooding b = 0.3 group that never learns."""
    for seed in (1, 2, 3):
        for name, extra, config in (
            ("base", 0.0, {}),
            ("flood", 0.02, {"mode": "flooding", "b": 0.1}),
            ("iflood", 0.01, {"mode": "iflood", "b": 0.05}),
        ):
            best = 0.17 + extra + 0.02 * seed
            write_run(root, f"{name}-s{seed}", val_losses=(0.62, 0.45, best + 0.08, best, best + 0.05), seed=seed, epochs=5,
                      train_losses=(0.6, 0.4, 0.2, 0.1, 0.05), **config)
        if stuck_high:
            write_run(root, f"stuck-s{seed}", val_losses=(0.66, 0.64, 0.62, 0.60 + 0.005 * seed, 0.61), seed=seed, epochs=5,
                      mode="flooding", b=0.3)


def figure_of(root: Path, **options):
    from flood_cli.compare.plots import build_figure

    report = build_report([root])
    figure, notes = build_figure(report, **options)
    return report, figure, notes


def group_id(report, label_start: str) -> str:
    return next(group.id for group in report.groups if group.label.startswith(label_start))


def test_seed_groups_are_drawn_as_a_mean_and_a_band_by_default(tmp_path):
    from matplotlib.collections import LineCollection, PolyCollection

    write_seed_groups(tmp_path)
    write_run(tmp_path, "alone", val_losses=(0.6, 0.5, 0.4, 0.35, 0.3), seed=1, epochs=5, lr=1e-5)  # one seed: a line
    report, figure, notes = figure_of(tmp_path)
    zoom = figure.axes[1]
    assert sorted(notes.banded) == sorted(group_id(report, label) for label in ("baseline lr=2e-05", "flooding", "iflood"))
    assert sum(isinstance(c, PolyCollection) for c in zoom.collections) == 3  # one ±sd band per group of seeds
    mean_lines = [line for line in zoom.get_lines() if line.get_linestyle() == "-"]
    assert len(mean_lines) == 3  # the means; each seed is a thin line in a collection
    baseline_mean = next(line for line in mean_lines if list(line.get_ydata())[3] == pytest.approx(0.21))
    assert list(baseline_mean.get_ydata())[3] == pytest.approx((0.19 + 0.21 + 0.23) / 3)
    _, figure, notes = figure_of(tmp_path, seeds_as="lines")
    assert notes.banded == [] and not any(isinstance(c, PolyCollection) for c in figure.axes[1].collections)
    assert sum(len(c.get_segments()) for c in figure.axes[1].collections if isinstance(c, LineCollection)) == 10


def test_the_zoomed_panel_leaves_a_group_that_stays_high_above_it(tmp_path):
    write_seed_groups(tmp_path, stuck_high=True)
    report, figure, notes = figure_of(tmp_path)
    stuck = group_id(report, "flooding b=0.3")
    low, high = figure.axes[1].get_ylim()
    assert notes.above_zoom == [stuck] and (low, high) == notes.zoom_range
    assert low < 0.19 and 0.25 < high < 0.605  # the better groups' minima (0.19-0.25) fill the panel
    assert [text.get_text() for text in figure.axes[1].texts] == [f"{stuck} above (best 0.605) ↑"]
    assert figure.axes[0].get_ylim()[1] > 0.66  # the full panel still shows everything


def test_zoom_range():
    from flood_cli.compare.plots import zoom_range

    low, high, above = zoom_range({"g1": [0.6, 0.3, 0.17, 0.2], "g2": [0.62, 0.61, 0.6]})
    assert above == ["g2"] and low < 0.17 < high < 0.6
    low, high, above = zoom_range({"g1": [0.9, 0.8142, 0.83], "g2": [0.9, 0.8098, 0.82], "g3": [0.9, 0.7834, 0.80]})
    assert above == [] and low < 0.7834 and 0.8142 < high < 0.9
    low, high, above = zoom_range({"g1": [0.5, 0.5]})  # flat: still a range
    assert low < 0.5 < high and above == []
    assert zoom_range({"g1": []}) is None


def test_flood_levels_are_horizontal_lines_in_the_group_colour(tmp_path):
    write_seed_groups(tmp_path)
    write_run(tmp_path, "alt", seed=1, mode="alternate", lr=1e-3, ascent_lr=1e-4)
    report, figure, notes = figure_of(tmp_path)
    flood, iflood = group_id(report, "flooding"), group_id(report, "iflood")
    assert notes.flood_levels == {flood: 0.1, iflood: 0.05}
    loss_axes = figure.axes[0]
    colours = {group.id: colour for group, colour in zip(report.groups, group_colours(len(report.groups)), strict=True)}
    levels = {
        line.get_ydata()[0]: line.get_color() for line in loss_axes.get_lines()
        if list(line.get_xdata()) == [0, 1] and len(set(line.get_ydata())) == 1  # axhline: across the panel
    }
    assert levels == {0.1: colours[flood], 0.05: colours[iflood]}
    assert sorted(text.get_text() for text in loss_axes.texts) == ["b=0.05", "b=0.1"]


def _markers(axes, marker: str = "o") -> list[tuple[float, float]]:
    return [(x, y) for line in axes.get_lines() if line.get_marker() == marker for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)]


def _apart_on_the_image(axes, points: list[tuple[float, float]], size_pt: float) -> bool:
    import math

    shown = [axes.transData.transform(point) for point in points]
    size = size_pt * axes.figure.dpi / 72
    return all(math.dist(a, b) >= size - 1e-6 for i, a in enumerate(shown) for b in shown[i + 1:])


def test_best_markers_at_one_evaluation_do_not_hide_each_other(tmp_path):
    write_seed_groups(tmp_path)  # every run is best at epoch 4, the bests 0.01 to 0.02 apart
    _, figure, _ = figure_of(tmp_path)
    markers = [line for line in figure.axes[1].get_lines() if line.get_marker() == "o"]
    assert len(markers) == 3 and all(line.get_markeredgecolor() == "black" for line in markers)
    points = _markers(figure.axes[1])
    assert len(points) == 9 and all(abs(x - 4) < 0.2 for x, _ in points)
    assert _apart_on_the_image(figure.axes[1], points, 6)


def test_best_markers_sit_on_the_best_points_unless_two_collide(tmp_path):
    # Far apart: best at epoch 2 (0.30) and at epoch 5 (0.20): the markers are the best points.
    far = tmp_path / "far"
    write_run(far, "base-s1", val_losses=(0.5, 0.3, 0.4, 0.45, 0.5), val_accuracies=(0.6, 0.9, 0.8, 0.7, 0.65), epochs=5)
    write_run(far, "flood-s1", val_losses=(0.6, 0.5, 0.4, 0.3, 0.2), val_accuracies=(0.5, 0.6, 0.7, 0.8, 0.95), epochs=5, mode="flooding", b=0.1)
    _, figure, _ = figure_of(far)
    for axes in figure.axes[:2]:
        assert sorted(_markers(axes)) == [(2.0, 0.3), (5.0, 0.2)]
    assert sorted(_markers(figure.axes[2], "*")) == [(2.0, 0.9), (5.0, 0.95)]
    # Colliding: both best at epoch 3 with losses 0.0001 apart: moved apart sideways.
    near = tmp_path / "near"
    write_run(near, "base-s1", val_losses=(0.5, 0.4, 0.3, 0.4, 0.5), epochs=5)
    write_run(near, "flood-s1", val_losses=(0.5, 0.4, 0.3001, 0.4, 0.5), epochs=5, mode="flooding", b=0.1)
    _, figure, _ = figure_of(near)
    points = _markers(figure.axes[0])
    assert sorted(y for _, y in points) == [0.3, 0.3001] and all(x != 3.0 and abs(x - 3) < 0.2 for x, _ in points)
    assert _apart_on_the_image(figure.axes[0], points, 6)


def test_seeds_as_must_be_band_or_lines(tmp_path):
    write_runs(tmp_path / "runs", 2, 1)
    with pytest.raises(FloodError, match=r"^--seeds-as 'dots' is not a choice; use band"):
        compare_command([tmp_path / "runs"], plot=tmp_path / "c.png", seeds_as="dots")
    output = compare_command([tmp_path / "runs"], plot=tmp_path / "c.png", seeds_as="lines")
    assert output.text.endswith(f"wrote {tmp_path / 'c.png'}")


def test_a_b_curve_draws_each_mode_apart_and_plots_it(tmp_path):
    """Flooding and iFlood at the same b are two curves, not one line through both."""
    from flood_cli.compare.plots import plot_sweep_curve, sweep_curves

    for seed in (1, 2):
        write_run(tmp_path, f"base-s{seed}", val_losses=(0.80, 0.85), seed=seed)
        for b in (0.1, 0.2):
            write_run(tmp_path, f"flood-b{b}-s{seed}", val_losses=(0.70 + b, 0.9), seed=seed, mode="flooding", b=b)
        write_run(tmp_path, f"iflood-s{seed}", val_losses=(0.75, 0.9), seed=seed, mode="iflood", b=0.1)
    report = build_report([tmp_path])
    curves = sweep_curves(report, "train.b")
    assert {label: sorted(x for x, _ in points) for label, points in curves.items()} == {"flooding": [0.1, 0.2], "iflood": [0.1]}
    assert {g.settings["train.mode"] for _, g in curves["iflood"]} == {"iflood"}
    assert image_size(plot_sweep_curve(report, "train.b", tmp_path / "b.png"))[0] > 500


def test_a_b_curve_draws_the_baseline_its_groups_are_compared_with(tmp_path, monkeypatch):
    """An SGD baseline in the same sweep (backstitch's control) is not drawn beside AdamW floods."""
    from matplotlib.axes import Axes

    from flood_cli.compare.plots import plot_sweep_curve

    for seed in (1, 2):
        write_run(tmp_path, f"base-s{seed}", val_losses=(0.80, 0.85), seed=seed)
        write_run(tmp_path, f"sgd-s{seed}", val_losses=(0.60, 0.65), seed=seed, lr=0.2, train={"optimizer": "sgd"})
        write_run(tmp_path, f"flood-s{seed}", val_losses=(0.70, 0.9), seed=seed, mode="flooding", b=0.1)
    drawn = []
    original = Axes.axhline
    monkeypatch.setattr(Axes, "axhline", lambda self, y=0, *a, **k: drawn.append((round(y, 4), k.get("label"))) or original(self, y, *a, **k))
    plot_sweep_curve(build_report([tmp_path]), "train.b", tmp_path / "b.png")
    assert [label for _, label in drawn] == ["baseline, 2 seeds"] * 2 and drawn[0][0] == 0.8  # loss, accuracy panels


def test_b_curve_accuracy_stays_within_0_and_1_and_thin_points_are_named(tmp_path):
    """Two seeds per flood level: the 95 % band is mean ± 12.7 sd/√2, past 1 for accuracy.
    The axis and the bands stop at 1 (and at 0); the figure says which points have too few
    seeds for a band worth reading."""
    import math

    from matplotlib.collections import PolyCollection

    from flood_cli.compare.plots import build_sweep_curve

    for seed, accuracy in ((1, 0.90), (2, 0.99), (3, 0.95)):
        write_run(tmp_path, f"base-s{seed}", val_losses=(0.80, 0.70, 0.75), val_accuracies=(0.5, accuracy, 0.6), seed=seed)
    for seed, accuracy in ((1, 0.90), (2, 0.99)):
        write_run(tmp_path, f"flood-b0.3-s{seed}", val_losses=(0.80, 0.72, 0.75), val_accuracies=(0.5, accuracy, 0.6),
                  seed=seed, mode="flooding", b=0.3)
    write_run(tmp_path, "flood-b0.5-s1", val_losses=(0.80, 0.74, 0.75), val_accuracies=(0.5, 0.97, 0.6), seed=1,
              mode="flooding", b=0.5)
    for seed, accuracy in ((1, 0.93), (2, 0.94), (3, 0.95)):
        write_run(tmp_path, f"flood-b0.1-s{seed}", val_losses=(0.80, 0.71, 0.75), val_accuracies=(0.5, accuracy, 0.6),
                  seed=seed, mode="flooding", b=0.1)
    # By hand: b = 0.3's band reaches 0.945 + 12.706 · sd(0.90, 0.99)/√2 = 1.52, far past 1.
    sd = math.sqrt(((0.90 - 0.945) ** 2 + (0.99 - 0.945) ** 2) / 1)
    assert 0.945 + 12.706 * sd / math.sqrt(2) > 1.5
    figure, few = build_sweep_curve(build_report([tmp_path]), "train.b")
    loss_axes, accuracy_axes = figure.axes
    low, high = accuracy_axes.get_ylim()
    assert 0.0 <= low < 0.90 and high == 1.0  # the axis stops at 1 (it ran to 1.1 and beyond)
    bands = [c for c in accuracy_axes.collections if isinstance(c, PolyCollection)]
    ys = [y for band in bands for path in band.get_paths() for _, y in path.vertices]
    assert bands and max(ys) <= 1.0 and min(ys) >= 0.0
    assert max(ys) == 1.0  # b = 0.3's band, clipped
    # The baseline's band: 3 seeds, 0.9467 + 4.303 · 0.0451/√3 = 1.059, clipped to 1 too.
    (span,) = accuracy_axes.patches
    assert (span.get_y(), span.get_y() + span.get_height()) == pytest.approx(
        (0.9467 - 4.303 * 0.04509 / math.sqrt(3), 1.0), abs=1e-3)
    assert loss_axes.get_ylim()[0] >= 0.0
    assert few == ["b = 0.3", "b = 0.5"]  # b = 0.1 and the baseline have 3 seeds
    note = " ".join(figure.get_supxlabel().split())
    assert note == ("b = 0.3: fewer than 3 seeds, band too wide to read (95 % t interval with 1 df: ± 12.7 sd/√2); "
                    "clipped to the axes; b = 0.5: one seed, no band. Run more seeds.")
    assert image_size(__import__("flood_cli.compare.plots", fromlist=["plot_sweep_curve"]).plot_sweep_curve(
        build_report([tmp_path]), "train.b", tmp_path / "b.png"))[0] > 500
    assert [text.get_text() for text in loss_axes.get_legend().get_texts()] == ["baseline, 3 seeds", "b, mean of 1–3 seeds"]
