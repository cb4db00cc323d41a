"""What the config layer knows without pydantic, cheap to import (`flood compare` reads
saved configs as plain data): the most flood reads of a config file, and a model or
data section said in a few characters, as run labels show it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The most flood reads of a config file: your --config, and a run folder's config.yaml
# (a config has a few kB).
MAX_CONFIG_BYTES = 2**20


def describe_model(model: dict[str, Any]) -> str:
    """A config's model section in a few characters, as run labels show it."""
    tiny = model.get("tiny")
    if isinstance(tiny, dict):
        return f"tiny-bert(L{tiny.get('num_layers')},H{tiny.get('hidden_size')},A{tiny.get('num_heads')})"
    return str(model.get("name_or_path") or "?")


def describe_data(data: dict[str, Any]) -> str:
    """A config's data section in a few characters: the dataset, or the training file's name."""
    if data.get("dataset"):
        return str(data["dataset"]) + (f"/{data['subset']}" if data.get("subset") else "")
    if data.get("train_file"):
        return Path(str(data["train_file"])).name
    return "?"
