"""Every config and study the project ships validates as it is: configs/*.yaml as a
`flood train` config, each studies/*.yaml as what it is (a base config, spam-*, through
load_config; a --settings file, methods-*, through the sweep's read_settings), each
study's base config with its settings as the sweep `make study` makes (every run's
config validated, nothing trained), and every ```yaml example of the README as a
config (a mapping) or a --settings file (a list)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flood_cli.config.load import load_config
from flood_cli.core import safe_yaml
from flood_cli.sweep import create as sweep_create
from flood_cli.sweep import spec as sweep_spec
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
STUDIES = sorted(path.stem.split("-", 1)[1] for path in (ROOT / "studies").glob("spam-*.yaml"))
STUDY_FILES = sorted((ROOT / "studies").glob("*.yaml"))
README_YAML = re.findall(r"^```yaml\n(.*?)^```$", (ROOT / "README.md").read_text(encoding="utf-8"), re.S | re.M)


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


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda path: path.name)
def test_each_study_file_validates_as_what_it_is(path: Path):
    kind = path.stem.split("-", 1)[0]
    assert kind in ("spam", "methods"), f"{path.name}: neither a base config (spam-*) nor a settings file (methods-*)"
    if kind == "spam":
        assert load_config(path).train.epochs > 0
    else:
        assert all("train.mode" in setting for setting in sweep_spec.read_settings(path))


def test_readme_has_yaml_examples():
    assert README_YAML, "no ```yaml example found in README.md"


@pytest.mark.parametrize("number", range(len(README_YAML)))
def test_each_readme_yaml_example_validates(tmp_path, number: int):
    text = README_YAML[number]
    path = tmp_path / "example.yaml"
    path.write_text(text, encoding="utf-8")
    data = safe_yaml.load(text)
    if isinstance(data, list):  # a --settings file
        assert sweep_spec.read_settings(path)
    else:
        assert isinstance(data, dict) and "model" in data, f"README yaml example {number + 1} is neither a config nor settings"
        load_config(path)
