"""Loss and accuracy curves of compared runs, written to an image file (`flood compare --plot`).

Imported only when a plot is asked for, so that `flood compare` stays fast without it.
Uses matplotlib's object-oriented API on the Agg canvas: no display, no pyplot state,
and no change to the backend of a program that imports this module.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flood_cli.compare.model import Group, Report, Row, Run
from flood_cli.compare.stats import student_t_quantile
from flood_cli.compare.tables import seeds_text
from flood_cli.core.errors import FloodError
from flood_cli.core.modes import FLOOD_LEVEL_MODES

# More groups than this would make the legend taller than the figure; the rest are
# still drawn, and the legend says how many it leaves out.
MAX_LEGEND_GROUPS = 30
# Runs beyond this many per plot are drawn thinner and fainter so the figure stays legible.
MANY_RUNS = 12
# With up to this many groups, legend labels wrap at LEGEND_WIDTH characters so that long
# labels do not squeeze the panels; more groups keep one line each to fit the height.
WRAP_UP_TO_GROUPS = 10
LEGEND_WIDTH = 40
# A wrapped label keeps this many lines of settings; the table has the rest.
LABEL_LINES = 3


def group_colours(count: int) -> list[Any]:
    """Distinct colours: tab10, then tab20 reordered so neighbours differ in hue."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        tab20 = [colormaps["tab20"](i) for i in range(20)]
        return (tab20[0::2] + tab20[1::2])[:count]
    turbo = colormaps["turbo"]
    return [turbo(0.05 + 0.9 * i / (count - 1)) for i in range(count)]


# Values beyond this are left out of the curves like nan and inf: matplotlib cannot scale
# an axis out to 1e308 (its margins overflow), and no loss or step count gets near it.
PLOTTABLE_UP_TO = 1e100


def _xy(row: Row | None, x_key: str, y_key: str) -> tuple[float, float] | None:
    """The row's (x, y) when both are there, finite and within PLOTTABLE_UP_TO; else None."""
    if row is None:
        return None
    x, y = row.get(x_key), row.get(y_key)
    if x is None or y is None or not all(math.isfinite(value) and abs(value) <= PLOTTABLE_UP_TO for value in (x, y)):
        return None
    return x, y


def _plottable(row: Row | None, x_key: str, y_key: str) -> bool:
    return _xy(row, x_key, y_key) is not None


def _pairs(rows: Iterable[Row | None], x_key: str, y_key: str) -> list[tuple[float, float]]:
    """The (x, y) of the plottable rows, in order."""
    return [xy for row in rows if (xy := _xy(row, x_key, y_key)) is not None]


def _points(run: Run, x_key: str, y_key: str) -> list[tuple[float, float]]:
    return _pairs(run.rows, x_key, y_key)


def _required(row: Row, key: str) -> float:
    """``row[key]`` for a column the reader guarantees (rows without epoch or val_loss are dropped)."""
    value = row[key]
    if value is None:
        raise TypeError(f"metrics row without {key}")
    return value


@dataclass
class FigureNotes:
    """What `build_figure` decided, for its caller and the tests."""

    zoom_range: tuple[float, float] | None = None  # the zoomed panel's y limits
    above_zoom: list[str] = field(default_factory=list)  # groups whose curves stay above it
    banded: list[str] = field(default_factory=list)  # groups drawn as mean ± sd
    flood_levels: dict[str, float] = field(default_factory=dict)  # group -> b drawn


def plot_runs(report: Report, path: Path, x_axis: str = "epoch", seeds_as: str = "band") -> Path:
    """Write the curves of `build_figure` to ``path``; returns the file written (``path``,
    with ``.png`` added when it has no suffix)."""
    path = image_path(path)
    figure, _ = build_figure(report, x_axis=x_axis, seeds_as=seeds_as)
    try:
        figure.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise FloodError(f"cannot write plot {path}: {exc}; pass a writable .png path to --plot") from None
    return path


def build_figure(report: Report, x_axis: str = "epoch", seeds_as: str = "band") -> tuple[Any, FigureNotes]:
    """Validation loss (solid) and training loss (dashed), the validation loss zoomed, and
    validation accuracy (and ECE when runs log it).

    One colour per seed group. With ``seeds_as="band"`` a group of two or more seeds is
    drawn as its mean curve over seeds with a ±1 sd band, each seed a thin line; with
    ``"lines"`` (and for one-seed groups) one line per run. A circle marks each run's best
    validation loss, a star its best validation accuracy, each at its exact point; only
    markers that would overlap on the image are moved apart sideways. Flooding and iflood
    groups show their flood level b as a dashed horizontal line on the training-loss panel.
    """
    from matplotlib.artist import Artist
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    notes = FigureNotes()
    groups: Sequence[Group] = [group for group in report.groups if group.runs]
    colours = dict(zip((group.id for group in groups), group_colours(len(groups)), strict=True))
    many = len(report.runs) > MANY_RUNS
    line_width, alpha = (1.0, 0.7) if many else (1.6, 0.9)

    # Calibration (newer runs log it): why validation loss can rise while accuracy rises.
    calibrated = any(_points(run, x_axis, "val_ece") for run in report.runs)
    figure = Figure(figsize=(24 if calibrated else 19, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    # The training loss falls far below the validation loss, which squeezes the
    # differences between runs' validation curves; the middle panel zooms in on them.
    panels = figure.subplots(1, 4 if calibrated else 3)
    loss_axes, zoom_axes, accuracy_axes = panels[:3]
    ece_axes = panels[3] if calibrated else None
    zoom_values: dict[str, list[float]] = {}
    for group in groups:
        colour = colours[group.id]
        banded = seeds_as == "band" and len(_seed_curves(group.runs, x_axis, "val_loss")) >= 2
        if banded:
            notes.banded.append(group.id)
        zoom_values[group.id] = _draw_group(
            group.runs, (loss_axes, zoom_axes, accuracy_axes, ece_axes), x_axis, colour, line_width, alpha,
            banded=banded,
        )
        b = group.runs[0].b
        if group.mode in FLOOD_LEVEL_MODES and b is not None and math.isfinite(b) and abs(b) <= PLOTTABLE_UP_TO:
            notes.flood_levels[group.id] = b
    _draw_flood_levels(loss_axes, notes.flood_levels, colours)
    if calibrated:
        panels[3].set(xlabel="epoch" if x_axis == "epoch" else "optimizer step", ylabel="ECE", title="validation calibration error (15 bins)")

    x_label = "epoch" if x_axis == "epoch" else "optimizer step"
    loss_axes.set(xlabel=x_label, ylabel="loss", title="validation loss (solid), training loss (dashed)")
    zoom_axes.set(xlabel=x_label, ylabel="validation loss", title="validation loss, zoomed on the best runs")
    accuracy_axes.set(xlabel=x_label, ylabel="validation accuracy", title="validation accuracy")
    whole_epochs = x_axis == "epoch" and all(_required(row, "epoch").is_integer() for run in report.runs for row in run.rows)
    for axes in panels:
        axes.autoscale_view()  # line collections do not rescale the axes by themselves
        axes.grid(True, alpha=0.3)
        if whole_epochs:  # no "1.5" ticks between evaluations that happen once per epoch
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    zoom = zoom_range(zoom_values)
    if zoom is not None:
        low, high, above = zoom
        zoom_axes.set_ylim(low, high)
        notes.zoom_range, notes.above_zoom = (low, high), above
        for line, group_id in enumerate(above):
            best = min(zoom_values[group_id])
            zoom_axes.text(0.98, 0.97 - 0.065 * line, f"{group_id} above (best {best:.4g}) ↑", transform=zoom_axes.transAxes,
                           ha="right", va="top", fontsize="small", color=colours[group_id],
                           bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1.5))
    figure.suptitle(f"flood compare: {len(report.runs)} runs in {len(groups)} seed groups")

    hidden_under = _hidden_under(groups)
    wrap = len(groups) <= WRAP_UP_TO_GROUPS
    handles: list[Artist] = [
        Line2D([], [], color=colours[group.id], linewidth=2.5, label=_legend_label(group, hidden_under.get(group.id), wrap))
        for group in groups[:MAX_LEGEND_GROUPS]
    ]
    if len(groups) > MAX_LEGEND_GROUPS:
        handles.append(Line2D([], [], linestyle="none", label=f"… {len(groups) - MAX_LEGEND_GROUPS} more groups"))
    handles += [
        Line2D([], [], color="black", linestyle="-", label="validation loss"),
        Line2D([], [], color="black", linestyle="--", label="training loss"),
    ]
    if notes.banded:
        from matplotlib.patches import Patch

        handles += [
            Patch(facecolor="0.5", alpha=0.3, edgecolor="none", label="mean over seeds ± sd"),
            Line2D([], [], color="black", linewidth=0.6, alpha=0.5, label="one seed"),
        ]
    if notes.flood_levels:
        handles.append(Line2D([], [], color="black", linestyle=FLOOD_DASHES, linewidth=1.2, label=f"flood level b ({', '.join(FLOOD_LEVEL_MODES)})"))
    handles += [
        Line2D([], [], color="black", marker="o", linestyle="none", label="best validation loss"),
        Line2D([], [], color="black", marker="*", markersize=11, linestyle="none", label="best validation accuracy"),
    ]
    figure.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    # A tall legend gets a taller figure rather than being cut off at the bottom.
    legend_lines = sum(str(handle.get_label()).count("\n") + 1 for handle in handles) + len(handles) // 2
    figure.set_figheight(max(5.5, 0.15 * legend_lines + 0.8))
    figure.draw_without_rendering()  # the final layout: where each marker lands on the image
    for axes in panels:
        separate_markers(axes)
    return figure, notes


# Dash-dot, so that it does not read as a training-loss curve (dashed).
FLOOD_DASHES = (0, (7, 2, 1.5, 2))
# The zoomed panel leaves out groups whose best is further from the best of all than
# this many times the typical group's distance (or than the best loss itself).
ZOOM_OUTLIER_FACTOR = 3.0
# ... and reaches up to this quantile of the curves it keeps.
ZOOM_QUANTILE = 0.6


def zoom_range(values: dict[str, list[float]]) -> tuple[float, float, list[str]] | None:
    """The zoomed panel's y limits, and the groups left above it.

    ``values``: each group's plotted validation losses. The bottom is the lowest of all
    (the best run's best); groups whose best lies far above the others' (a setting that
    never learns, stuck at the majority class) are left above the panel, so that they
    do not flatten the differences between the better ones: a group is kept when its
    best is within max(best, 3 × (lower median of the groups' bests − best)) of the best.
    The top is the higher of the kept groups' worst best (plus 15 % of their spread) and
    the 60 % quantile of the kept curves, so that the panel shows the minima and how the
    curves reach them. None when nothing is plotted.
    """
    bests = {group: min(points) for group, points in values.items() if points}
    if not bests:
        return None
    low = min(bests.values())
    ordered = sorted(bests.values())
    typical = ordered[(len(ordered) - 1) // 2]  # the lower median: robust to one group stuck high
    cutoff = low + max(abs(low), ZOOM_OUTLIER_FACTOR * (typical - low))
    kept = [group for group, best in bests.items() if best <= cutoff]
    above = sorted((group for group in bests if group not in kept), key=lambda g: int(g[1:]) if g[1:].isdigit() else 0)
    points = sorted(value for group in kept for value in values[group])
    top_best = max(bests[group] for group in kept)
    quantile = points[min(len(points) - 1, int(ZOOM_QUANTILE * len(points)))]
    high = min(max(top_best + 0.15 * (top_best - low), quantile), points[-1])
    if high - low <= 1e-12 * max(1.0, abs(low)):
        high = low + max(0.05 * abs(low), 1e-3)
    pad = 0.06 * (high - low)
    return low - pad, high + pad, above


def _draw_flood_levels(axes: Any, levels: dict[str, float], colours: dict[str, Any]) -> None:
    """b as a dashed horizontal line in the group's colour, labelled at the right; groups
    with the same b get dashes out of phase, so that each colour shows."""
    from matplotlib.transforms import blended_transform_factory

    by_level: dict[float, list[str]] = {}
    for group_id, level in levels.items():
        by_level.setdefault(level, []).append(group_id)
    transform = blended_transform_factory(axes.transAxes, axes.transData)
    for level, group_ids in by_level.items():
        period = sum(FLOOD_DASHES[1])
        for index, group_id in enumerate(group_ids):
            axes.axhline(level, color=colours[group_id], linewidth=1.2, alpha=0.9, zorder=2,
                         linestyle=(index * period / len(group_ids) if len(group_ids) > 1 else 0, FLOOD_DASHES[1]))
        axes.text(0.995, level, f"b={level:g}", transform=transform, ha="right", va="bottom", fontsize="x-small",
                  color=colours[group_ids[0]])


BEST_MARKER = "best-marker"  # the gid of the best-point marker series


def separate_markers(axes: Any) -> None:
    """Best-point markers stay at their exact points unless two would overlap on the
    image (centres closer than their mean size, in display coordinates): each such
    cluster is then spread sideways, one marker size apart, around where it was. A
    group's circle and star at one point mark one row and stay on it, the star on top."""
    import numpy as np

    lines = [line for line in axes.get_lines() if line.get_gid() == BEST_MARKER]
    scale = axes.figure.dpi / 72.0  # points to pixels
    points = []  # (line, index, display x, display y, size in pixels)
    data: list[tuple[float, float]] = []
    for line in lines:
        xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        shown = axes.transData.transform(np.column_stack([xs, ys])) if len(xs) else np.empty((0, 2))
        points += [(line, i, float(x), float(y), line.get_markersize() * scale) for i, (x, y) in enumerate(shown)]
        data += list(zip(xs.tolist(), ys.tolist(), strict=True))
    parent = list(range(len(points)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def same_row(i: int, j: int) -> bool:
        return data[i] == data[j] and points[i][0].get_color() == points[j][0].get_color() and points[i][0] is not points[j][0]

    cell = max((point[4] for point in points), default=1.0)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, (_, _, x, y, size) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        key = (int(x // cell), int(y // cell))
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in buckets.get((key[0] + dx, key[1] + dy), ()):
                    if same_row(i, j):
                        continue  # one group's circle and star at one point: one row, drawn as one
                    if math.hypot(x - points[j][2], y - points[j][3]) < (size + points[j][4]) / 2:
                        parent[root(i)] = root(j)
        buckets.setdefault(key, []).append(i)
    clusters: dict[int, list[int]] = {}
    for i in range(len(points)):
        clusters.setdefault(root(i), []).append(i)
    moved: dict[Any, tuple[Any, Any]] = {}
    for members in clusters.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: (points[i][2], lines.index(points[i][0])))
        step = max(points[i][4] for i in members)
        centre = sum(points[i][2] for i in members) / len(members)
        for rank, i in enumerate(members):
            line, index, _, y, _ = points[i]
            x = centre + (rank - (len(members) - 1) / 2.0) * step
            data_x = axes.transData.inverted().transform((x, y))[0]
            xs, ys = moved.setdefault(line, (np.asarray(line.get_xdata(), float).copy(), np.asarray(line.get_ydata(), float)))
            xs[index] = data_x
    for line, (xs, ys) in moved.items():
        line.set_data(xs, ys)


def image_path(path: Path) -> Path:
    """The file matplotlib writes for ``path``: without a suffix it adds its default
    format's (``curves`` -> ``curves.png``); made explicit here so that it is reported."""
    if os.path.splitext(str(path))[1][1:]:
        return path
    return Path(str(path).rstrip(".") + ".png")


def _legend_label(group: Group, hidden_under: str | None, wrap: bool) -> str:
    counts = [seeds_text(group)]
    if len(group.runs) != group.n_seeds:
        counts.insert(0, f"{len(group.runs)} runs")
    incomplete = sum(not run.complete for run in group.runs)
    if incomplete:
        counts.append(f"{incomplete} incomplete")
    parts = [f"{group.id} {group.label}", f"({', '.join(counts)})"]
    if hidden_under:
        parts.append(f"same curves as {hidden_under}, drawn under it")
    if not wrap:
        return " ".join(parts)
    lines = textwrap.wrap(parts[0], LEGEND_WIDTH, subsequent_indent="    ")
    if len(lines) > LABEL_LINES:
        lines = lines[:LABEL_LINES] + ["    … (settings: see the table)"]
    for part in parts[1:]:
        if len(lines[-1]) + 1 + len(part) <= LEGEND_WIDTH:
            lines[-1] += " " + part
        else:
            lines.append("    " + part)
    return "\n".join(lines)


def _hidden_under(groups: Sequence[Group]) -> dict[str, str]:
    """Groups whose validation curves all coincide with a group drawn later (on top).

    b = 0 flooding or a repeated run gives exactly the baseline's curve; without a word
    in the legend its colour would simply be missing from the figure.
    """
    drawn_by: dict[tuple, str] = {}
    for group in reversed(groups):  # later groups are drawn on top
        for run in group.runs:
            drawn_by.setdefault(_curve_key(run), group.id)
    hidden = {}
    for index, group in enumerate(groups):
        on_top = {drawn_by[_curve_key(run)] for run in group.runs}  # every run is in drawn_by
        later = {other.id for other in groups[index + 1:]}
        if len(on_top) == 1 and on_top <= later:
            hidden[group.id] = on_top.pop()
    return hidden


def _curve_key(run: Run) -> tuple:
    return tuple((row["epoch"], row["val_loss"]) for row in run.rows)


def _draw_group(
    runs: Sequence[Run],
    axes: tuple[Any, Any, Any, Any],
    x_axis: str,
    colour: Any,
    line_width: float,
    alpha: float,
    banded: bool = False,
) -> list[float]:
    """All runs of one seed group; returns the validation losses drawn on the zoomed panel.

    As lines: one line collection per panel and curve, and one marker series per kind, so
    that hundreds of runs still draw in seconds. As a band: per panel the mean over seeds
    (replicates of a seed averaged first) and a ±1 sd band, each seed a thin line, and
    incomplete runs (left out of the mean) dotted."""
    from matplotlib.collections import LineCollection

    loss_axes, zoom_axes, accuracy_axes, ece_axes = axes
    drawn: list[float] = []
    if banded:
        members = [run for run in runs if run.complete]
        for target, key, style, opacity, thin in (
            (loss_axes, "val_loss", "-", alpha, True),
            (loss_axes, "train_loss", "--", alpha * 0.8, False),
            (zoom_axes, "val_loss", "-", alpha, True),
            (accuracy_axes, "val_accuracy", "-", alpha, True),
            (ece_axes, "val_ece", "-", alpha, False),
        ):
            if target is None:
                continue
            seeds = _seed_curves(members, x_axis, key)
            xs, means, sds = _mean_curve(seeds)
            if not xs:
                continue
            if thin:
                target.add_collection(LineCollection(seeds, colors=[colour], linewidths=0.6, linestyles=style, alpha=0.45))
            target.plot(xs, means, color=colour, linewidth=line_width + 0.4, linestyle=style, alpha=opacity)
            target.fill_between(xs, [m - d for m, d in zip(means, sds, strict=True)], [m + d for m, d in zip(means, sds, strict=True)],
                                color=colour, alpha=0.18 if key != "train_loss" else 0.1, linewidth=0)
            if target is zoom_axes:
                drawn += [y for curve in seeds for _, y in curve] + means
        rest = [run for run in runs if not run.complete]
        for target, key, style in ((loss_axes, "val_loss", ":"), (zoom_axes, "val_loss", ":"), (accuracy_axes, "val_accuracy", ":")):
            curves = [curve for curve in (_points(run, x_axis, key) for run in rest) if curve]
            if curves:
                target.add_collection(LineCollection(curves, colors=[colour], linewidths=1.0, linestyles=style, alpha=0.7))
                if target is zoom_axes:
                    drawn += [y for curve in curves for _, y in curve]
    else:
        val_loss = [_points(run, x_axis, "val_loss") for run in runs]
        train_loss = [_points(run, x_axis, "train_loss") for run in runs]
        val_accuracy = [_points(run, x_axis, "val_accuracy") for run in runs]
        ece = [_points(run, x_axis, "val_ece") for run in runs] if ece_axes is not None else []
        for target, curves, style, opacity in (
            (loss_axes, val_loss, "-", alpha),
            (loss_axes, train_loss, "--", alpha * 0.8),
            (zoom_axes, val_loss, "-", alpha),
            (accuracy_axes, val_accuracy, "-", alpha),
            (ece_axes, ece, "-", alpha),
        ):
            curves = [curve for curve in curves if curve]
            if curves and target is not None:
                target.add_collection(LineCollection(curves, colors=[colour], linewidths=line_width, linestyles=style, alpha=opacity))
        drawn += [y for curve in val_loss for _, y in curve]

    marker_style = dict(color=colour, markeredgecolor="black", markeredgewidth=0.7, linestyle="none", gid=BEST_MARKER)
    best_rows = [run.best_row for run in runs if _plottable(run.best_row, x_axis, "val_loss")]
    best_loss = _pairs(best_rows, x_axis, "val_loss")
    for target in (loss_axes, zoom_axes):
        target.plot([x for x, _ in best_loss], [y for _, y in best_loss],
                    marker="o", markersize=6, zorder=3, **marker_style)
    at_best_loss = _pairs(best_rows, x_axis, "val_accuracy")
    accuracy_axes.plot([x for x, _ in at_best_loss], [y for _, y in at_best_loss],
                       marker="o", markersize=6, zorder=3, **marker_style)
    best_accuracy = _pairs((run.best_accuracy_row for run in runs), x_axis, "val_accuracy")
    accuracy_axes.plot([x for x, _ in best_accuracy], [y for _, y in best_accuracy],
                       marker="*", markersize=11, zorder=4, **marker_style)
    return drawn


def _seed_curves(runs: Sequence[Run], x_axis: str, key: str) -> list[list[tuple[float, float]]]:
    """One curve per seed of the complete runs: replicates of a seed averaged point by point."""
    by_seed: dict[Any, dict[float, list[float]]] = {}
    for run in runs:
        if not run.complete:
            continue
        seed = run.seed if run.seed is not None else str(run.path)
        for x, y in _points(run, x_axis, key):
            by_seed.setdefault(seed, {}).setdefault(x, []).append(y)
    return [sorted((x, sum(ys) / len(ys)) for x, ys in points.items()) for points in by_seed.values() if points]


def _mean_curve(curves: Sequence[Sequence[tuple[float, float]]]) -> tuple[list[float], list[float], list[float]]:
    """Mean and sample sd over the curves at each x (sd 0 where a single curve has it)."""
    at: dict[float, list[float]] = {}
    for curve in curves:
        for x, y in curve:
            at.setdefault(x, []).append(y)
    xs = sorted(at)
    means = [sum(at[x]) / len(at[x]) for x in xs]
    sds = [
        math.sqrt(sum((y - mean) ** 2 for y in at[x]) / (len(at[x]) - 1)) if len(at[x]) > 1 else 0.0
        for x, mean in zip(xs, means, strict=True)
    ]
    return xs, means, sds


def _mean_and_half_width(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half width of its 95 % Student t interval (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, student_t_quantile(0.975, len(values) - 1) * sd / math.sqrt(len(values))


def _per_seed(group: Group, value: Any) -> list[float]:
    """One figure per seed of a group's complete runs (replicates of a seed averaged)."""
    by_seed: dict[Any, list[float]] = {}
    for run in group.runs:
        figure = value(run)
        if run.counts_in_statistics and figure is not None and math.isfinite(figure):
            by_seed.setdefault(run.seed if run.seed is not None else str(run.path), []).append(figure)
    return [sum(v) / len(v) for v in by_seed.values()]


# A point of the b-curve with fewer seeds than this has a band (95 % t interval) too wide
# to read: with 2 seeds t has 1 df and the half width is 12.7 sd/√2, about 9 sd.
READABLE_BAND_SEEDS = 3
# Accuracy is a share: its axis and bands stay within [0, 1]; loss is never below 0.
ACCURACY_RANGE = (0.0, 1.0)


def plot_sweep_curve(report: Report, key: str, path: Path) -> Path | None:
    """Write the figure of `build_sweep_curve` to ``path``; None when no group varies ``key``."""
    built = build_sweep_curve(report, key)
    if built is None:
        return None
    figure, _ = built
    target = image_path(path)
    try:
        figure.savefig(target, dpi=120)
    except (OSError, ValueError) as exc:
        raise FloodError(f"cannot write the plot {target}: {exc}; check the folder and the file suffix") from None
    return target


def build_sweep_curve(report: Report, key: str) -> tuple[Any, list[str]] | None:
    """Best validation loss and best validation accuracy against a swept value (``key``,
    e.g. ``train.b``): per value, the mean over seeds with its 95 % interval as a band
    and each seed as a dot; the baseline group as a horizontal line and band. Settings
    swept besides ``key`` get a curve each. Accuracy bands and axis are clipped to
    [0, 1], loss bands and axis to 0 and above. Points (and baselines) with fewer than 3
    seeds are named in a note on the figure: their band is too wide to read (or, with
    one seed, there is none). Returns the figure and those points; None when no group
    varies ``key``."""
    from matplotlib.figure import Figure

    name = key.split(".")[-1]
    curves = sweep_curves(report, key)
    # The baselines the curves' groups are compared with (not an SGD baseline beside
    # AdamW flood levels, say); all of them when none is chosen.
    on_curves = {id(group) for points in curves.values() for _, group in points}
    chosen = {id(c.baseline) for c in report.comparisons if id(c.group) in on_curves}
    baselines = [g for g in report.groups if g.is_baseline and g.n_seeds and (not chosen or id(g) in chosen)]
    if not curves:
        return None
    figure = Figure(figsize=(7.5, 7.0), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(2, 1, sharex=True)
    panels = (
        (loss_axes, "best validation loss", lambda run: run.best_val_loss, (0.0, math.inf)),
        (accuracy_axes, "best validation accuracy",
         lambda run: run.best_accuracy_row["val_accuracy"] if run.best_accuracy_row else None, ACCURACY_RANGE),
    )
    xs_all = [x for points in curves.values() for x, _ in points]
    colours = group_colours(len(curves) + len(baselines))
    few_seeds: dict[str, int] = {}  # "b = 0.3" or "baseline" -> seeds, for points under READABLE_BAND_SEEDS

    def clip(value: float, bounds: tuple[float, float]) -> float:
        return min(max(value, bounds[0]), bounds[1])

    for axes, ylabel, figure_of, bounds in panels:
        for index, baseline in enumerate(baselines):
            values = _per_seed(baseline, figure_of)
            if not values:
                continue
            mean, half = _mean_and_half_width(values)
            colour = colours[len(curves) + index]
            differing = _differing_label(baseline.settings, [g.settings for g in baselines], key) if len(baselines) > 1 else ""
            label = "baseline" + (f" ({differing})" if differing else "") + f", {len(values)} seeds"
            if len(values) < READABLE_BAND_SEEDS:
                few_seeds["baseline" + (f" ({differing})" if differing else "")] = len(values)
            axes.axhline(mean, color=colour, linestyle="--", linewidth=1.2, label=label)
            axes.axhspan(clip(mean - half, bounds), clip(mean + half, bounds), color=colour, alpha=0.12, linewidth=0)
        for colour, (label, points) in zip(colours, sorted(curves.items()), strict=False):
            points.sort(key=lambda item: item[0])
            xs: list[float] = []
            means: list[float] = []
            halves: list[float] = []
            for x, group in points:
                values = _per_seed(group, figure_of)
                if not values:
                    continue
                mean, half = _mean_and_half_width(values)
                xs.append(x)
                means.append(mean)
                halves.append(half)
                axes.scatter([x] * len(values), values, color=colour, s=9, alpha=0.45, linewidths=0)
                if len(values) < READABLE_BAND_SEEDS:
                    few_seeds[f"{label + ' ' if label else ''}{name} = {x:g}"] = len(values)
            if not xs:
                continue
            counts = sorted({len(_per_seed(group, figure_of)) for _, group in points} - {0})
            seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
            axes.plot(xs, means, color=colour, marker="o", linewidth=1.6, label=f"{label or name}, mean of {seeds} seeds")
            axes.fill_between(xs, [clip(m - h, bounds) for m, h in zip(means, halves, strict=True)],
                              [clip(m + h, bounds) for m, h in zip(means, halves, strict=True)], color=colour, alpha=0.2, linewidth=0)
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.autoscale_view()
        low, high = axes.get_ylim()
        if max(low, bounds[0]) < min(high, bounds[1]):
            axes.set_ylim(max(low, bounds[0]), min(high, bounds[1]))
    if name == "ascent_lr" or (min(xs_all) > 0 and max(xs_all) / min(xs_all) > 50):
        accuracy_axes.set_xscale("log")
    accuracy_axes.set_xlabel(name)
    loss_axes.set_title(f"best validation loss and accuracy against {name} (bands: 95 % interval of the mean over seeds)", fontsize=9)
    loss_axes.legend(fontsize=8, loc="best")
    if few_seeds:
        two = [point for point, n in few_seeds.items() if n >= 2]
        one = [point for point, n in few_seeds.items() if n < 2]
        parts = []
        if two:
            parts.append(f"{', '.join(two)}: fewer than {READABLE_BAND_SEEDS} seeds, band too wide to read "
                         f"(95 % t interval with 1 df: ± {student_t_quantile_975(1):.1f} sd/√2); clipped to the axes")
        if one:
            parts.append(f"{', '.join(one)}: one seed, no band")
        figure.supxlabel("\n".join(textwrap.wrap("; ".join(parts) + ". Run more seeds.", 95)), fontsize=8)
    return figure, list(few_seeds)


def student_t_quantile_975(df: float) -> float:
    return student_t_quantile(0.975, df)


def sweep_curves(report: Report, key: str) -> dict[str, list[tuple[float, Group]]]:
    """The groups that set ``key`` (baselines aside), as curves: one per mode and per
    combination of the other settings that differ between groups (flooding and iFlood at
    the same b are two curves, never one line through both)."""
    candidates = [
        g for g in report.groups
        if not g.is_baseline and isinstance(g.settings.get(key), (int, float)) and not isinstance(g.settings.get(key), bool)
        and g.n_seeds
    ]
    several_modes = len({g.settings.get("train.mode") for g in candidates}) > 1
    curves: dict[str, list[tuple[float, Group]]] = {}
    for group in candidates:
        others = {k: v for k, v in group.settings.items() if k != key and k != "train.seed"}
        label = _differing_label(others, [g.settings for g in report.groups], key)
        if several_modes:
            label = ", ".join(filter(None, (str(group.settings.get("train.mode")), label)))
        curves.setdefault(label, []).append((float(group.settings[key]), group))
    return curves


def _differing_label(settings: dict[str, Any], everyone: Sequence[dict[str, Any]], key: str) -> str:
    """The settings that tell this curve apart from the others (not ``key``, not the seed)."""
    varying = sorted(
        k for k in settings
        if k not in (key, "train.seed", "train.mode") and len({repr(s.get(k)) for s in everyone}) > 1
    )
    return ", ".join(f"{k.split('.')[-1]}={settings[k]}" for k in varying)
