"""Test set-up: no network, all Hugging Face caches in a temporary folder, and a small
config on the shipped data so that real training runs take a few seconds."""

import os
import tempfile

# Read by huggingface_hub / datasets at import time, so set before anything imports them.
_CACHE = tempfile.mkdtemp(prefix="flood-tests-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _CACHE
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE, "datasets")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import glob  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
SHIPPED_DATA = ROOT / "data" / "spam-assassin-small.csv"


def small_config(**sections) -> dict:
    """configs/tiny.yaml cut down for tests (few examples, short texts, 2 epochs);
    keyword arguments update whole keys of a section: small_config(train={"mode": ...})."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["data"].update(
        train_file=str(SHIPPED_DATA), max_train_examples=192, max_val_examples=64, max_length=48
    )
    config["train"].update(epochs=2, batch_size=16, eval_batch_size=64)
    config["runtime"].update(device="cpu", precision="fp32")
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def write_config(folder: Path, config: dict, name: str = "cfg.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A small, valid config whose runs go to tmp_path/runs."""
    return write_config(tmp_path, small_config(output={"dir": str(tmp_path / "runs")}))


def csv_bytes_without_time(run_dir: Path) -> list[bytes]:
    """A run's metrics.csv as bytes, line by line, without the time column: what a resumed
    run must reproduce exactly (line endings included)."""
    from flood_cli.runs import TIME_COLUMNS

    content = (run_dir / "metrics.csv").read_bytes()
    lines = content.split(b"\n")
    drop = lines[0].split(b",").index(TIME_COLUMNS[0].encode())
    return [b",".join(f for i, f in enumerate(line.split(b",")) if i != drop) for line in lines]


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped where no CUDA GPU is visible (CI, this machine)."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check on a GPU machine)")
    for item in marked:
        item.add_marker(skip)


# ---------------------------------------------------------------------------
# A real PostgreSQL server, as a temporary cluster on a free port


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    initdb, server = _postgres_bin("initdb"), _postgres_bin("postgres")
    if not initdb or not server:
        pytest.skip("PostgreSQL is not installed (`make test` installs it with apt-get install postgresql)")
    # Not under pytest's temporary folder: as root the server runs as the postgres user,
    # who cannot enter pytest's private (0700) folders.
    folder = Path(tempfile.mkdtemp(prefix="flood-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
        os.chmod(folder, 0o755)
    data = folder / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "flood"], check=True, capture_output=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server_process = subprocess.Popen(
        [*as_user, server, "-D", str(data), "-p", str(port), "-k", str(folder), "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import sqlalchemy

    url = f"postgresql+psycopg://flood@127.0.0.1:{port}/postgres"
    deadline = time.time() + 60
    while True:
        try:
            engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("CREATE DATABASE sweeps"))
            engine.dispose()
            break
        except Exception:
            if time.time() > deadline or server_process.poll() is not None:
                server_process.terminate()
                raise
            time.sleep(0.2)
    yield f"postgresql://flood@127.0.0.1:{port}/sweeps"
    server_process.terminate()
    server_process.wait(timeout=30)
    shutil.rmtree(folder, ignore_errors=True)
