"""The speed benchmark still runs end to end (a few steps: a smoke test, not a timing)."""

import statistics
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bench_train  # noqa: E402

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)


@pytest.mark.parametrize("data", ["shipped", ("short", 12)], ids=["shipped e-mails", "synthetic short texts"])
def test_bench_runs_every_side_and_the_paired_mode_timing(monkeypatch, data):
    quick = {"model": bench_train.WORKLOADS["tiny"]["model"], "data": data, "batch": 8, "steps": 3, "warmup": 1, "block": 2}
    monkeypatch.setitem(bench_train.WORKLOADS, "quick", quick)
    summary = bench_train.run_workload("quick", "cpu", repeats=1, compile_model=False, mode_rounds=3, mode_block=2)
    results = summary["results"]
    assert set(results) == {"hf_trainer", "flood_baseline", "flood_flooding", "flood_alternate"}
    for entry in results.values():
        assert entry["samples_per_s"] > 0 and entry["tokens_per_s"] > 0
        assert entry["mfu"] is None  # not given on CPUs
    # The derived figures, recomputed from the speeds the summary reports (one repeat:
    # each median is that repeat's figure).
    trainer, baseline = results["hf_trainer"]["samples_per_s"], results["flood_baseline"]["samples_per_s"]
    for key, entry in results.items():
        assert entry["samples_per_s"] == statistics.median(entry["samples_per_s_all"]), key
        # tokens_per_s is rounded to 0.1, samples_per_s to 0.01, padded_length to 0.1.
        speed, length = entry["samples_per_s"], entry["padded_length"]
        slack = 0.05 + (0.05 + length * 0.005) / speed
        assert entry["tokens_per_s"] / speed == pytest.approx(length, abs=slack), key
        assert entry["ratio_to_trainer"] == pytest.approx(entry["samples_per_s"] / trainer, abs=6e-4), key
        if key != "hf_trainer":
            assert entry["slowdown_vs_flood_baseline_pct"] == pytest.approx(100 * (1 - entry["samples_per_s"] / baseline), abs=6e-3), key
    eval_speed = results["flood_baseline"]["eval_samples_per_s"]
    ratio = eval_speed / baseline  # eval_samples_per_s rounded to 0.1, the ratio to 0.01
    assert results["flood_baseline"]["eval_vs_train_per_example"] == pytest.approx(ratio, abs=0.005 + (0.05 + ratio * 0.005) / baseline)
    # Both sides pad the same way: the same padded length per row.
    assert results["hf_trainer"]["padded_length"] == pytest.approx(results["flood_baseline"]["padded_length"], rel=0.25)
    overhead = summary["mode_overhead"]
    assert (overhead["rounds"], overhead["steps_per_block"]) == (3, 2)
    assert set(overhead["modes"]) == {"baseline", "flooding", "iflood", "adaflood", "alternate", "backstitch", "gradnorm"}
    for mode in set(overhead["modes"]) - {"baseline"}:
        low, high = overhead["modes"][mode]["slowdown_pct_95ci"]
        assert low <= overhead["modes"][mode]["slowdown_pct"] <= high


def test_checkpoint_bench_times_a_write_and_a_read(tmp_path):
    import json
    import subprocess

    script = ROOT / "bench" / "bench_checkpoint.py"
    args = ["--layers", "1", "--hidden", "32", "--vocab", "100", "--repeats", "2", "--dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["checkpoint_bytes"] > 4 * 3 * report["params"]  # weights and AdamW's two moments, fp32
    assert len(report["write_s_all"]) == 2 and report["read_s_median"] > 0
    assert list(tmp_path.iterdir()) == []  # nothing left behind
