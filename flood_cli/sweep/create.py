"""Creating a sweep (its folder, studies and queue), adding settings to it, and reading
it back (sweep.yaml, checked against its study's record, or a study joined by URL)."""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from flood_cli.config.load import apply_override, changed_keys, changes_text, load_config, validate
from flood_cli.config.schema import NAME_CHARACTERS, NAME_MAX, is_plain_name
from flood_cli.core import safe_yaml
from flood_cli.core.errors import FloodError, shown_repr
from flood_cli.runs.folder import check_writable, read_run_file
from flood_cli.sweep.spec import (
    JOURNAL_FILE,
    MAX_RUNS,
    MAX_SPEC_BYTES,
    MODE_KEYS_OF,
    QUEUE_LOCK,
    RUNS_DIR,
    SPEC_FILE,
    WORKERS_DIR,
    Range,
    Setting,
    SweepSpec,
    _first_line,
    _mode_key,
    _mode_of,
    _write_spec,
    canonical,
    config_for,
    distinct_settings,
    grid_settings,
    refuse_own_keys,
)
from flood_cli.sweep.storage import load_study, open_storage, public_url


def create_sweep(
    config_path: Path,
    mode: str | None,
    axes: dict[str, list[Any]],
    seeds: list[int],
    search: list[Range],
    trials: int,
    out: Path,
    name: str | None,
    storage_url: str | None,
    study_name: str | None,
    prune: bool = False,
    listed: list[dict[str, Any]] | None = None,
    b_auto: list[float] | None = None,
) -> SweepSpec:
    """Validate every run's config, claim the sweep folder, create the study and
    enqueue the grid. Nothing is created when a setting is invalid.

    ``listed`` settings (from --settings FILE) are taken as they are, each with its own
    mode (a study of several methods), next to a baseline. ``b_auto`` (multipliers, from
    --b auto) makes the baseline only: the flood levels come from it (sweep.auto_b)."""
    from datetime import datetime

    if name is not None and not is_plain_name(name):
        raise FloodError(
            f"--name {shown_repr(name)} is not a plain folder name; use 1 to {NAME_MAX} {NAME_CHARACTERS} (not . or ..)"
        )
    if trials < 0:
        raise FloodError(f"--trials {trials}: give the number of settings TPE may try (1 or more)")
    refuse_own_keys(axes, "--set")
    refuse_own_keys([r.key for r in search], "--search")
    for overrides in listed or []:
        refuse_own_keys(overrides, "--settings")
    base = load_config(config_path)
    if listed is not None:
        # One-valued --set flags are fixed for every setting (a model path, say); more
        # values would make it a grid, which the file lists itself.
        if search or any(len(values) > 1 for values in axes.values()):
            raise FloodError("--settings lists the settings itself; drop --search and --set with several values")
        if axes:
            raw = base.experiment_dict()
            for key, values in axes.items():
                apply_override(raw, key, values[0])
            base = validate(raw, f"config error in {config_path} with --set")
        axes = {}
        mode = mode or "study"
    if b_auto is not None:
        base, axes, mode = _auto_b_base(base, axes, mode, search, listed, config_path)
    searched = {r.key for r in search}
    if mode is None:  # as `flood train --b X` switches to flooding, so do flood levels here
        owners = [owner for owner in map(_mode_key, (*axes, *searched)) if owner is not None]
        if owners and not all(owner in MODE_KEYS_OF.get(base.train.mode, ()) for owner in owners):
            mode = _mode_of(owners[0])
        else:
            mode = base.train.mode
    for key in (*axes, *searched):
        if listed is None and _mode_key(key) is not None and _mode_key(key) not in MODE_KEYS_OF.get(mode, ()):
            raise FloodError(f"{key} does not apply to mode {mode}; drop it, or pass --mode {_mode_of(key)}")
    if search and not trials:
        raise FloodError("--search needs --trials N, the number of settings TPE may try")
    if trials and not search:
        raise FloodError("--trials applies to --search; for a grid give the values (--b 0,0.1) instead")
    if prune and not search:
        raise FloodError("--prune applies to --search (a grid runs every setting to the end)")
    if not axes and not search and listed is None and b_auto is None:
        raise FloodError(
            "nothing to sweep; give values (--b 0,0.05,0.1, --ascent-lr, --lr, --set key=v1,v2), --search or --settings FILE"
        )
    if b_auto is None and mode == "flooding" and "train.b" not in axes and base.train.b is None and not any(r.key == "train.b" for r in search):
        raise FloodError("mode flooding needs flood levels: --b 0,0.05,0.1 or --search b=0:0.6")
    if listed is not None:
        grid_size = len(listed) + 1
    elif b_auto is not None:
        grid_size = 1 + len(b_auto)
    else:  # as grid_settings makes them, counted before a grid of them is built
        shared = math.prod(len(values) for key, values in axes.items() if _mode_key(key) is None)
        own = math.prod(len(values) for values in axes.values()) if axes else int(not search)
        grid_size = shared + (own if mode != "baseline" else 0)
    if (grid_size + trials) * len(seeds) > MAX_RUNS:
        raise FloodError(
            f"this sweep would make {(grid_size + trials) * len(seeds)} runs ({grid_size + trials} setting(s) or trial(s) × "
            f"{len(seeds)} seed(s)), more than {MAX_RUNS}; give fewer values, settings, trials or seeds, or split it into several sweeps"
        )
    if listed is not None:
        settings = [Setting(overrides) for overrides in listed]
    else:
        settings = grid_settings(mode, axes) if axes else [Setting({"train.mode": "baseline"})]
        if not axes and mode != "baseline" and not search and b_auto is None:
            settings.append(Setting({"train.mode": mode}))
    check_writable(out)
    folder_name = name or f"sweep-{mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    folder = (out / folder_name).resolve()
    spec = SweepSpec(
        name=folder_name,
        folder=str(folder),
        base=base.experiment_dict(),
        mode=mode,
        settings=[s.overrides for s in settings],
        seeds=seeds,
        search=[asdict(r) for r in search],
        trials=trials,
        prune=prune,
        storage=public_url(storage_url) if storage_url else "",  # never its password
        study=study_name or folder_name,
        b_auto={"multipliers": b_auto} if b_auto is not None else {},
    )
    # Every config must be valid before anything exists; each setting is kept as its
    # validated config holds it, and one experiment is never two settings (nor two runs).
    made = distinct_settings(spec, settings, *(("--settings", "keep one") if listed is not None else ("the grid", "give each value once")))
    if listed is not None:
        # The base config's own baseline, unless a listed setting is that experiment (a
        # baseline of other settings, such as an SGD one beside backstitch, is not).
        baseline, experiment = canonical(spec, {"train.mode": "baseline"})
        if all(other != experiment for _, other in made):
            made.insert(0, (baseline, experiment))
    spec.settings = [setting.overrides for setting, _ in made]
    for setting, _ in made:
        config_for(spec, setting.overrides, seeds[0], setting.run_name(seeds[0]))
    if b_auto is not None:  # the flooding runs to come: valid with this base config
        config_for(spec, {"train.mode": mode, "train.b": 0.1}, seeds[0], "probe")
    if search:
        probe = {r.key: (int((r.low + r.high) // 2) if r.integer else (r.low + r.high) / 2) for r in search}
        config_for(spec, {"train.mode": mode, **probe}, seeds[0], "probe")
    try:
        folder.mkdir()
    except FileExistsError:
        raise FloodError(f"sweep folder {folder} already exists; pass another --name, or --resume it") from None
    try:
        (folder / RUNS_DIR).mkdir()
        (folder / WORKERS_DIR).mkdir()
        _write_spec(spec)
        _create_studies(spec)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return spec


def _auto_b_base(
    base: Any, axes: dict[str, list[Any]], mode: str | None, search: list[Range], listed: Any, config_path: Path
) -> tuple[Any, dict[str, list[Any]], str]:
    """--b auto: its mode (the config's where it has a flood level, else flooding), and
    one-valued --set flags folded into the base config; what it cannot be combined with
    refused in one line."""
    from flood_cli.core.modes import FLOOD_LEVEL_MODES

    if search or listed is not None:
        raise FloodError("--b auto places the flood levels from the sweep's baseline; drop --search and --settings, or give --b values")
    several = next((key for key, values in axes.items() if len(values) > 1), None)
    if several is not None:
        raise FloodError(
            f"--b auto places the flood levels from one baseline, so {several} takes one value here; "
            "sweep its values in a sweep each, or give --b values"
        )
    if axes:
        raw = base.experiment_dict()
        for key, values in axes.items():
            apply_override(raw, key, values[0])
        base = validate(raw, f"config error in {config_path} with --set")
    if mode is None:
        mode = base.train.mode if base.train.mode in FLOOD_LEVEL_MODES else "flooding"
    if mode not in FLOOD_LEVEL_MODES:
        raise FloodError(f"--b auto places flood levels, which mode {mode} has none of; pass --mode {' or --mode '.join(FLOOD_LEVEL_MODES)}")
    return base, {}, mode


def _create_studies(spec: SweepSpec) -> None:
    import optuna

    storage = open_storage(spec.storage_url)
    names = [spec.grid_study] + ([spec.study] if spec.search else [])
    for study_name in names:
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize")
        except optuna.exceptions.DuplicatedStudyError:
            raise FloodError(f"the storage already has a study {study_name!r}; pass another --study") from None
        study.set_user_attr("flood_sweep", asdict(spec))
    grid = optuna.load_study(study_name=spec.grid_study, storage=storage)
    for overrides in spec.settings:
        for seed in spec.seeds:
            _enqueue(grid, Setting(overrides), seed)


def _enqueue(grid: Any, setting: Setting, seed: int) -> None:
    """Queue one run of the grid: a trial with no parameters, the run named in its attrs."""
    grid.enqueue_trial(
        {}, user_attrs={"run": setting.run_name(seed), "setting": setting.label(), "overrides": setting.overrides, "seed": seed}
    )


def add_settings(spec: SweepSpec, listed: list[dict[str, Any]]) -> list[str]:
    """Settings of ``listed`` that the sweep lacks, added to it: validated, saved in
    sweep.yaml and the study, and queued for every seed of the sweep. Settings it has
    already are left as they are (their runs are never redone), and none is removed.
    A setting is one the sweep has when it is the same experiment once validated,
    whatever its key order or spelling (1e-3 and 0.001). Returns the labels of the
    settings added."""
    if spec.search:
        raise FloodError(f"sweep {spec.name} is a --search; settings can be added to a grid sweep only: start a new sweep")
    for overrides in listed:
        refuse_own_keys(overrides, "--settings")
    if (len(spec.settings) + len(listed)) * len(spec.seeds) > MAX_RUNS:
        raise FloodError(
            f"the sweep would make more than {MAX_RUNS} runs with these settings; split them into a new sweep"
        )
    known = [canonical(spec, overrides) for overrides in spec.settings]
    have = {key for setting, experiment in known for key in (setting.identity(), experiment)}
    wanted = distinct_settings(spec, [Setting(overrides) for overrides in listed], "--settings")
    new = [setting for setting, experiment in wanted if setting.identity() not in have and experiment not in have]
    storage = open_storage(spec.storage_url)
    grid = load_study(storage, spec.grid_study)
    trials = grid.get_trials(deepcopy=False)
    taken = {trial.user_attrs.get("run") for trial in trials}
    for setting in new:  # every config must be valid before anything changes
        config_for(spec, setting.overrides, spec.seeds[0], setting.run_name(spec.seeds[0]))
        clash = next((setting.run_name(seed) for seed in spec.seeds if setting.run_name(seed) in taken), None)
        if clash:
            raise FloodError(f"setting {setting.label()} would name its runs {clash}, as the sweep does already; drop it")
    spec.settings = [*spec.settings, *(setting.overrides for setting in new)]
    if new and (Path(spec.folder) / SPEC_FILE).is_file():
        _write_spec(spec)
    if new:
        grid.set_user_attr("flood_sweep", asdict(spec))
    # Queued by setting and seed, so an addition cut short is completed by running it again.
    queued = {(Setting(trial.user_attrs.get("overrides") or {}).identity(), trial.user_attrs.get("seed")) for trial in trials}
    for setting in map(Setting, spec.settings):
        for seed in spec.seeds:
            if (setting.identity(), seed) not in queued:
                _enqueue(grid, setting, seed)
    return [setting.label() for setting in new]


# What each field of sweep.yaml holds, checked before anything trusts a hand-edited file.
SPEC_TYPES: dict[str, tuple[type, type | None, str]] = {
    "name": (str, None, "a name"),
    "folder": (str, None, "a path"),
    "base": (dict, None, "a mapping (the base config)"),
    "mode": (str, None, "a mode name"),
    "settings": (list, dict, "a list of settings (mappings)"),
    "seeds": (list, int, "a list of whole-number seeds"),
    "search": (list, dict, "a list of search ranges (mappings)"),
    "trials": (int, None, "a whole number"),
    "prune": (bool, None, "true or false"),
    "storage": (str, None, "a database URL or empty"),
    "study": (str, None, "a study name"),
    "b_auto": (dict, None, "a mapping (the flood levels of --b auto)"),
}


def read_spec(folder: Path) -> SweepSpec:
    """sweep.yaml, checked: each field of its type, and equal to what the sweep's study
    recorded when the sweep was made or settings were added (an edited sweep.yaml would
    train and compare new runs under settings the earlier ones did not have)."""
    path = folder / SPEC_FILE
    if not path.is_file():
        _restore_spec(folder)
    not_ours = "it was not written by flood sweep, or was edited: put back what flood sweep wrote"

    try:  # a regular file of at most MAX_SPEC_BYTES (a named pipe never blocks a resume)
        data = safe_yaml.load(read_run_file(path, MAX_SPEC_BYTES).decode("utf-8"))
    except (safe_yaml.RefusedYaml, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FloodError(f"{path} cannot be read as a sweep ({_first_line(exc)}); {not_ours}") from None
    if not isinstance(data, dict):
        raise FloodError(f"{path} holds {type(data).__name__}, not a sweep; {not_ours}")
    for key, value in data.items():
        if key not in SPEC_TYPES:
            raise FloodError(f"{path}: unknown field {shown_repr(key)}; {not_ours}")
        kind, item, what = SPEC_TYPES[key]
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if not wrong and item is not None:
            wrong = any(not isinstance(x, item) or (item is int and isinstance(x, bool)) for x in value)
        if wrong:
            raise FloodError(f"{path}: {key} is {shown_repr(value)}, not {what}; {not_ours}")
    try:
        spec = SweepSpec(**data)
    except TypeError as exc:
        raise FloodError(f"{path} cannot be read as a sweep ({_first_line(exc)}); {not_ours}") from None
    spec.folder = str(folder.resolve())  # the folder may have moved since it was made
    journal = Path(spec.storage_url)
    if not spec.storage and not journal.is_file():  # (opening it would make an empty one)
        raise FloodError(
            f"the sweep journal {journal} is missing (it records which runs are done); restore it from a backup, or start a new "
            f"sweep (the runs in {spec.runs_dir} stay readable: flood compare {spec.runs_dir})"
        )
    _check_unedited(path, spec)
    return spec


def _restore_spec(folder: Path) -> None:
    """sweep.yaml is missing: written again from the record its study keeps (the same
    values: an edited sweep.yaml is refused against that record), said in one line; or
    one line naming what is missing."""
    path, journal = folder / SPEC_FILE, folder / JOURNAL_FILE
    if not journal.is_file():
        if any((folder / part).exists() for part in (RUNS_DIR, WORKERS_DIR, QUEUE_LOCK)):
            raise FloodError(
                f"{path} and {journal} are both missing, so nothing says what the sweep is or which runs are done; restore them "
                f"from a backup (a sweep on a database: join it with flood sweep --storage URL --study NAME --worker --out {folder})"
            )
        raise FloodError(f"{folder} is not a sweep folder (no {SPEC_FILE}); pass the folder that flood sweep printed")
    record = None
    for study in open_storage(str(journal)).get_all_studies():
        data = study.user_attrs.get("flood_sweep")
        if isinstance(data, dict) and study.study_name == f"{data.get('study')}{':baseline' if data.get('search') else ''}":
            record = data  # the grid study's: --resume --settings updates that one
    if record is None:
        raise FloodError(f"{path} is missing and {journal} holds no record of the sweep to write it from; restore {SPEC_FILE} from a backup")
    try:
        spec = SweepSpec(**{**record, "folder": str(folder.resolve())})
    except TypeError as exc:
        raise FloodError(f"{path} is missing and the record of the sweep in {journal} cannot be read ({_first_line(exc)}); restore {SPEC_FILE} from a backup") from None
    _write_spec(spec)
    print(f"{path} was missing: written again from the sweep's record in {journal}", file=sys.stderr, flush=True)


def _check_unedited(path: Path, spec: SweepSpec) -> None:
    stored = load_study(open_storage(spec.storage_url), spec.grid_study).user_attrs.get("flood_sweep")
    if not isinstance(stored, dict):
        return
    changed = changed_keys(
        {k: v for k, v in stored.items() if k != "folder"}, {k: v for k, v in asdict(spec).items() if k != "folder"}
    )
    if changed:
        raise FloodError(
            f"{path} was edited since the sweep was made: {changes_text(changed, shown_repr, 4)}; its runs were trained with the values its "
            "study holds: put them back to go on, add settings with --resume --settings FILE, or start a new sweep"
        )


def spec_from_study(storage_url: str, study_name: str) -> SweepSpec:
    storage = open_storage(storage_url)
    study = load_study(storage, study_name)
    data = study.user_attrs.get("flood_sweep")
    if not isinstance(data, dict):
        raise FloodError(f"study {study_name!r} was not created by flood sweep; join a study that flood sweep made")
    spec = SweepSpec(**data)
    spec.storage = public_url(storage_url)  # its password stays in this process
    return spec
