"""The mode registry (flood_cli.core.modes) and what reads it agree: every registered mode
has an objective and builds, every objective is registered, the facts each entry states
(flood level, optimizer, own keys, section) hold for its objective and its config."""

from dataclasses import fields

import pytest
import torch

from flood_cli.config.schema import MODE_SECTIONS, TrainConfig
from flood_cli.core.modes import BY_NAME, MODE_KEYS_OF, MODE_NAMES, MODES
from flood_cli.sweep import spec as sweep_spec
from flood_cli.train.objectives import OBJECTIVES, make_mode


def config_of(name: str) -> TrainConfig:
    """A valid train section of the mode: a flood level, an ascent rate where it needs them."""
    spec = BY_NAME[name]
    given = {"b": 0.1} if spec.flood_level else {}
    if "train.ascent_lr" in spec.keys:
        given["ascent_lr"] = 1e-4
    return TrainConfig(mode=name, lr=1e-3, **given)


def test_registry_and_objectives_name_the_same_modes():
    assert list(OBJECTIVES) == list(MODE_NAMES)
    assert len(set(MODE_NAMES)) == len(MODE_NAMES)


@pytest.mark.parametrize("name", MODE_NAMES)
def test_every_mode_builds_its_objective(name):
    spec = BY_NAME[name]
    objective = make_mode(config_of(name), torch.zeros(4))
    assert type(objective) is OBJECTIVES[name]
    # Flood-level modes are those whose objective floods at train.b.
    assert ("flood_level" in {f.name for f in fields(objective)}) == spec.flood_level
    if spec.flood_level:
        assert objective.flood_level == 0.1
    assert objective.optimizers[0] == spec.optimizer


@pytest.mark.parametrize("name", MODE_NAMES)
def test_own_keys_are_train_keys_of_that_mode_only(name):
    spec = BY_NAME[name]
    train = config_of(name)
    for key in spec.own_keys:
        assert key.removeprefix("train.") in TrainConfig.model_fields, key
    for key in spec.keys:  # unset in every other mode
        assert TrainConfig.model_fields[key.removeprefix("train.")].default is None
    if spec.section is not None:
        assert getattr(train, name) == MODE_SECTIONS[name]()  # filled with defaults
    if spec.curve_key is not None:
        assert spec.curve_key in spec.own_keys


def test_sections_and_sweep_keys_are_the_registrys():
    assert set(MODE_SECTIONS) == {mode.name for mode in MODES if mode.section is not None}
    assert set(sweep_spec.MODE_KEYS) == {key for mode in MODES for key in mode.own_keys}
    assert sweep_spec.MODE_KEYS_OF is MODE_KEYS_OF
    assert set(sweep_spec.CLEARED) == {key for mode in MODES for key in mode.own_keys if key not in mode.options}
    assert set(sweep_spec.CURVE_KEYS) == {mode.curve_key for mode in MODES if mode.curve_key is not None}
