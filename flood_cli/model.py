"""Tokenizer and classifier: a Hub name, a local folder, or a tiny BERT built from scratch."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from flood_cli.config.schema import ModelConfig
from flood_cli.core.errors import FloodError, shown

TINY_TOKENIZER = "tiny-tokenizer"
# Any of these marks a folder as holding a tokenizer (fast, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
    "sentencepiece.bpe.model", "tokenizer.model",
)


def _is_local(name: str) -> bool:
    # resolve_paths has made relative folders of a config file absolute; a name that is
    # neither absolute, nor ./-like, nor an existing path is taken as a Hub name.
    return Path(name).is_absolute() or name.startswith((".", "~")) or Path(name).exists()


def _check_local(what: str, name: str, key: str) -> None:
    """Clear messages for the usual mistakes with local folders, before transformers
    reports them in its own terms (or, for a weights file, with a traceback)."""
    if not _is_local(name):
        return
    path = Path(name).expanduser()
    if not path.exists():
        raise FloodError(f"{what} folder {name} does not exist; fix {key}")
    if not path.is_dir():
        raise FloodError(f"{what} path {name} is a file, not a folder; point {key} to the folder that holds it")
    if what == "model" and not (path / "config.json").is_file():
        raise FloodError(
            f"model folder {name} has no config.json; point {key} to a folder written by save_pretrained "
            "(config.json and model.safetensors)"
        )
    # transformers builds an empty tokenizer (every word [UNK]) from a folder that holds
    # only a model's config.json, so a missing tokenizer must be caught here.
    if what == "tokenizer" and not any((path / file).is_file() for file in TOKENIZER_FILES):
        raise FloodError(
            f"tokenizer folder {name} holds no tokenizer files (tokenizer.json, tokenizer_config.json or vocab.txt); "
            f"save the tokenizer there with save_pretrained, or set model.tokenizer"
        )


def check_sources(cfg: ModelConfig) -> None:
    """Before torch and transformers are imported: the local folders a config names hold
    what they must, and its Hub names can be fetched or are cached (see `check_hub`).
    The same checks, in the same order, as `load_tokenizer` and `build_model` make."""
    if cfg.tokenizer is not None:
        _check_local("tokenizer", cfg.tokenizer, "model.tokenizer")
    if cfg.name_or_path is not None:
        if cfg.tokenizer is None:
            _check_local("model", cfg.name_or_path, "model.name_or_path")
            _check_local("tokenizer", cfg.name_or_path, "model.name_or_path")
        _check_local("model", cfg.name_or_path, "model.name_or_path")
    check_hub(cfg)


# ---------------------------------------------------------------------------
# The Hub, when it cannot be reached: one quick look instead of minutes of retries

HUB_TIMEOUT_S = 3.0
_hub_answers: dict[str, str | None] = {}  # endpoint -> None when it answered, else why not
_cache_only: set[str] = set()  # Hub names to load from the local cache (the Hub is unreachable)


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the libraries never ask the Hub."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_unreachable(timeout: float = HUB_TIMEOUT_S) -> str | None:
    """None when the Hub's endpoint answers an HTTP request within ``timeout`` seconds
    (any answer: it is there); otherwise why not, in a few words. Asked once per process."""
    endpoint = hub_endpoint()
    if endpoint not in _hub_answers:
        _hub_answers[endpoint] = _ask(endpoint, timeout)
    return _hub_answers[endpoint]


def _ask(url: str, timeout: float) -> str | None:
    import threading
    import urllib.error
    import urllib.request

    answer: list[str | None] = [f"no answer within {timeout:g} s"]

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            answer[0] = None
        except urllib.error.HTTPError:  # an HTTP status, even an error: the Hub is there
            answer[0] = None
        except urllib.error.URLError as exc:
            reason = exc.reason
            answer[0] = shown(getattr(reason, "strerror", None) or str(reason) or type(reason).__name__)
        except Exception as exc:  # a timeout, a reset connection, a TLS failure
            answer[0] = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else shown(str(exc) or type(exc).__name__)

    # In a thread, so that a name lookup that hangs (which the socket timeout does not
    # cover) cannot hold the command past ``timeout`` either.
    thread = threading.Thread(target=ask, name="flood-hub-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0]


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(isinstance(try_to_load_from_cache(name, file), str) for file in ("config.json", "tokenizer_config.json"))
    except Exception:  # a name that is no repository id, an unreadable cache
        return False


def check_hub(cfg: ModelConfig) -> None:
    """For a model or tokenizer given by its Hub name, unless HF_HUB_OFFLINE is set: ask
    the Hub's endpoint once, with a short timeout. When it does not answer, a name in
    the local cache is loaded from there (no retries), and any other is a FloodError at
    once, instead of a minute of retry warnings before the same failure."""
    if _offline():
        return
    for what, key, name in (("model", "model.name_or_path", cfg.name_or_path), ("tokenizer", "model.tokenizer", cfg.tokenizer)):
        if name is None or _is_local(name) or name in _cache_only:
            continue
        reason = hub_unreachable()
        if reason is None:
            return
        if _cached(name):
            _cache_only.add(name)
            continue
        raise FloodError(
            f"{what} '{name}' is not a local folder and not in the Hugging Face cache, and the Hub cannot be reached "
            f"({hub_endpoint()}: {reason}); point {key} to a downloaded folder, or cache the {what} where the Hub "
            "can be reached and run with HF_HUB_OFFLINE=1"
        )


def _hub_options(name: str) -> dict[str, Any]:
    return {"local_files_only": True} if name in _cache_only else {}


def _not_found(what: str, name: str, key: str, exc: Exception) -> FloodError:
    if _is_local(name):
        holds = "config.json and model.safetensors" if what == "model" else "tokenizer.json or vocab.txt, tokenizer_config.json"
        return FloodError(
            f"{what} folder {name} cannot be loaded ({_first_line(exc)}); it must be a folder written by "
            f"save_pretrained ({holds}): fix {key}"
        )
    return FloodError(
        f"{what} '{name}' is neither a local folder nor loadable from the Hugging Face Hub "
        f"({_first_line(exc)}); check the name, connect to the network, or point {key} "
        "to a downloaded folder"
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def quiet_transformers() -> None:
    """Library code stays quiet: no weight-loading progress bars or load reports on
    stderr (the CLI draws its own progress); errors still surface as exceptions."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


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
    key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    if cfg.tokenizer is None:
        # The model's folder is read first for its tokenizer: name the model in errors.
        _check_local("model", name, key)
    _check_local("tokenizer", name, key)
    check_hub(cfg)
    try:
        return AutoTokenizer.from_pretrained(name, **_hub_options(name))
    except Exception as exc:  # transformers raises OSError, ValueError, JSON and other errors
        raise _not_found("tokenizer" if cfg.tokenizer else "model", name, key, exc) from None


def build_model(cfg: ModelConfig, label_names: list[str], tokenizer: Any, max_length: int) -> Any:
    """A sequence classifier with ``len(label_names)`` outputs and the label names kept."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    id2label = dict(enumerate(label_names))
    label2id = {name: index for index, name in id2label.items()}
    if cfg.tiny is not None:
        tiny = cfg.tiny
        config = BertConfig(  # type: ignore[call-arg]  # transformers' stub lists BertConfig's own fields only; num_labels, id2label, label2id go to PretrainedConfig
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
    _check_local("model", name, "model.name_or_path")
    check_hub(cfg)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name,
            **_hub_options(name),
            # id2label sets num_labels too; passing num_labels as well makes transformers
            # warn that it disagrees with the checkpoint's own id2label.
            id2label=id2label,
            label2id=label2id,
            # A checkpoint fine-tuned on other labels keeps its body; its head is new.
            ignore_mismatched_sizes=True,
        )
    except Exception as exc:  # transformers raises OSError, ValueError, unpickling and other errors
        raise _not_found("model", name, "model.name_or_path", exc) from None
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and max_length > max_positions:
        raise FloodError(
            f"data.max_length {max_length} exceeds the model's {max_positions} positions; set data.max_length <= {max_positions}"
        )
    return model


def attention_format(model: Any) -> str:
    """How batches should carry their padding mask to ``model`` (see ``data.Collator``).

    ``"sdpa"`` only where it is known to give the same attention: a BERT-type model
    running SDPA attention under transformers 5, whose ``create_bidirectional_mask``
    takes no mask as "no padding" and passes a 4-D mask through as it is. Everything
    else gets the usual 2-D mask."""
    import transformers

    config = getattr(model, "config", None)
    major = int(transformers.__version__.split(".")[0])
    if major >= 5 and getattr(config, "model_type", None) == "bert" and getattr(config, "_attn_implementation", None) == "sdpa":
        return "sdpa"
    return "2d"
