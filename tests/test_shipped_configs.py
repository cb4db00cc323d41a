"""Every config and study the project ships validates as it is: configs/*.yaml as a
`flood train` config, and each study's base config with its settings as the sweep
`make study` makes (every run's config validated, nothing trained)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flood_cli.config.schema import load_config
from flood_cli.sweep import create as sweep_create
from flood_cli.sweep import spec as sweep_spec
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
STUDIES = sorted(path.stem.split("-", 1)[1] for path in (ROOT / "studies").glob("spam-*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_each_shipped_config_validates(path: Path):
    cfg = load_config(path)
    assert cfg.train.epochs > 0 and (cfg.model.name_or_path or cfg.model.tiny)


@pytest.mark.parametrize("study", STUDIES)
def test_each_shipped_study_is_a_valid_sweep(tmp_path, study: str):
    assert STUDIES == ["clean", "noisy"]
    listed = sweep_spec.read_settings(ROOT / "studies" / f"methods-{study}.yaml")
    spec = sweep_create.create_sweep(ROOT / "studies" / f"spam-{study}.yaml", None, {}, [1, 2], [], 0, tmp_path, study, None, None, listed=listed)
    modes = {sweep_spec.Setting(overrides).mode for overrides in spec.settings}
    assert modes == {"baseline", "flooding", "iflood", "adaflood", "alternate", "backstitch"}
    assert spec.expected_runs == 2 * len(spec.settings) == 2 * (len(listed) + (0 if {"train.mode": "baseline"} in listed else 1))
