"""Benchmark `flood compare` on many synthetic run folders (no training, no GPU).

    .venv/bin/python bench/bench_compare.py                 # 1,000 runs, prints JSON
    .venv/bin/python bench/bench_compare.py --runs 200 --out bench/compare.json
    .venv/bin/python bench/bench_compare.py --runs 20 --keep /tmp/runs   # folders to look at

It writes N run folders (config.yaml, metrics.csv, summary.json, as `flood train` does)
into a temporary folder, in seed groups of several modes, with U-shaped validation
loss curves and seed noise, then times the library call `compare_command` and the
`flood compare` command in a fresh process (the figure a user feels: Python start,
imports, reading every folder, rendering).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.run_factory import write_run  # noqa: E402  (the run-folder writer the tests use)

# (mode, flood level b, lr, ascent_lr, how much lower its best val loss is on average)
SETTINGS = [
    ("baseline", None, 2e-5, None, 0.0),
    ("baseline", None, 1e-5, None, 0.004),
    ("flooding", 0.4, 2e-5, None, -0.004),
    ("flooding", 0.5, 2e-5, None, -0.012),
    ("flooding", 0.7, 2e-5, None, -0.002),
    ("alternate", None, 1e-5, 1e-6, -0.02),
]


def synthetic_curve(rng: random.Random, evaluations: int, shift: float) -> tuple[list[float], list[float], list[float]]:
    """Validation loss falling then rising (overfitting), accuracy still rising, train loss falling."""
    noise = rng.gauss(0.0, 0.006)
    turn = rng.uniform(0.3, 0.5) * evaluations
    val_losses, val_accuracies, train_losses = [], [], []
    for i in range(1, evaluations + 1):
        val_losses.append(0.80 + shift + noise + 0.0035 * (i - turn) ** 2 / max(1.0, evaluations / 6) + rng.gauss(0, 0.002))
        val_accuracies.append(0.70 + 0.12 * (1 - math.exp(-i / (0.4 * evaluations))) + rng.gauss(0, 0.003))
        train_losses.append(1.1 * math.exp(-i / (0.45 * evaluations)) + 0.05 + rng.gauss(0, 0.01))
    return val_losses, val_accuracies, train_losses


def make_runs(root: Path, count: int, epochs: int = 5, evaluations_per_epoch: int = 2, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        mode, b, lr, ascent_lr, shift = SETTINGS[index % len(SETTINGS)]
        run_seed = index // len(SETTINGS)
        curves = synthetic_curve(rng, epochs * evaluations_per_epoch, shift)
        name = f"{mode}" + (f"-b{b:g}" if b is not None else "") + f"-lr{lr:g}" + (f"-alr{ascent_lr:g}" if ascent_lr else "") + f"-s{run_seed}"
        paths.append(write_run(
            root, name, val_losses=curves[0], val_accuracies=curves[1], train_losses=curves[2],
            evaluations_per_epoch=evaluations_per_epoch, mode=mode, b=b, lr=lr, ascent_lr=ascent_lr,
            seed=run_seed, epochs=epochs,
        ))
    return paths


def time_call(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def time_subprocess(arguments: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(arguments, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3), "max_s": round(max(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="number of run folders [1000]")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each measurement [3]")
    parser.add_argument("--out", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--keep", type=Path, help="write the runs to this (new) folder and keep them")
    args = parser.parse_args()

    from flood_cli.compare.command import compare_command

    with tempfile.TemporaryDirectory(prefix="flood-bench-") as temporary:
        root = args.keep or Path(temporary) / "runs"
        start = time.perf_counter()
        make_runs(root, args.runs)
        create_s = time.perf_counter() - start
        flood = [sys.executable, "-m", "flood_cli", "compare", str(root)]
        result = {
            "runs": args.runs,
            "repeats": args.repeats,
            "create_runs_s": round(create_s, 3),
            "compare_command_table": summarise(time_call(lambda: compare_command([root]), args.repeats)),
            "compare_command_json": summarise(time_call(lambda: compare_command([root], as_json=True), args.repeats)),
            "flood_compare_subprocess": summarise(time_subprocess(flood, args.repeats)),
            "flood_compare_json_subprocess": summarise(time_subprocess(flood + ["--json"], args.repeats)),
            # A plot of a thousand runs is no one's figure, but it must not take minutes.
            "flood_compare_plot_subprocess": summarise(time_subprocess(flood + ["--plot", str(Path(temporary) / "curves.png")], 1)),
            "machine": {
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "system": platform.platform(),
            },
            "date": datetime.now(timezone.utc).date().isoformat(),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
