"""Training speed: flood's loop against HF Trainer on the same work, every mode.

    .venv/bin/python bench/bench_train.py                      # CPU: tiny and small BERT
    .venv/bin/python bench/bench_train.py --workloads small --repeats 5
    python bench/bench_train.py --device cuda                  # GPU: BERT-base body, bf16

Each workload fixes model, data, batch size and precision. In every repeat, HF Trainer
and flood's loop in each mode (baseline, flooding, alternate) run the same number of
optimizer steps in this one process, in rotating order; after warm-up steps, the timed
window covers the data loader, forward, backward, the mode's gradient handling, clipping
and the optimizer step (no evaluation, no checkpoint). Figures are medians over repeats.

Also measured: evaluation speed per example against training, and the start-up time of
`flood --help` and `flood compare`. Results go to a JSON file (--out) and stdout.

MFU counts 6 × non-embedding parameters × padded tokens plus attention
(12 × layers × hidden × padded length per token), against the GPU's dense bf16 peak;
it is not given on CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402

from flood_cli.config.load import load_config  # noqa: E402
from flood_cli.core.reporting import NullReporter  # noqa: E402
from flood_cli.train.loop import Trainer  # noqa: E402

SHIPPED = ROOT / "data" / "spam-assassin-small.csv"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}

# model.tiny section, data, batch size, timed steps, warm-up steps, steps per block of the paired mode timing
WORKLOADS: dict[str, dict[str, Any]] = {
    "tiny": {"model": dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128), "data": "shipped", "batch": 32, "steps": 150, "warmup": 10, "block": 10},
    "small": {"model": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024), "data": "shipped", "batch": 32, "steps": 30, "warmup": 5, "block": 3},
    # Per-step overhead dominates, as for BERT-base on short texts on a GPU.
    "tiny-short": {"model": dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128), "data": ("short", 40), "batch": 32, "steps": 200, "warmup": 10, "block": 20},
    "base-b32-len128": {"model": "base", "data": ("fixed", 128), "batch": 32, "steps": 60, "warmup": 15, "block": 10},
    "base-b128-len128": {"model": "base", "data": ("fixed", 128), "batch": 128, "steps": 40, "warmup": 10, "block": 5},
    "base-b32-short": {"model": "base", "data": ("short", 40), "batch": 32, "steps": 400, "warmup": 20, "block": 20},
}
BASE = dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072)
# The GPU targets of the speed issue, each read off flood's baseline in one workload.
TARGETS = [
    {"target": "flood >= 1.6x HF Trainer, batch 32 x 128 tokens", "workload": "base-b32-len128", "metric": "ratio_to_trainer", "min": 1.6},
    {"target": "flood >= 35 % MFU, batch 128 x 128 tokens", "workload": "base-b128-len128", "metric": "mfu", "min": 0.35},
    {"target": "flood >= 2x HF Trainer on short texts", "workload": "base-b32-short", "metric": "ratio_to_trainer", "min": 2.0},
]
MODES = {
    "baseline": {"mode": "baseline"},
    "flooding": {"mode": "flooding", "b": 0.5},
    "alternate": {"mode": "alternate", "ascent_lr": 1e-5},
}
# The paired per-step cost covers the whole flooding family (the timed comparison with
# HF Trainer keeps to the three modes above).
PAIRED_MODES = {
    **MODES,
    "iflood": {"mode": "iflood", "b": 0.5},
    "adaflood": {"mode": "adaflood"},
    "backstitch": {"mode": "backstitch"},
    "gradnorm": {"mode": "gradnorm"},
}


# ---------------------------------------------------------------------------
# Work


def synthetic_csv(folder: Path, kind: str, length: int, rows: int, vocabulary: list[str]) -> Path:
    """Texts of random vocabulary words: `fixed` fills max_length, `short` varies around `length`."""
    rng = random.Random(0)
    path = folder / f"synthetic-{kind}-{length}.csv"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("text,label\n")
        for i in range(rows):
            words = length * 2 if kind == "fixed" else max(4, int(rng.gauss(length, length / 3)))
            handle.write(" ".join(rng.choice(vocabulary) for _ in range(words)) + f",{'ab'[i % 2]}\n")
    return path


def make_config(folder: Path, workload: dict[str, Any], device: str, mode: dict[str, Any], compile_model: bool) -> Any:
    tiny = BASE if workload["model"] == "base" else workload["model"]
    data: dict[str, Any] = {"train_file": str(SHIPPED), "max_length": 128, "validation_fraction": 0.2}
    if workload["data"] != "shipped":
        kind, length = workload["data"]
        vocabulary = [w for w in (ROOT / "flood_cli" / "assets" / "tiny-tokenizer" / "vocab.txt").read_text().split() if w.isalpha()]
        rows = (workload["steps"] + workload["warmup"] + 5) * workload["batch"]
        data = {"train_file": str(synthetic_csv(folder, kind, length, rows, vocabulary)), "max_length": 128, "validation_fraction": 0.1}
    precision = "bf16" if device == "cuda" else "fp32"
    config = {
        "model": {"tiny": {**tiny, "dropout": 0.1}},
        "data": data,
        "train": {"lr": 2e-5, "batch_size": workload["batch"], "eval_batch_size": 256, "epochs": 50, **mode},
        "runtime": {"device": device, "precision": precision, "compile": compile_model},
        "output": {"dir": str(folder / "runs"), "save_best_model": False},  # HF Trainer runs with save_strategy "no"
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def batch_stream(trainer: Trainer):
    """The training steps (plan and micro-batches), epoch after epoch, as the loop draws them."""
    epoch = 0
    while True:
        yield from trainer.epoch_steps(epoch)
        epoch += 1


def time_flood(cfg: Any, workload: dict[str, Any], device: str) -> dict[str, float]:
    trainer = Trainer(cfg, NullReporter())
    trainer.model.train()
    stream = batch_stream(trainer)
    samples = tokens = 0
    start = 0.0
    for index in range(workload["warmup"] + workload["steps"]):
        step, micro_batches = next(stream)
        if index == workload["warmup"]:
            synchronize(device)
            start = time.perf_counter()
        if index >= workload["warmup"]:
            samples += step.examples
            tokens += sum(int(batch["input_ids"].numel()) for batch in micro_batches)
        trainer.train_step(step, micro_batches)
        trainer.progress.step += 1
    synchronize(device)
    elapsed = time.perf_counter() - start

    # Evaluation over the validation split, timed the same way.
    trainer.evaluate("val")  # warm-up
    synchronize(device)
    eval_start = time.perf_counter()
    trainer.evaluate("val")
    synchronize(device)
    eval_elapsed = time.perf_counter() - eval_start
    return {
        "samples_per_s": samples / elapsed,
        "tokens_per_s": tokens / elapsed,
        "padded_length": tokens / samples,
        "eval_samples_per_s": len(trainer.data.validation) / eval_elapsed,
        "non_embedding_params": non_embedding_params(trainer.raw_model),
    }


def cuda_syncs_per_step(trainer: Trainer, stream: Any, steps: int = 5) -> float | None:
    """Host-device synchronisations per training step, as CUDA's sync debug mode counts
    them (None off CUDA; on the CPU, tests/train/test_no_sync.py counts host reads instead)."""
    if not torch.cuda.is_available() or trainer.accelerator.device.type != "cuda":
        return None
    import warnings

    batches = [next(stream) for _ in range(steps)]
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for batch in batches:
                trainer.train_step(*batch)
                trainer.progress.step += 1
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def paired_mode_overhead(name: str, device: str, rounds: int, block: int, compile_model: bool) -> dict[str, Any]:
    """What each mode costs per step against flood's baseline, resolved below the noise
    of separate runs: one trainer per mode lives in this process, and in every round each
    runs ``block`` steps, in rotating order. A mode's cost is the median over rounds of
    its time per step divided by the baseline's in the same round, so drifts of the
    machine that are slower than a round cancel out."""
    workload = WORKLOADS[name]
    with tempfile.TemporaryDirectory() as tmp:
        trainers: dict[str, Trainer] = {}
        for mode, settings in PAIRED_MODES.items():
            folder = Path(tmp) / mode
            folder.mkdir()
            cfg = make_config(folder, workload, device, settings, compile_model)
            # AdaFlood's levels come from auxiliary runs; their cost is not per step, so
            # the per-step cost is measured with levels drawn at random.
            levels = torch.rand(100_000) if mode == "adaflood" else None
            trainers[mode] = Trainer(cfg, NullReporter(), levels)
        streams = {mode: batch_stream(trainer) for mode, trainer in trainers.items()}
        per_step: dict[str, list[float]] = {mode: [] for mode in trainers}
        for _ in range(workload["warmup"]):
            for mode, trainer in trainers.items():
                trainer.train_step(*next(streams[mode]))
                trainer.progress.step += 1
        # Counted after the warm-up: lazy optimizer state and compilation are one-offs.
        syncs = {mode: cuda_syncs_per_step(trainers[mode], streams[mode]) for mode in trainers}
        for round_index in range(rounds):
            order = list(trainers)
            order = order[round_index % len(order):] + order[: round_index % len(order)]
            for mode in order:
                trainer, stream = trainers[mode], streams[mode]
                batches = [next(stream) for _ in range(block)]
                synchronize(device)
                start = time.perf_counter()
                for batch in batches:
                    trainer.train_step(*batch)
                    trainer.progress.step += 1
                synchronize(device)
                per_step[mode].append((time.perf_counter() - start) / block)
        del trainers
    rng = random.Random(0)
    result: dict[str, Any] = {"rounds": rounds, "steps_per_block": block, "modes": {}}
    for mode, times in per_step.items():
        entry: dict[str, Any] = {"ms_per_step": round(1000 * statistics.median(times), 3), "cuda_syncs_per_step": syncs[mode]}
        if mode != "baseline":
            ratios = [t / b for t, b in zip(times, per_step["baseline"], strict=True)]
            # 95 % bootstrap interval of the median ratio, over rounds.
            medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
            entry["slowdown_pct"] = round(100 * (statistics.median(ratios) - 1), 2)
            entry["slowdown_pct_95ci"] = [round(100 * (medians[49] - 1), 2), round(100 * (medians[1949] - 1), 2)]
        result["modes"][mode] = entry
    return result


def time_hf_trainer(cfg: Any, workload: dict[str, Any], device: str) -> dict[str, float]:
    import datasets
    from transformers import DataCollatorWithPadding, TrainerCallback, TrainingArguments
    from transformers import Trainer as HFTrainer

    from flood_cli.data.prepare import prepare_data
    from flood_cli.model import build_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg.data, tokenizer)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.label_names, tokenizer, cfg.data.max_length)
    train = datasets.Dataset.from_dict({"input_ids": data.train.input_ids, "labels": data.train.labels})

    collated = {"samples": 0, "tokens": 0}
    pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=cfg.runtime.pad_to_multiple_of)

    def collate(features):
        batch = pad(features)
        collated["samples"] += int(batch["input_ids"].shape[0])
        collated["tokens"] += int(batch["input_ids"].numel())
        return batch

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == workload["warmup"]:
                synchronize(device)
                clock["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            synchronize(device)
            clock["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=cfg.train.batch_size,
            max_steps=workload["warmup"] + workload["steps"],
            learning_rate=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            lr_scheduler_type="linear",
            max_grad_norm=cfg.train.max_grad_norm,
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=device == "cpu",
            bf16=device == "cuda",
            optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",
            dataloader_num_workers=0,
            torch_compile=cfg.runtime.compile,
            seed=cfg.train.seed,
        )
        trainer = HFTrainer(model=model, args=args, train_dataset=train, data_collator=collate, callbacks=[Clock()])
        trainer.train()
    elapsed = clock["end"] - clock["start"]
    samples = workload["steps"] * cfg.train.batch_size
    mean_length = collated["tokens"] / collated["samples"]
    return {"samples_per_s": samples / elapsed, "tokens_per_s": samples * mean_length / elapsed, "padded_length": mean_length}


def non_embedding_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)


def mfu(result: dict[str, float], layers: int, hidden: int, params: int) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((value for key, value in PEAK_BF16.items() if key in name), None)
    if peak is None:
        return None
    flops_per_token = 6 * params + 12 * layers * hidden * result["padded_length"]
    return flops_per_token * result["tokens_per_s"] / peak


# ---------------------------------------------------------------------------
# Driver


def run_workload(name: str, device: str, repeats: int, compile_model: bool, mode_rounds: int, mode_block: int) -> dict[str, Any]:
    workload = WORKLOADS[name]
    shape = BASE if workload["model"] == "base" else workload["model"]
    runners: dict[str, Callable[[Any], dict[str, float]]] = {"hf_trainer": lambda cfg: time_hf_trainer(cfg, workload, device)}
    for mode in MODES:
        runners[f"flood_{mode}"] = lambda cfg: time_flood(cfg, workload, device)
    samples: dict[str, list[dict[str, float]]] = {key: [] for key in runners}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for repeat in range(repeats):
            order = list(runners)
            order = order[repeat % len(order):] + order[: repeat % len(order)]
            for key in order:
                mode = MODES[key.removeprefix("flood_")] if key.startswith("flood_") else MODES["baseline"]
                cfg = make_config(folder, workload, device, mode, compile_model)
                samples[key].append(runners[key](cfg))
                print(f"  {name} repeat {repeat + 1}/{repeats} {key}: {samples[key][-1]['samples_per_s']:.1f} samples/s", file=sys.stderr)
    params = next(s["non_embedding_params"] for s in samples["flood_baseline"])
    summary: dict[str, Any] = {
        "workload": name,
        "model": shape,
        "non_embedding_params": params,
        "batch_size": workload["batch"],
        "data": workload["data"],
        "timed_steps": workload["steps"],
        "warmup_steps": workload["warmup"],
        "repeats": repeats,
        "compile": compile_model,
        "results": {},
    }
    for key, runs in samples.items():
        median = {metric: statistics.median(r[metric] for r in runs) for metric in runs[0]}
        entry = {
            "samples_per_s": round(median["samples_per_s"], 2),
            "tokens_per_s": round(median["tokens_per_s"], 1),
            "padded_length": round(median["padded_length"], 1),
            "samples_per_s_all": [round(r["samples_per_s"], 2) for r in runs],
        }
        value = mfu(median, shape["num_layers"], shape["hidden_size"], params)
        entry["mfu"] = round(value, 4) if value is not None else None
        if "eval_samples_per_s" in median:
            entry["eval_samples_per_s"] = round(median["eval_samples_per_s"], 1)
            entry["eval_vs_train_per_example"] = round(median["eval_samples_per_s"] / median["samples_per_s"], 2)
        summary["results"][key] = entry
    trainer_speed = summary["results"]["hf_trainer"]["samples_per_s"]
    base_speed = summary["results"]["flood_baseline"]["samples_per_s"]
    for key, entry in summary["results"].items():
        entry["ratio_to_trainer"] = round(entry["samples_per_s"] / trainer_speed, 3)
        if key.startswith("flood_"):
            entry["slowdown_vs_flood_baseline_pct"] = round(100 * (1 - entry["samples_per_s"] / base_speed), 2)
    if mode_rounds:
        print(f"  {name}: paired mode overhead, {mode_rounds} rounds of {mode_block} steps", file=sys.stderr)
        summary["mode_overhead"] = paired_mode_overhead(name, device, mode_rounds, mode_block, compile_model)
    return summary


def target_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each GPU target against every run of its workload (eager and compiled): measured
    is flood baseline's figure (None where not given, e.g. MFU off CUDA), met is None
    where nothing was measured."""
    rows = []
    for target in TARGETS:
        for summary in summaries:
            if summary["workload"] != target["workload"]:
                continue
            measured = summary["results"]["flood_baseline"][target["metric"]]
            rows.append({
                **target,
                "compile": summary["compile"],
                "measured": measured,
                "met": None if measured is None else measured >= target["min"],
            })
    return rows


def format_targets(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'target':<50} {'compile':<8} {'measured':>9}  met"]
    for row in rows:
        measured = "n/a" if row["measured"] is None else f"{row['measured']:.3f}"
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "NO")
        lines.append(f"{row['target']:<50} {str(row['compile']).lower():<8} {measured:>9}  {met}")
    return "\n".join(lines)


def time_command(args: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def cli_startup() -> dict[str, float]:
    flood = str(Path(sys.executable).parent / "flood")
    from tests.run_factory import write_run

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(10):
            write_run(Path(tmp), f"run{i}", seed=i)
        return {"flood --help": time_command([flood, "--help"]), "flood compare (10 runs)": time_command([flood, "compare", tmp])}


def environment(device: str) -> dict[str, Any]:
    from importlib.metadata import version

    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    for package in ("torch", "transformers", "accelerate", "datasets"):
        info[package] = version(package)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workloads", default=None, help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile in both flood and HF Trainer")
    parser.add_argument("--mode-rounds", type=int, default=20, help="rounds of the paired mode-overhead measurement (0: skip)")
    parser.add_argument("--mode-block", type=int, default=None, help="steps per mode per round (default: by workload)")
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    names = options.workloads.split(",") if options.workloads else (
        ["base-b32-len128", "base-b128-len128", "base-b32-short"] if options.device == "cuda" else ["tiny", "small"]
    )
    report = {"environment": environment(options.device), "workloads": []}
    for name in names:
        block = options.mode_block or WORKLOADS[name]["block"]
        report["workloads"].append(
            run_workload(name, options.device, options.repeats, options.compile, options.mode_rounds, block)
        )
    report["cli_startup_s"] = cli_startup()
    report["targets"] = target_rows(report["workloads"])
    if report["targets"]:
        print(format_targets(report["targets"]), file=sys.stderr)
    text = json.dumps(report, indent=2)
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
