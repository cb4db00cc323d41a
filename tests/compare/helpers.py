"""Shared by the flood compare tests: a fixed clock, compare/build_report on it, seed
groups of hand-made run folders (tests/run_factory.py), and the CLI runner."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from typer.testing import CliRunner

from flood_cli.compare.command import build_report, compare_command
from tests.run_factory import write_run

NOW = datetime(2025, 1, 1, 0, 20, tzinfo=timezone.utc).timestamp()  # 10 min after the factory's updated_at


def compare(paths, **options):
    return compare_command([Path(p) for p in paths], now=NOW, **options)


def report_of(paths, **options):
    return build_report([Path(p) for p in paths], now=NOW, **options)


def write_seed_group(root, prefix, best_losses, **config):
    """One run per seed, each reaching the given best validation loss at epoch 2."""
    for seed, best in enumerate(best_losses, start=1):
        write_run(root, f"{prefix}-s{seed}", val_losses=(best + 0.02, best, best + 0.01), seed=seed, **config)


# The README's seed example (embedded default, --seed 1/2/3, with and without --b 0.1).
README_BASELINE = {1: 0.1665, 2: 0.1268, 3: 0.2261}
README_FLOODING = {1: 0.1970, 2: 0.1632, 3: 0.2021}


def write_readme_seeds(root, baseline=README_BASELINE, flooding=README_FLOODING):
    for seed, best in baseline.items():
        write_run(root, f"base-s{seed}", val_losses=(best + 0.05, best, best + 0.02), seed=seed)
    for seed, best in flooding.items():
        write_run(root, f"flood-s{seed}", val_losses=(best + 0.05, best, best + 0.02), seed=seed, mode="flooding", b=0.1)


HINT = "; pass run folders or folders that hold them (each has metrics.csv)"


runner = CliRunner()
