"""Set-up for the flood compare tests."""

import pytest


@pytest.fixture(autouse=True)
def no_terminal_width(monkeypatch):
    """Tables are fitted to COLUMNS when it is set: the tests choose it themselves."""
    monkeypatch.delenv("COLUMNS", raising=False)
