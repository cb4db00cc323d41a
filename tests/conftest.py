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
    from flood_cli.runs.columns import TIME_COLUMNS

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


class PostgresServer:
    """A temporary PostgreSQL cluster on a free port, with a database `sweeps`; it can be
    stopped and started again on the same port and data (a database restart)."""

    def __init__(self) -> None:
        initdb, self.server = _postgres_bin("initdb"), _postgres_bin("postgres")
        if not initdb or not self.server:
            pytest.skip("PostgreSQL is not installed (`make test` installs it with apt-get install postgresql)")
        # Not under pytest's temporary folder: as root the server runs as the postgres
        # user, who cannot enter pytest's private (0700) folders.
        self.folder = Path(tempfile.mkdtemp(prefix="flood-postgres-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.folder, "postgres")
            os.chmod(self.folder, 0o755)
        self.data = self.folder / "data"
        subprocess.run([*self.as_user, initdb, "-D", str(self.data), "-A", "trust", "-U", "flood"], check=True, capture_output=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process: subprocess.Popen | None = None
        self.start()
        self._run_sql("CREATE DATABASE sweeps")
        self.url = f"postgresql://flood@127.0.0.1:{self.port}/sweeps"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*self.as_user, self.server, "-D", str(self.data), "-p", str(self.port), "-k", str(self.folder), "-c", "listen_addresses=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._run_sql("SELECT 1")

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open connections are cut, as in a restart."""
        if self.process is not None and self.process.poll() is None:
            # To the server itself (postmaster.pid's first line): runuser passes SIGINT on to no one.
            os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), 2)
            self.process.wait(timeout=60)

    def _run_sql(self, text: str) -> None:
        import sqlalchemy

        url = f"postgresql+psycopg://flood@127.0.0.1:{self.port}/postgres"
        deadline = time.time() + 60
        while True:
            try:
                engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
                with engine.connect() as connection:
                    connection.execute(sqlalchemy.text(text))
                engine.dispose()
                return
            except Exception:
                if time.time() > deadline or self.process.poll() is not None:
                    self.process.terminate()
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer()
    yield server.url
    server.close()
