"""Tokenizer and classifier: a Hub name, a local folder, or a tiny BERT built from scratch."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from flood_cli.config import ModelConfig
from flood_cli.errors import FloodError

TINY_TOKENIZER = "tiny-tokenizer"


def _not_found(what: str, name: str, exc: Exception) -> FloodError:
    if Path(name).is_absolute() or name.startswith("."):
        if not Path(name).exists():
            return FloodError(f"{what} folder {name} does not exist; fix model.name_or_path (or model.tokenizer)")
        return FloodError(
            f"{what} folder {name} cannot be loaded ({_first_line(exc)}); it must hold a Hugging Face "
            "save_pretrained folder (config.json and weights, tokenizer files)"
        )
    return FloodError(
        f"{what} '{name}' is neither a local folder nor loadable from the Hugging Face Hub "
        f"({_first_line(exc)}); check the name, connect to the network, or point model.name_or_path "
        "to a downloaded folder"
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer named in the config; a tiny model defaults to the shipped WordPiece
    tokenizer (4,000 uncased tokens learnt from the shipped e-mails)."""
    from transformers import AutoTokenizer

    if cfg.tokenizer is None and cfg.tiny is not None:
        folder = resources.files("flood_cli") / "assets" / TINY_TOKENIZER
        with resources.as_file(folder) as path:
            return AutoTokenizer.from_pretrained(str(path))
    name = cfg.tokenizer or cfg.name_or_path
    assert name is not None, "validated by the config"
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise _not_found("tokenizer", name, exc) from None


def build_model(cfg: ModelConfig, label_names: list[str], tokenizer: Any, max_length: int) -> Any:
    """A sequence classifier with ``len(label_names)`` outputs and the label names kept."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    id2label = dict(enumerate(label_names))
    label2id = {name: index for index, name in id2label.items()}
    if cfg.tiny is not None:
        tiny = cfg.tiny
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=tiny.hidden_size,
            num_hidden_layers=tiny.num_layers,
            num_attention_heads=tiny.num_heads,
            intermediate_size=tiny.intermediate_size,
            hidden_dropout_prob=tiny.dropout,
            attention_probs_dropout_prob=tiny.dropout,
            max_position_embeddings=max(512, max_length),
            pad_token_id=tokenizer.pad_token_id,
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
        )
        return BertForSequenceClassification(config)
    name = cfg.name_or_path
    assert name is not None, "validated by the config"
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name,
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
            # A checkpoint fine-tuned on other labels keeps its body; its head is new.
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError, EnvironmentError) as exc:
        raise _not_found("model", name, exc) from None
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and max_length > max_positions:
        raise FloodError(
            f"data.max_length {max_length} exceeds the model's {max_positions} positions; set data.max_length <= {max_positions}"
        )
    return model
