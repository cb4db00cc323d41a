"""The README's configuration reference is the one scripts/config_reference.py renders
from the pydantic models, and every key of the schema has a description."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT

# train.mode's line belongs to the mode registry (being written in parallel), which
# gives it its description; until then it is the one key the reference shows without one.


def _reference_module():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_reference_is_generated_from_the_schema():
    reference = _reference_module()
    block = reference.readme_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert block is not None, "README.md has no config-reference markers; run `python scripts/config_reference.py --write`"
    assert block == reference.render(), (
        "README.md's configuration reference differs from the schema; run `python scripts/config_reference.py --write`"
    )


def test_every_config_key_has_a_description():
    reference = _reference_module()
    fields = dict(reference.rows(reference.Config, ""))
    missing = [key for key in fields if not reference.description(fields[key])]
    assert not missing, f"config keys without a description (write Field(description=...)): {missing}"
    assert len(fields) > 60
