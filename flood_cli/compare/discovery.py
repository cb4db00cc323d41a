"""Which folders are runs: `flood compare`'s arguments expanded into run folders.

An argument is a run folder, a folder that holds runs (one or two levels down), a run
file standing for its folder, or a glob the shell did not expand. An argument that
yields no run keeps its reason, so that "no runs found" can say why.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flood_cli.runs.folder import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)


@dataclass
class Discovery:
    """Run folders in argument order, without duplicates, and the arguments skipped."""

    run_dirs: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (argument, reason)

    @property
    def warnings(self) -> list[str]:
        return [f"{argument}: {reason}; skipped" for argument, reason in self.skipped]


def discover_runs(paths: Iterable[Path]) -> Discovery:
    found: dict[str, Path] = {}
    discovery = Discovery()
    for argument in paths:
        candidates = _expand_glob(Path(argument))
        if not candidates:
            discovery.skipped.append((str(argument), "no file or folder matches"))
        for candidate in candidates:
            run_dirs, reason = _runs_at(candidate)
            if reason:
                discovery.skipped.append((str(candidate), reason))
            for run_dir in run_dirs:
                found.setdefault(os.path.realpath(run_dir), run_dir)
    discovery.run_dirs = list(found.values())
    return discovery


def _expand_glob(path: Path) -> list[Path]:
    text = str(path)
    # Shells expand globs; a quoted glob reaches us as is and is expanded here.
    if path.exists() or not any(char in text for char in "*?["):
        return [path]
    return [Path(match) for match in sorted(glob.glob(text))]


def _is_run_dir(path: Path) -> bool:
    # exists(), not is_file(): a run whose metrics.csv is a named pipe or a link to a
    # device is still found, and the reader says why it is skipped. Only names are
    # looked at here (stat), never contents: discovery opens no run file.
    return any((path / name).exists() for name in RUN_FILES)


def _runs_at(path: Path) -> tuple[list[Path], str]:
    """The run folders at ``path``, or none and the reason why."""
    if not path.exists():
        return [], "no such folder"
    if not path.is_dir():
        if path.name in RUN_FILES:  # e.g. runs/*/summary.json: the folder is meant
            return [path.parent], ""
        return [], "a file, not a run folder"
    if _is_run_dir(path):
        return [path], ""
    try:
        with os.scandir(path) as listing:
            entries = list(listing)
    except OSError as exc:
        return [], f"cannot read the folder ({exc.strerror or exc})"
    if not entries:
        return [], "an empty folder"
    # A parent folder such as runs/, or a sweep folder one level further down.
    children = _visible_folders(entries)
    runs = [child for child in children if _is_run_dir(child)]
    if not runs:
        runs = [grandchild for child in children for grandchild in _subfolders(child) if _is_run_dir(grandchild)]
    if runs:
        return runs, ""
    return [], f"no {CONFIG_FILE}, {METRICS_FILE} or {SUMMARY_FILE} in it or its subfolders"


def _visible_folders(entries: list[os.DirEntry]) -> list[Path]:
    folders = [entry for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    return [Path(entry.path) for entry in sorted(folders, key=lambda entry: entry.name)]


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as listing:
            return _visible_folders(list(listing))
    except OSError:  # an unreadable subfolder holds no runs we can compare
        return []
