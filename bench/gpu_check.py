"""`make gpu-check`: what has never run on a GPU, run once, in under 8 minutes on one H200.

Stages (each one timed; FLOOD_GPU_CHECK_STAGES picks some, comma-separated):

* precision: every mode (baseline, flooding, iflood, adaflood, alternate, backstitch,
  gradnorm) for a few dozen steps on BERT-base's shape (randomly initialised, 12 layers,
  hidden 768, 12 heads; nothing downloaded) in bf16, eager and compiled, against an fp32
  eager run of the same steps from the same weights on the same batches. Each step's
  training loss must be finite and within TOLERANCE (below) of the fp32 run's.
* oracle: flood's evaluation figures after a few training steps, on a ragged split (37
  validation examples in batches of 16, 23 test examples), against tests/oracle.py
  (plain transformers on the CPU, one example at a time): fp32 to float rounding, bf16
  (eager and compiled) to the bf16 tolerance.
* pytest: `pytest -m gpu tests/train/test_gpu.py` (two-pass modes' RNG replay and parameter
  shifts on CUDA, fused optimizers, against hand-written references).
* bench: bench/bench_train.py's GPU workloads (one repeat each, a short paired mode
  timing), eager first, then compiled, as long as the time budget lasts; the speed
  targets are shown against what was measured.

Correctness failures make the exit status 1; speed targets not met do not (they are
reported). One JSON goes to $OUT (a folder: gpu-check-DATE.json inside it; or a file
path) or bench/results/gpu-check-DATE.json, and one table to stdout.

Knobs: FLOOD_GPU_CHECK_MODES (some modes, comma-separated), FLOOD_GPU_CHECK_TOLERANCE
(tighten the bf16 bound once measured), FLOOD_GPU_CHECK_BUDGET_S (default 450 s on a GPU:
the bench stage skips what would not fit), FLOOD_GPU_CHECK_COMPILE=0/1.

On a machine without a GPU, FLOOD_GPU_CHECK_DEVICE=cpu (`make gpu-check DEVICE=cpu`) runs
the same stages at a tiny shape (2 layers, hidden 64, a few steps; fp32 against bf16
autocast on the CPU; compiled runs only with FLOOD_GPU_CHECK_COMPILE=1), so the script,
the JSON and the table are checked end to end by tests/test_gpu_check_smoke.py.

Why the tolerance: bf16 keeps 8 significant bits, so each rounding is off by up to 2^-8
relative. Under autocast the matmuls accumulate in fp32 and round their outputs to bf16;
LayerNorm, softmax and the loss run in fp32. A layer rounds about four tensors on the
path to the logits (QKV, attention output, FFN in, FFN out); independent roundings add in
quadrature, so after L layers the logits are off by about sqrt(4L) * 2^-8 relative
(0.027 for L = 12), and the cross-entropy, whose slope in the logits is at most 1, by
about as much times max(1, loss). Training for a few dozen steps lets the weights drift
apart too; a factor 2 covers that: TOLERANCE = 2 * sqrt(4L) * 2^-8 (0.054 at L = 12,
0.022 at L = 2), on |loss_bf16 - loss_fp32| / max(1, loss_fp32) at every step. The
largest difference seen is written to the JSON, so the bound can be tightened once
measured.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Datasets' tokenization cache goes to a fresh folder: nothing of an earlier run is reused.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="flood-gpu-check-hf-"))

import bench_train  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from flood_cli.config.load import load_config  # noqa: E402
from flood_cli.core.reporting import NullReporter  # noqa: E402
from flood_cli.train.loop import Trainer  # noqa: E402
from tests import oracle  # noqa: E402

SHIPPED = ROOT / "data" / "spam-assassin-small.csv"
TINY = dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128)
STAGES = ("precision", "oracle", "pytest", "bench")
# Shapes and sizes of the check: BERT-base on a GPU, a tiny BERT for the CPU smoke run.
SETTINGS: dict[str, dict[str, Any]] = {
    "cuda": {"model": bench_train.BASE, "batch": 16, "max_length": 128, "steps": 24, "lr": 1e-4, "oracle_steps": 4,
             "compile": True, "budget_s": 450.0, "mode_rounds": 6},
    "cpu": {"model": TINY, "batch": 8, "max_length": 48, "steps": 6, "lr": 1e-3, "oracle_steps": 2,
            "compile": False, "budget_s": 600.0, "mode_rounds": 0},
}
# The bench's GPU workloads, eager before compiled: run while the budget lasts.
BENCH_PLAN = [(name, compiled) for compiled in (False, True) for name in ("base-b32-len128", "base-b128-len128", "base-b32-short")]
# On the CPU the same workloads at the tiny shape, a few steps each (a smoke test, not a timing).
CPU_WORKLOAD = {"model": TINY, "batch": 8, "steps": 2, "warmup": 1, "block": 1}


def modes(lr: float) -> dict[str, dict[str, Any]]:
    """The modes' settings. A random classifier's loss starts near ln 2 = 0.69 and a few
    dozen steps barely move it, so with b = 0.5 the floods would be the baseline; b = 1
    makes them ascend at every step (every example, for iflood), which runs the sign
    path. A b near the loss would make bf16 and fp32 choose different signs on some
    steps, a real difference but not a rounding one. Which examples flip is tested on
    the CPU (tests/train/test_modes.py)."""
    return {
        "baseline": {"mode": "baseline"},
        "flooding": {"mode": "flooding", "b": 1.0},
        "iflood": {"mode": "iflood", "b": 1.0},
        "adaflood": {"mode": "adaflood"},
        "alternate": {"mode": "alternate", "ascent_lr": lr / 10},
        "backstitch": {"mode": "backstitch"},
        "gradnorm": {"mode": "gradnorm"},
    }


def tolerance(layers: int) -> float:
    """2 * sqrt(4L) * 2^-8: bf16's relative rounding, over about 4L roundings in
    quadrature, doubled for the weights' drift over the steps (module docstring)."""
    return 2 * math.sqrt(4 * layers) * 2.0**-8


# ---------------------------------------------------------------------------
# Set-up


def split_files(folder: Path, steps: int, batch: int) -> dict[str, dict[str, Path]]:
    """The shipped e-mails cut into the oracle's ragged split (100 / 37 / 23) and a
    training file of steps × batch examples for the precision runs."""
    examples = oracle.read_examples(SHIPPED)
    wanted = steps * batch
    train = examples[200:200 + wanted] if len(examples) >= 200 + wanted else (examples[200:] * (wanted // max(1, len(examples) - 200) + 1))[:wanted]
    write = oracle.write_examples
    return {
        "oracle": {
            "train_file": write(folder / "oracle-train.csv", examples[:100]),
            "validation_file": write(folder / "oracle-val.csv", examples[100:137]),
            "test_file": write(folder / "oracle-test.csv", examples[137:160]),
        },
        "precision": {
            "train_file": write(folder / "precision-train.csv", train),
            "validation_file": write(folder / "oracle-val.csv", examples[100:137]),
        },
    }


def make_trainer(folder: Path, name: str, settings: dict[str, Any], device: str, precision: str, compiled: bool,
                 mode: dict[str, Any], files: dict[str, Path], dropout: float, pad_to: int) -> Trainer:
    config = {
        "model": {"tiny": {**settings["model"], "dropout": dropout}},
        "data": {**{key: str(path) for key, path in files.items()}, "max_length": settings["max_length"]},
        "train": {"lr": settings["lr"], "batch_size": settings["batch"], "eval_batch_size": 16, "epochs": 100,
                  "schedule": "constant", "warmup_ratio": 0.0, "seed": 0, **mode},
        "runtime": {"device": device, "precision": precision, "compile": compiled, "pad_to_multiple_of": pad_to},
        "output": {"dir": str(folder / "runs")},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    levels = None
    if mode["mode"] == "adaflood":
        # The levels come from auxiliary runs in a real run; any levels exercise the step.
        size = sum(1 for _ in oracle.read_examples(files["train_file"]))
        levels = torch.rand(size, generator=torch.Generator().manual_seed(0)) * 0.8
    return Trainer(cfg, NullReporter(), levels)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_losses(trainer: Trainer, steps: int, device: str) -> tuple[list[float], float]:
    """Each step's mean training loss (the first pass's, as the CSV averages them), read
    off the trainer's device-side running sums after each step; and ms per step after
    the first (compilation and lazy state are one-offs)."""
    stream = bench_train.batch_stream(trainer)
    trainer.model.train()
    sums, counts = [], []
    start = 0.0
    for index in range(steps):
        if index == 1:
            synchronize(device)
            start = time.perf_counter()
        plan, micro_batches = next(stream)
        trainer.train_step(plan, micro_batches)
        trainer.progress.step += 1
        sums.append(trainer.interval.loss_sum.detach().clone())
        counts.append(trainer.interval.examples)
    synchronize(device)
    ms = 1000 * (time.perf_counter() - start) / max(1, steps - 1)
    totals = torch.stack(sums).cpu().tolist()
    losses, previous_sum, previous_count = [], 0.0, 0
    for total, count in zip(totals, counts, strict=True):
        # A skipped step (non-finite loss, on_nonfinite: skip) adds no examples.
        losses.append((total - previous_sum) / (count - previous_count) if count > previous_count else math.nan)
        previous_sum, previous_count = total, count
    return losses, ms


# ---------------------------------------------------------------------------
# Stages


def stage_precision(folder: Path, settings: dict[str, Any], device: str, compiled: bool, deadline: float) -> dict[str, Any]:
    """Past ``deadline`` the compiled runs of the remaining modes are skipped (and said so)."""
    tol = settings["tolerance"]
    files = split_files(folder, settings["steps"], settings["batch"])["precision"]
    # Dropout off: bf16 and fp32 kernels draw their dropout masks differently (SDPA's
    # flash and math kernels), which would swamp rounding. Every batch padded to
    # max_length: one shape, so a compiled model compiles once.
    pad_to = settings["max_length"]
    variants = [("bf16", False)] + ([("bf16", True)] if compiled else [])
    result: dict[str, Any] = {"tolerance": tol, "tolerance_rule": "2 * sqrt(4 * layers) * 2**-8 on |loss_bf16 - loss_fp32| / max(1, loss_fp32), every step",
                              "steps": settings["steps"], "batch": settings["batch"], "max_length": settings["max_length"],
                              "lr": settings["lr"], "modes": {}}
    worst = 0.0
    for mode, train in modes(settings["lr"]).items():
        if mode not in settings["modes"]:
            continue
        start = time.perf_counter()
        reference = make_trainer(folder, f"{mode}-fp32", settings, device, "fp32", False, train, files, 0.0, pad_to)
        fp32, fp32_ms = train_losses(reference, settings["steps"], device)
        fp32_val = reference.evaluate("val")["loss"]
        del reference
        entry: dict[str, Any] = {"fp32": {"losses": fp32, "val_loss": fp32_val, "ms_per_step": round(fp32_ms, 2)}}
        for precision, compile_model in variants:
            key = f"{precision}_compiled" if compile_model else precision
            if compile_model and time.perf_counter() > deadline:
                entry[key] = {"skipped": "time budget"}
                continue
            trainer = make_trainer(folder, f"{mode}-{key}", settings, device, precision, compile_model, train, files, 0.0, pad_to)
            losses, ms = train_losses(trainer, settings["steps"], device)
            val = trainer.evaluate("val")["loss"]
            del trainer
            diffs = [abs(a - b) / max(1.0, abs(b)) for a, b in zip(losses, fp32, strict=True)]
            finite = all(math.isfinite(v) for v in losses + fp32 + [val, fp32_val])
            max_diff = max(diffs) if finite else math.inf
            val_diff = abs(val - fp32_val) / max(1.0, abs(fp32_val))
            worst = max(worst, max_diff, val_diff)
            entry[key] = {
                "losses": losses, "val_loss": val, "ms_per_step": round(ms, 2), "finite": finite,
                "max_rel_diff": max_diff, "val_rel_diff": val_diff,
                "ok": finite and max_diff <= tol and val_diff <= tol,
            }
        entry["fp32_loss_moved"] = fp32[0] - fp32[-1]
        entry["seconds"] = round(time.perf_counter() - start, 1)
        result["modes"][mode] = entry
        print(f"  precision {mode}: " + ", ".join(f"{k} max diff {v['max_rel_diff']:.2e}" for k, v in entry.items() if isinstance(v, dict) and "max_rel_diff" in v)
              + f" (tolerance {tol:.3f}), {entry['seconds']} s", file=sys.stderr)
    result["max_rel_diff_observed"] = worst
    result["ok"] = all(v["ok"] for entry in result["modes"].values() for v in entry.values() if isinstance(v, dict) and "ok" in v)
    return result


FIGURES = ("loss", "top10_share", "confidence", "ece")


def compare_with_oracle(got: dict[str, Any], truth: oracle.Figures, rows: list[tuple[float, bool, float]], exact: bool, tol: float) -> dict[str, Any]:
    """fp32 (exact=True): the figures to float rounding (as tests/train/test_oracle.py), counts
    equal. bf16: loss, top-10 share and confidence within the bf16 tolerance, and the
    correct count off by at most the examples whose oracle confidence is within the
    tolerance of a tie (0.5 with two labels: the only ones bf16 rounding can flip)."""
    expected = {"loss": truth.loss, "top10_share": truth.top10_share, "confidence": truth.confidence, "ece": truth.ece,
                "correct": truth.correct, "confident_wrong": truth.confident_wrong, "examples": truth.examples}
    diffs = {name: abs(got[name] - expected[name]) / max(1.0, abs(expected[name])) for name in FIGURES}
    near_ties = sum(1 for _, _, confidence in rows if confidence < 0.5 + tol)
    if exact:
        ok = (all(abs(got[n] - expected[n]) <= 1e-4 * abs(expected[n]) + 1e-7 for n in ("loss", "top10_share", "confidence"))
              and abs(got["ece"] - expected["ece"]) <= 1e-5
              and all(got[n] == expected[n] for n in ("correct", "confident_wrong", "examples")))
    else:
        ok = (all(diffs[n] <= tol for n in ("loss", "top10_share", "confidence"))
              and abs(got["correct"] - expected["correct"]) <= near_ties and got["examples"] == expected["examples"])
    return {"flood": {k: got[k] for k in expected}, "oracle": expected, "rel_diff": diffs, "near_ties": near_ties, "ok": ok}


def stage_oracle(folder: Path, settings: dict[str, Any], device: str, compiled: bool) -> dict[str, Any]:
    tol = settings["tolerance"]
    files = split_files(folder, settings["steps"], settings["batch"])["oracle"]
    tokenizer = oracle.load_tokenizer()
    splits = {"val": oracle.read_examples(files["validation_file"]), "test": oracle.read_examples(files["test_file"])}
    variants = [("fp32", False), ("bf16", False)] + ([("bf16", True)] if compiled else [])
    result: dict[str, Any] = {"train_examples": 100, "val_examples": len(splits["val"]), "test_examples": len(splits["test"]),
                              "eval_batch_size": 16, "train_steps": settings["oracle_steps"], "dropout": 0.1, "variants": {}}
    for precision, compile_model in variants:
        key = f"{precision}_compiled" if compile_model else precision
        # Padding to a multiple of 8 (the default): ragged batches, masks in use.
        trainer = make_trainer(folder, f"oracle-{key}", settings, device, precision, compile_model, {"mode": "baseline"}, files, 0.1, 8)
        train_losses(trainer, settings["oracle_steps"], device)
        state = {name: value.detach().float().cpu() for name, value in trainer.raw_model.state_dict().items()}
        model = oracle.load_model(state, config=trainer.raw_model.config)
        entry = {}
        for role, examples in splits.items():
            got = trainer.evaluate(role)
            rows = oracle.scored(model, tokenizer, examples, settings["max_length"])
            truth = oracle.figures(model, tokenizer, examples, settings["max_length"])
            entry[role] = compare_with_oracle(got, truth, rows, exact=precision == "fp32", tol=tol)
        entry["ok"] = all(part["ok"] for part in entry.values())
        result["variants"][key] = entry
        del trainer
        print(f"  oracle {key}: val loss {entry['val']['flood']['loss']:.6f} against {entry['val']['oracle']['loss']:.6f}, "
              f"{'ok' if entry['ok'] else 'FAILED'}", file=sys.stderr)
    result["ok"] = all(v["ok"] for v in result["variants"].values())
    return result


def stage_pytest() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/train/test_gpu.py"],
        cwd=ROOT, capture_output=True, text=True,
    )
    tail = (done.stdout + done.stderr).strip().splitlines()
    summary = tail[-1] if tail else ""
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    print("\n".join("  " + line for line in tail[-15:]), file=sys.stderr)
    return {"returncode": done.returncode, "summary": summary, "counts": counts,
            "ok": done.returncode == 0 and counts.get("failed", 0) == 0 and not counts.get("error") and not counts.get("errors"),
            "output_tail": tail[-40:]}


def stage_bench(device: str, settings: dict[str, Any], deadline: float) -> dict[str, Any]:
    if device == "cpu":
        # Flood's baseline and HF Trainer only: the targets read nothing else.
        bench_train.MODES = {"baseline": bench_train.MODES["baseline"]}
        for name in {name for name, _ in BENCH_PLAN}:
            bench_train.WORKLOADS[name] = {**CPU_WORKLOAD, "data": bench_train.WORKLOADS[name]["data"]}
    plan = [(name, compiled) for name, compiled in BENCH_PLAN if settings["compile"] or not compiled]
    summaries, skipped = [], []
    # Seconds a workload is expected to take, eager and compiled (compiling costs more).
    estimates = {False: 60.0, True: 180.0} if device == "cuda" else {False: 5.0, True: 30.0}
    for name, compiled in plan:
        left = deadline - time.perf_counter()
        estimate = estimates[compiled]
        if left < estimate:
            skipped.append({"workload": name, "compile": compiled, "reason": f"time budget: {left:.0f} s left, about {estimate:.0f} s needed"})
            continue
        start = time.perf_counter()
        summary = bench_train.run_workload(name, device, repeats=1, compile_model=compiled,
                                           mode_rounds=settings["mode_rounds"], mode_block=bench_train.WORKLOADS[name]["block"])
        summary["seconds"] = round(time.perf_counter() - start, 1)
        summaries.append(summary)
        estimates[compiled] = 1.2 * summary["seconds"]
        if not compiled:
            estimates[True] = max(estimates[True], 3 * summary["seconds"])
    return {"workloads": summaries, "skipped": skipped, "targets": bench_train.target_rows(summaries),
            "note": "tiny shape, a few steps: a smoke test, not a timing" if device == "cpu" else "one repeat each"}


# ---------------------------------------------------------------------------
# Report


def environment(device: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "python": platform.python_version(),
    }
    for package in ("torch", "transformers", "accelerate", "datasets", "pydantic"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    return info


def out_path(date: str) -> Path:
    name = f"gpu-check-{date}.json"
    out = os.environ.get("OUT")
    if not out:
        return ROOT / "bench" / "results" / name
    path = Path(out)
    return path / name if path.is_dir() or out.endswith("/") else path


def table(report: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    precision = report.get("precision")
    if precision and "modes" in precision:
        for mode, entry in precision["modes"].items():
            for key, value in entry.items():
                if isinstance(value, dict) and "max_rel_diff" in value:
                    rows.append((f"{mode} {key} vs fp32, {precision['steps']} steps", f"{value['max_rel_diff']:.2e}",
                                 f"<= {precision['tolerance']:.3f}", "ok" if value["ok"] else "FAILED"))
                elif isinstance(value, dict) and "skipped" in value:
                    rows.append((f"{mode} {key} vs fp32", "skipped", "", value["skipped"]))
    elif precision:
        rows.append(("precision", precision.get("error", "")[:40], "", "FAILED"))
    check = report.get("oracle")
    if check and "variants" in check:
        for key, entry in check["variants"].items():
            for role in ("val", "test"):
                part = entry[role]
                rows.append((f"oracle {key} {role} ({part['oracle']['examples']} ex., batch 16)",
                             f"loss {part['flood']['loss']:.5f} / {part['oracle']['loss']:.5f}",
                             "rel 1e-4, counts equal" if key == "fp32" else f"rel {report['tolerance']:.3f}",
                             "ok" if part["ok"] else "FAILED"))
    elif check:
        rows.append(("oracle", check.get("error", "")[:40], "", "FAILED"))
    tests = report.get("pytest")
    if tests:
        rows.append(("pytest -m gpu", tests.get("summary", tests.get("error", ""))[:40], "no failures", "ok" if tests["ok"] else "FAILED"))
    bench = report.get("bench")
    if bench:
        for target in bench.get("targets", []):
            measured = "n/a" if target["measured"] is None else f"{target['measured']:.3f}"
            met = "n/a" if target["met"] is None else ("met" if target["met"] else "not met")
            rows.append((f"{target['target']}{' (compiled)' if target['compile'] else ''}", measured, f">= {target['min']}", met))
        for skip in bench.get("skipped", []):
            rows.append((f"bench {skip['workload']}{' (compiled)' if skip['compile'] else ''}", "skipped", "", skip["reason"][:40]))
        if "error" in bench:
            rows.append(("bench", bench["error"][:40], "", "FAILED"))
    widths = [max(len(r[i]) for r in rows + [("check", "measured", "target", "status")]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("check", "measured", "target", "status"), widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("")
    lines.append("stage times: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["stage_seconds"].items())
                 + f"; total {report['total_seconds']:.1f} s")
    return "\n".join(lines)


def main() -> int:
    began = time.perf_counter()
    device = os.environ.get("FLOOD_GPU_CHECK_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in SETTINGS:
        print(f"gpu-check: FLOOD_GPU_CHECK_DEVICE is {device!r}; use cuda or cpu", file=sys.stderr)
        return 2
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU is visible; run `make gpu-check DEVICE=cpu` for the CPU smoke run", file=sys.stderr)
        return 2
    settings = dict(SETTINGS[device])
    if os.environ.get("FLOOD_GPU_CHECK_COMPILE"):
        settings["compile"] = os.environ["FLOOD_GPU_CHECK_COMPILE"] == "1"
    budget = float(os.environ.get("FLOOD_GPU_CHECK_BUDGET_S", settings["budget_s"]))
    settings["tolerance"] = float(os.environ.get("FLOOD_GPU_CHECK_TOLERANCE", tolerance(settings["model"]["num_layers"])))
    all_modes = list(modes(settings["lr"]))
    settings["modes"] = os.environ.get("FLOOD_GPU_CHECK_MODES", ",".join(all_modes)).split(",")
    unknown_modes = [m for m in settings["modes"] if m not in all_modes]
    if unknown_modes:
        print(f"gpu-check: unknown mode {unknown_modes[0]!r} in FLOOD_GPU_CHECK_MODES; use some of {', '.join(all_modes)}", file=sys.stderr)
        return 2
    deadline = began + budget
    stages = os.environ.get("FLOOD_GPU_CHECK_STAGES", ",".join(STAGES)).split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"gpu-check: unknown stage {unknown[0]!r} in FLOOD_GPU_CHECK_STAGES; use some of {', '.join(STAGES)}", file=sys.stderr)
        return 2
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    report: dict[str, Any] = {"environment": environment(device), "device": device, "smoke": device == "cpu",
                              "shape": settings["model"], "compile": settings["compile"], "budget_s": budget,
                              "tolerance": settings["tolerance"], "stage_seconds": {}}
    print(f"gpu-check on {report['environment']['device']}: stages {', '.join(stages)}, budget {budget:.0f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="flood-gpu-check-") as tmp:
        folder = Path(tmp)
        for stage in stages:
            start = time.perf_counter()
            print(f"stage {stage} ...", file=sys.stderr)
            try:
                if stage == "precision":
                    # At most half the budget: the compiled runs stop there.
                    report[stage] = stage_precision(folder, settings, device, settings["compile"], began + budget / 2)
                elif stage == "oracle":
                    report[stage] = stage_oracle(folder, settings, device, settings["compile"])
                elif stage == "pytest":
                    report[stage] = stage_pytest()
                else:
                    report[stage] = stage_bench(device, settings, deadline)
            except Exception as exc:  # one broken stage must not hide the others' figures
                traceback.print_exc()
                report[stage] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            report["stage_seconds"][stage] = round(time.perf_counter() - start, 1)
            print(f"stage {stage}: {report['stage_seconds'][stage]:.1f} s", file=sys.stderr)
    report["total_seconds"] = round(time.perf_counter() - began, 1)
    failed = [stage for stage in stages if report[stage].get("ok") is False or (stage == "bench" and "error" in report[stage])]
    report["failed"] = failed
    report["ok"] = not failed
    path = out_path(date)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    print(table(report))
    print(f"\n{'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)}; results in {path}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
