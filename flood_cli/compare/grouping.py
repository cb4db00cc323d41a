"""Seed groups and baselines: which runs are repeats of one experiment, and against what
each experiment is compared.

A seed group holds the runs that differ only by seed. Runs that share a seed too are
replicates, not independent evidence: their best losses are averaged into one value per
seed, so a group's n counts distinct seeds. Each non-baseline group is compared with the
baseline group of the same model and data whose training settings are closest: by the
difference of means (Welch), and, on the seeds both groups ran, by the per-seed paired
differences (same seed: same data order and initialisation).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from flood_cli.compare.model import Comparison, Group, Run
from flood_cli.compare.reader import canonical
from flood_cli.compare.stats import (
    ALPHA,
    HIGHER,
    LOWER,
    WITHIN_NOISE,
    difference_interval,
    holm_adjust,
    p_verdict,
    paired_interval,
    same_up_to_rounding,
    verdict_for,
)
from flood_cli.core.modes import BY_NAME

# Replicates of one seed (same settings, same seed) whose best validation losses differ by
# more than this, relative, disagree far beyond float rounding (eval_batch_size moves a
# loss by about 1e-9): a warning says so.
REPLICATE_TOLERANCE = 1e-3


# Verdict rules: Holm-adjusted p over the comparisons made together, or each p alone.
HOLM, RAW = "holm", "raw"


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Seed groups, best first by their mean best judged value (validation loss by
    default; groups without one last)."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.group_key, []).append(run)
    groups = [Group(id="", label="", runs=members) for members in by_key.values()]
    groups.sort(key=lambda g: (g.sample is None, g.judged.sort_key(g.sample.mean) if g.sample else 0.0, g.runs[0].name))
    for number, (group, label) in enumerate(zip(groups, _group_labels(groups), strict=True), start=1):
        group.id, group.label = f"g{number}", label
        for run in group.runs:
            run.group = group
    return groups


def compare_with_baselines(groups: Sequence[Group], rule: str = HOLM) -> list[Comparison]:
    """Each non-baseline group against its baseline group.

    Runs get their difference to the baseline group's mean too, and to the baseline's
    run(s) of the same seed, incomplete runs as they stand; a comparison needs complete
    runs on both sides. The verdicts are adjusted for the number of comparisons (Holm)
    unless ``rule`` is RAW: see `apply_verdict_rule`.
    """
    comparisons = []
    for group, (baseline, others) in choose_baselines(groups).items():
        reference = baseline.sample.mean  # type: ignore[union-attr]
        same_seed = baseline.seed_values
        for run in group.runs:
            if run.score is not None:
                run.diff_to_baseline = run.score - reference
                run.diff_to_baseline_pct = _percent(run.diff_to_baseline, reference)
                if run.seed is not None and run.seed in same_seed:
                    run.paired_diff_to_baseline = run.score - same_seed[run.seed]
                    run.paired_diff_to_baseline_pct = _percent(run.paired_diff_to_baseline, same_seed[run.seed])
        if group.sample is not None:
            comparisons.append(_compare(group, baseline, others))
    apply_verdict_rule(comparisons, rule)
    return comparisons


def apply_verdict_rule(comparisons: Sequence[Comparison], rule: str = HOLM) -> None:
    """The verdicts of comparisons read together, as one family.

    Each comparison with a test (paired, else Welch) has a two-sided p. Judged alone at
    5 % each, k comparisons in which nothing differs show some "difference" with chance
    1 − 0.95^k (37 % for 9). Holm's adjustment over the k p values keeps that chance at
    5 %: the verdict is lower or higher only when the adjusted p is below 0.05. With
    ``rule`` RAW the verdict follows each raw p (its 95 % interval leaving out 0). The
    intervals are the same either way; a comparison whose interval leaves out 0 but whose
    adjusted p does not pass gets a note that says so.
    """
    if rule not in (HOLM, RAW):
        raise ValueError(f"verdict rule {rule!r}: use {HOLM!r} or {RAW!r}")
    adjusted = holm_adjust([c.p_value for c in comparisons])
    family = sum(c.p_value is not None for c in comparisons)
    for comparison, p_holm in zip(comparisons, adjusted, strict=True):
        comparison.p_holm, comparison.verdict_rule, comparison.family = p_holm, rule, family
        if comparison.p_value is None or p_holm is None:
            continue
        difference = comparison.tested_difference or 0.0
        comparison.verdict = p_verdict(p_holm if rule == HOLM else comparison.p_value, difference)
        if rule == HOLM and comparison.verdict == WITHIN_NOISE and comparison.p_value < ALPHA:
            comparison.notes.append(
                f"{comparison.group.id}: its {_METHOD_NAMES[comparison.verdict_method or 'welch']} 95% interval leaves out 0 "
                f"(p {format_p(comparison.p_value)}), but not after Holm's adjustment for the {family} comparisons "
                f"made together (p {format_p(p_holm)}): within seed noise"
            )
    for comparison in comparisons:
        if comparison.group.judged.higher_is_better:
            comparison.verdict = HIGHER_IS_BETTER.get(comparison.verdict, comparison.verdict)
            comparison.unpaired_verdict = HIGHER_IS_BETTER.get(comparison.unpaired_verdict, comparison.unpaired_verdict)


# The verdicts' words when higher is better (the F1 scores, AUROC, ...): the direction stays, the judgement flips.
HIGHER_IS_BETTER = {LOWER: "lower (worse)", HIGHER: "higher (better)"}


def format_p(p: float) -> str:
    """A p value in few characters: 0.013, 1.3e-05."""
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def choose_baselines(groups: Sequence[Group]) -> dict[Group, tuple[Group, list[Group]]]:
    """For each non-baseline group: its baseline group and the other candidates.

    A baseline group matches when it has the same model and data sections; among
    several, the closest training settings win (a baseline at the same lr and epochs),
    then the one with the most seeds.
    """
    baselines = [g for g in groups if g.is_baseline and g.sample is not None]
    chosen = {}
    for group in groups:
        if group.is_baseline:
            continue
        candidates = [b for b in baselines if b.context_key == group.context_key]
        if candidates:
            candidates.sort(key=lambda b: (_training_distance(group, b), -b.sample.n, b.id))  # type: ignore[union-attr]
            chosen[group] = (candidates[0], candidates[1:])
    return chosen


def unready_baselines(groups: Sequence[Group]) -> dict[Group, list[Group]]:
    """Non-baseline groups without a baseline to compare with, for which a baseline group
    of the same model and data exists but has no complete run with a finite loss yet
    (still running, failed, interrupted): the reason no difference is shown."""
    chosen = choose_baselines(groups)
    waiting = [g for g in groups if g.is_baseline and g.sample is None]
    found = {}
    for group in groups:
        if group.is_baseline or group in chosen:
            continue
        matching = [b for b in waiting if b.context_key == group.context_key]
        if matching:
            found[group] = matching
    return found


def replicate_disagreements(groups: Sequence[Group]) -> list[str]:
    """Warnings for replicates of one seed (same settings, same seed) whose best
    validation losses differ far beyond float rounding: the runs should be the same
    experiment, so something compare does not see differs (precision, device, code), or
    the training is nondeterministic. They are averaged as one seed all the same."""
    warnings = []
    for group in groups:
        for seed in group.seed_values:
            runs = [run for run in group.runs if run.counts_in_statistics and run.seed == seed]
            losses = [run.score for run in runs]
            if len(losses) < 2 or not all(math.isfinite(v) for v in losses):  # type: ignore[arg-type]
                continue
            low, high = min(losses), max(losses)  # type: ignore[type-var]
            scale = max(abs(low), abs(high))  # type: ignore[arg-type]
            apart = (high - low) / scale if scale else 0.0  # type: ignore[operator]
            if apart > REPLICATE_TOLERANCE:
                names = ", ".join(run.name for run in runs)
                values = ", ".join(f"{value:.6g}" for value in losses)
                warnings.append(
                    f"{names}: replicates (same settings, seed {seed}; group {group.id}) whose best {group.judged.column} "
                    f"disagree: {values}, {apart:.2%} apart, far beyond float noise ({REPLICATE_TOLERANCE:.1%}); "
                    "averaged as one seed all the same. Something compare does not see differs (precision, "
                    "device, code version) or training is nondeterministic"
                )
    return warnings


def _compare(group: Group, baseline: Group, others: Sequence[Group]) -> Comparison:
    sample, reference = group.sample, baseline.sample
    assert sample is not None and reference is not None
    difference = sample.mean - reference.mean
    interval = difference_interval(sample, reference)
    unpaired_verdict = verdict_for(interval, sample, reference)
    notes = []
    if interval is not None and interval.method == "pooled":
        single, spread = (group, baseline) if sample.n < 2 else (baseline, group)
        notes.append(
            f"one seed in {single.id}: it has no seed noise of its own to judge by, so no verdict; the interval "
            f"borrows {spread.id}'s seed spread (assumes equal spread) and is shown for scale only: run more seeds"
        )
    if others:
        ids = ", ".join(b.id for b in sorted([baseline, *others], key=lambda b: int(b.id[1:])))
        notes.append(f"baseline groups {ids} match; chose {baseline.id}: closest training settings, then most seeds")

    # Seeds both groups ran: the same data order and initialisation on both sides.
    ours, theirs = group.seed_values, baseline.seed_values
    seeds = sorted((seed for seed in ours if seed in theirs), key=lambda seed: (str(type(seed)), seed))
    differences = [ours[seed] - theirs[seed] for seed in seeds]
    paired_difference = paired_pct = None
    if differences:
        try:
            paired_difference = statistics.mean(differences)
            paired_pct = _percent(paired_difference, statistics.mean(theirs[seed] for seed in seeds))
        except OverflowError:  # losses near 1e308
            paired_difference = paired_pct = None
    scale = max((abs(value) for seed in seeds for value in (ours[seed], theirs[seed])), default=0.0)
    paired = paired_interval(differences, scale=scale)
    # The verdict's test: paired t, else Welch's t; a pooled interval gives none. The
    # verdict here is the raw one; apply_verdict_rule adjusts it for the family.
    if paired is not None:
        method, p_value = "paired", paired.p
        verdict = p_verdict(p_value, paired_difference or 0.0)  # type: ignore[arg-type]
    elif interval is not None and interval.method == "welch":
        method, p_value = "welch", interval.p
        verdict = p_verdict(p_value, difference)  # type: ignore[arg-type]
    else:
        verdict, method, p_value = unpaired_verdict, None, None
    if paired is None:
        finite = all(math.isfinite(d) for d in differences)
        if len(differences) >= 2 and finite and same_up_to_rounding(differences, scale) and interval is not None:
            notes.append(
                f"{group.id} and {baseline.id} differ by the same {differences[0]:+.4g} on each of seeds "
                f"{_seed_list(seeds)}: no paired interval; the verdict is the {_METHOD_NAMES[interval.method]} interval's"
            )

    still_improving = [run for run in (*group.runs, *baseline.runs) if run.still_improving]
    if still_improving:
        notes.append(
            f"still improving at the last evaluation, best not reached: {_names(still_improving)} (†); "
            "the verdict is premature: train longer"
        )
    return Comparison(
        group=group,
        baseline=baseline,
        difference=difference,
        difference_pct=_percent(difference, reference.mean),
        interval=interval,
        verdict=verdict,
        notes=notes,
        paired_seeds=seeds,
        paired_differences=differences,
        paired_difference=paired_difference,
        paired_difference_pct=paired_pct,
        paired=paired,
        verdict_method=method,
        unpaired_verdict=unpaired_verdict,
        still_improving=still_improving,
        p_value=p_value,
    )


_METHOD_NAMES = {"welch": "Welch", "pooled": "pooled", "paired": "paired"}


def _percent(difference: float, reference: float) -> float | None:
    if not reference:
        return None
    try:
        return 100.0 * difference / reference
    except OverflowError:
        return None


def _seed_list(seeds: Sequence[Any]) -> str:
    return ", ".join(str(seed) for seed in seeds[:6]) + (f" and {len(seeds) - 6} more" if len(seeds) > 6 else "")


def _names(runs: Sequence[Run], shown: int = 4) -> str:
    names = [run.name for run in runs]
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _training_distance(a: Group, b: Group) -> int:
    """How many training settings (other than the mode's own) two groups disagree on."""
    mode_keys = {"train.mode", "train.b", "train.ascent_lr", "train.optimizer"}
    keys = {k for k in (*a.settings, *b.settings) if k.startswith("train.")} - mode_keys
    return sum(a.settings.get(key) != b.settings.get(key) for key in keys) + (_optimizer(a) != _optimizer(b))


def _optimizer(group: Group) -> str:
    """The optimizer a group's runs stepped with: train.optimizer, else the mode's own
    (the registry's: plain SGD for backstitch, AdamW for the rest); so backstitch pairs
    with an SGD baseline."""
    chosen = group.settings.get("train.optimizer")
    if chosen is not None:
        return str(chosen)
    mode = group.settings.get("train.mode")
    return BY_NAME[mode].optimizer if isinstance(mode, str) and mode in BY_NAME else "adamw"


def _group_labels(groups: Sequence[Group]) -> list[str]:
    """mode, b, lr, ascent_lr, plus whatever else differs between the groups."""
    all_keys = sorted({key for group in groups for key in group.settings})
    # Runs without a config.yaml are labelled by name; they do not make keys "vary".
    configured = [g for g in groups if "folder" not in g.settings and "from_summary.model" not in g.settings]
    varying = [
        key for key in all_keys
        # mode, b, lr and ascent_lr are in every label already.
        if not key.endswith(".mode")
        and key.rsplit(".", 1)[-1] not in ("b", "lr", "ascent_lr")
        # A key some runs lack (written by an older flood) varies too.
        and len({canonical(group.settings[key]) if key in group.settings else "<absent>" for group in configured}) > 1
    ]
    labels = []
    for group in groups:
        run = group.runs[0]
        parts = [run.mode or "?"]
        for key, value in (("b", run.b), ("lr", run.lr), ("alr", run.ascent_lr)):
            if value is not None:
                parts.append(f"{key}={value:g}")
        for key in varying:
            if key in group.settings:
                parts.append(f"{key.rsplit('.', 1)[-1]}={_short_value(group.settings[key])}")
        if "folder" in group.settings:
            parts.append(f"({run.name})")
        elif "from_summary.model" in group.settings:
            parts.append("[no config.yaml]")
        labels.append(" ".join(parts))
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[index] = f"{label} #{seen[label]}"
    return labels


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and "/" in value:
        return value.rstrip("/").rsplit("/", 1)[-1]
    return str(value)
