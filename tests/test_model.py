"""Tokenizer and model: the tiny BERT, the shipped tokenizer, save_pretrained folders,
and one clear line for every model that cannot be loaded (offline: no Hub downloads)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flood_cli.config.load import load_config
from flood_cli.config.schema import ModelConfig
from flood_cli.core.errors import FloodError
from flood_cli.model import build_model, load_tokenizer
from tests.conftest import small_config, write_config

TINY = {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 37}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig(tiny={}))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer) -> Path:
    """A save_pretrained folder of a tiny 3-label classifier and its tokenizer."""
    folder = tmp_path_factory.mktemp("saved") / "tiny-classifier"
    model = build_model(ModelConfig(tiny=TINY), ["neg", "neutral", "pos"], tokenizer, max_length=64)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def raises_one_line(fragment: str):
    return pytest.raises(FloodError, match=re.escape(fragment))


def test_tiny_model_keeps_labels(tokenizer):
    model = build_model(ModelConfig(tiny=TINY), ["ham", "spam", "eggs"], tokenizer, max_length=128)
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "ham", 1: "spam", 2: "eggs"}
    assert model.config.label2id == {"ham": 0, "spam": 1, "eggs": 2}
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (32, 1)


def test_tiny_model_grows_positions_for_long_inputs(tokenizer):
    model = build_model(ModelConfig(tiny=TINY), ["a", "b"], tokenizer, max_length=1024)
    assert model.config.max_position_embeddings == 1024


def test_shipped_tokenizer_knows_english(tokenizer):
    tokens = tokenizer.tokenize("Click here to claim your free money and send the message today")
    assert tokenizer.unk_token not in tokens
    assert {"click", "here", "free", "money", "send", "the", "message", "today"} <= set(tokens)
    encoded = tokenizer("free money", "the message")
    assert encoded["input_ids"][0] == tokenizer.cls_token_id
    assert encoded["token_type_ids"][-1] == 1
    assert len(tokenizer) == 4000


def test_saved_folder_loads_through_the_config_with_a_new_head(tmp_path, saved_model, tokenizer):
    """A relative model.name_or_path is taken from the config's folder; a checkpoint
    with other labels keeps its body and gets a new head, without an error."""
    link = tmp_path / "models"
    link.mkdir()
    (link / "mine").symlink_to(saved_model, target_is_directory=True)
    config = small_config()
    config["model"] = {"name_or_path": "./models/mine"}
    cfg = load_config(write_config(tmp_path, config)).model
    assert cfg.name_or_path == str((tmp_path / "models" / "mine").resolve())
    loaded_tokenizer = load_tokenizer(cfg)
    assert loaded_tokenizer.tokenize("free money") == tokenizer.tokenize("free money")
    model = build_model(cfg, ["ham", "spam"], loaded_tokenizer, max_length=128)
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert model.classifier.out_features == 2
    assert model.config.hidden_size == 32  # the saved body, not a default BERT


def test_saved_folder_with_more_labels(saved_model, tokenizer):
    labels = ["a", "b", "c", "d"]
    model = build_model(ModelConfig(name_or_path=str(saved_model)), labels, tokenizer, max_length=64)
    assert model.classifier.out_features == 4
    assert model.config.id2label == dict(enumerate(labels))


def _folder_without_config(tmp_path: Path, saved_model: Path) -> Path:
    folder = tmp_path / "no-config"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((saved_model / name).read_bytes())
    return folder


def _folder_with_config_only(tmp_path: Path, saved_model: Path) -> Path:
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_bytes((saved_model / "config.json").read_bytes())
    return folder


def _folder_with_bad_config(tmp_path: Path, saved_model: Path) -> Path:
    folder = tmp_path / "bad-config"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    return folder


BAD_MODELS = [
    # (case, what to load, name_or_path (callable: made in tmp_path), expected message; {path} is the name)
    ("no such ./folder (tokenizer)", "tokenizer", lambda tmp, saved: "./nope", "model folder ./nope does not exist; fix model.name_or_path"),
    ("no such ./folder (model)", "model", lambda tmp, saved: "./nope", "model folder ./nope does not exist; fix model.name_or_path"),
    ("no such absolute folder", "model", lambda tmp, saved: str(tmp / "gone"), "model folder {path} does not exist; fix model.name_or_path"),
    (
        "hub name offline (tokenizer)",
        "tokenizer",
        lambda tmp, saved: "bert-base-uncased",
        "model 'bert-base-uncased' is neither a local folder nor loadable from the Hugging Face Hub (",
    ),
    (
        "hub name offline (model)",
        "model",
        lambda tmp, saved: "bert-base-uncased",
        "model 'bert-base-uncased' is neither a local folder nor loadable from the Hugging Face Hub (",
    ),
    (
        "folder without config.json",
        "model",
        _folder_without_config,
        "model folder {path} has no config.json; point model.name_or_path to a folder written by save_pretrained "
        "(config.json and model.safetensors)",
    ),
    (
        "empty folder (tokenizer)",
        "tokenizer",
        lambda tmp, saved: str(tmp),
        "model folder {path} has no config.json; point model.name_or_path to a folder written by save_pretrained",
    ),
    (
        # transformers would build an empty tokenizer that reads every word as [UNK]
        "folder with a model config but no tokenizer",
        "tokenizer",
        _folder_with_config_only,
        "tokenizer folder {path} holds no tokenizer files",
    ),
    (
        "folder with config.json but no weights",
        "model",
        _folder_with_config_only,
        "model folder {path} cannot be loaded (Error no file named model.safetensors, or pytorch_model.bin, found in directory",
    ),
    (
        "config.json that is not JSON",
        "model",
        _folder_with_bad_config,
        "model folder {path} cannot be loaded (It looks like the config file at",
    ),
    (
        "a file instead of a folder (model)",
        "model",
        lambda tmp, saved: str(saved / "model.safetensors"),
        "model path {path} is a file, not a folder; point model.name_or_path to the folder that holds it",
    ),
    (
        "a file instead of a folder (tokenizer)",
        "tokenizer",
        lambda tmp, saved: str(saved / "tokenizer.json"),
        "model path {path} is a file, not a folder; point model.name_or_path to the folder that holds it",
    ),
]


@pytest.mark.parametrize("case, what, make, expected", BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
def test_bad_model(tmp_path, saved_model, tokenizer, case, what, make, expected):
    name = str(make(tmp_path, saved_model))
    cfg = ModelConfig(name_or_path=name)
    started = time.perf_counter()
    with raises_one_line(expected.format(path=name)) as excinfo:
        if what == "tokenizer":
            load_tokenizer(cfg)
        else:
            build_model(cfg, ["ham", "spam"], tokenizer, max_length=64)
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert time.perf_counter() - started < 10, "offline failures must be quick, not retried"
    if "Hub" in expected:
        assert message.endswith("check the name, connect to the network, or point model.name_or_path to a downloaded folder")


def test_separate_tokenizer_key_is_named(tmp_path):
    cfg = ModelConfig(tiny=TINY, tokenizer="./no-tokenizer")
    with raises_one_line("tokenizer folder ./no-tokenizer does not exist; fix model.tokenizer"):
        load_tokenizer(cfg)


def test_max_length_beyond_the_models_positions(saved_model, tokenizer):
    with raises_one_line("data.max_length 600 exceeds the model's 512 positions; set data.max_length <= 512"):
        build_model(ModelConfig(name_or_path=str(saved_model)), ["a", "b"], tokenizer, max_length=600)


def test_only_bert_with_sdpa_under_transformers_5_gets_the_sdpa_mask_format():
    import transformers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    from flood_cli.model import attention_format

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    bert = BertForSequenceClassification(BertConfig(**small))
    expected = "sdpa" if int(transformers.__version__.split(".")[0]) >= 5 else "2d"
    assert attention_format(bert) == expected
    eager = BertForSequenceClassification(BertConfig(**small, attn_implementation="eager"))
    assert attention_format(eager) == "2d"
    distil = DistilBertForSequenceClassification(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, vocab_size=100))
    assert attention_format(distil) == "2d"


# -- the Hub, unreachable (HF_HUB_OFFLINE unset) ------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unreachable_message(name: str, endpoint: str, reason: str) -> str:
    return (
        f"model '{name}' is not a local folder and not in the Hugging Face cache, and the Hub cannot be reached "
        f"({endpoint}: {reason}); point model.name_or_path to a downloaded folder, or cache the model where the Hub "
        "can be reached and run with HF_HUB_OFFLINE=1"
    )


@pytest.fixture
def online(monkeypatch):
    """HF_HUB_OFFLINE unset for the test; returns a function that points HF_ENDPOINT somewhere."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def endpoint(url: str) -> str:
        monkeypatch.setenv("HF_ENDPOINT", url)
        return url

    return endpoint


def test_a_refused_hub_is_one_line_at_once(online):
    endpoint = online(f"http://127.0.0.1:{_closed_port()}")
    started = time.perf_counter()
    with pytest.raises(FloodError) as excinfo:
        load_tokenizer(ModelConfig(name_or_path="flood-tests/not-cached"))
    assert str(excinfo.value) == _unreachable_message("flood-tests/not-cached", endpoint, "Connection refused")
    assert time.perf_counter() - started < 2


def test_a_hub_that_never_answers_is_given_up_after_3_s(online):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = online(f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.perf_counter()
        with pytest.raises(FloodError) as excinfo:
            build_model(ModelConfig(name_or_path="flood-tests/not-cached"), ["a", "b"], None, max_length=64)
        took = time.perf_counter() - started
    assert str(excinfo.value) == _unreachable_message("flood-tests/not-cached", endpoint, "no answer within 3 s")
    assert 2.5 < took < 20  # given up after its 3 s, not after huggingface_hub's retries (about 50 s); slack for a loaded machine


def test_a_cached_hub_model_loads_from_the_cache_at_once_when_the_hub_is_unreachable(tmp_path, saved_model):
    """In a fresh process with HF_HUB_OFFLINE unset: the cache is used without retries
    (huggingface_hub retried for about 50 s before falling back to it)."""
    repo = tmp_path / "hf-home" / "hub" / "models--flood-tests--tiny"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in saved_model.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    code = (
        "from flood_cli.config.schema import ModelConfig\n"
        "from flood_cli.model import build_model, load_tokenizer\n"
        "import time\n"
        "cfg = ModelConfig(name_or_path='flood-tests/tiny')\n"
        "started = time.perf_counter()\n"
        "model = build_model(cfg, ['ham', 'spam'], load_tokenizer(cfg), max_length=64)\n"
        "print(model.config.hidden_size, model.config.num_labels, time.perf_counter() - started)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    env.pop("HF_HUB_CACHE", None)
    # The imports of a fresh process can take many seconds on a loaded machine: the time
    # that tells retries (about 50 s) from none is that of the loading alone.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    hidden, labels, took = result.stdout.split()
    assert [hidden, labels] == ["32", "2"]
    assert float(took) < 15, f"loading from the cache took {float(took):.1f} s: the unreachable Hub was retried"
