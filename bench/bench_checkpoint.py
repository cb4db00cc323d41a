"""What a checkpoint costs: write and read times of `checkpoints/last.pt` for a model size.

    .venv/bin/python bench/bench_checkpoint.py                   # BERT-base: 110 M params
    .venv/bin/python bench/bench_checkpoint.py --layers 4 --hidden 256 --repeats 5
    .venv/bin/python bench/bench_checkpoint.py --dir /mnt/fast  # on another disk

A run checkpoints (weights, AdamW's two moments, RNG states) at every evaluation: the
training thread copies the state to the CPU (`checkpoint.snapshot`), and a background
thread writes it atomically: a temporary file, fsync, rename (`flood_cli/train/checkpoint.py`).
This times both parts, and a read back, on the disk under --dir: the snapshot is what
the training thread pays, the write is what it no longer waits for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from flood_cli.train import checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=30522, help="BERT-base's vocabulary by default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=ROOT, help="a folder on the disk to measure")
    options = parser.parse_args()

    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=options.vocab,
        hidden_size=options.hidden,
        num_hidden_layers=options.layers,
        num_attention_heads=max(1, options.hidden // 64),
        intermediate_size=4 * options.hidden,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model(input_ids=torch.randint(0, options.vocab, (2, 16)), labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()  # AdamW's moments exist from the first step on

    folder = Path(tempfile.mkdtemp(prefix="flood-bench-ckpt-", dir=options.dir))
    path = folder / "last.pt"
    snapshots, writes, reads = [], [], []
    try:
        for _ in range(options.repeats):
            start = time.perf_counter()
            live = {"model": model.state_dict(), "optimizers": [optimizer.state_dict()], "rng": checkpoint.capture_rng()}
            payload = checkpoint.snapshot(live)
            snapshots.append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpoint.save(path, payload)
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpoint.read_data(path)  # the read a resume does (its entries are not a full run's here)
            reads.append(time.perf_counter() - start)
        size = path.stat().st_size
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {
        "params": sum(p.numel() for p in model.parameters()),
        "checkpoint_bytes": size,
        "snapshot_s_median": round(statistics.median(snapshots), 3),
        "snapshot_s_all": [round(t, 3) for t in snapshots],
        "write_s_median": round(statistics.median(writes), 3),
        "write_s_all": [round(t, 3) for t in writes],
        "read_s_median": round(statistics.median(reads), 3),
        "write_gb_per_s": round(size / statistics.median(writes) / 1e9, 2),
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
