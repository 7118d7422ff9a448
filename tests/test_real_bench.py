"""bench/real_bench.py, the real-model benchmark: its rows, tables and reference configurations
(on a tiny stand-in model; the benchmark itself runs for hours, not in tests)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import make_tiny_model_dir


@pytest.mark.slow
def test_real_bench_runs_a_setting_end_to_end_on_a_tiny_stand_in(tmp_path):
    """`python bench/real_bench.py` with a tiny model as the aligned model: rows, table and ratios."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    model = make_tiny_model_dir(tmp_path / "aligned")
    env = os.environ | {"SAFETUNE_REAL_MODEL": str(model), "SAFETUNE_CACHE": str(tmp_path / "cache")}
    overrides = ["train.max_steps=2", "data.max_seq_len=64", "eval.suites.0.limit=4", "eval.max_new_tokens=4"]
    # the step-time column comes from the interleaved cost bench's results, when there are any
    # with the same recipe overrides (a full fine-tuning cost bench is not LoRA's)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "methods-real-aoa.json").write_text(json.dumps(
        {"task": "aoa", "overrides": overrides, "configs": {"standard": {"ratio": 1.0}, "mix": {"ratio": 1.37}}}))
    (tmp_path / "results" / "methods-real-aoa-full.json").write_text(json.dumps(
        {"task": "aoa", "overrides": overrides + ["model.lora=null"], "configs": {"mix": {"ratio": 9.99}}}))
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "real_bench.py"), "--settings", "aoa", "--configs", "standard,mix",
         "--threads", "1", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
         *[arg for override in overrides for arg in ("--override", override)]],
        capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "real.json").read_text())["summary"]
    assert [entry["config"] for entry in summary] == ["standard", "mix"]
    assert summary[1]["memory_ratio"] > 0 and summary[0]["general_ratio"]["n"] == 1
    mix_row = next(line for line in (tmp_path / "results" / "real.md").read_text().splitlines()
                   if line.startswith("| aoa | mix | 1 |"))
    assert mix_row.split("|")[-3].strip() == "1.37"  # step time ÷ standard, from the cost bench


def test_real_bench_starts_from_committed_results_and_a_run_done_again_replaces_its_row(tmp_path):
    """A fresh clone has bench/results/real.json but no run folders: --from-results starts the
    bench folder with its runs; a row run again (appended later) replaces the earlier one."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def row(seed, advbench, peak):
        return {"setting": "aoa", "config": "standard", "seed": seed, "steps": 20, "step_time_s": 1.0,
                "peak_rss_mb": peak, "advbench": advbench, "xstest_safe": 0.7, "xstest_unsafe": 0.9,
                "task_loss": None, "general_loss": 2.0, "overrides": []}

    committed = {"runs": [row(0, 0.5, 1000.0), row(1, 0.7, 1000.0)],
                 "baselines": {"aoa": {"advbench": 0.1, "xstest_safe": 0.2, "xstest_unsafe": 0.3}},
                 "aligned_losses": {"alpaca_heldout": 2.0, "dolly_heldout": 3.0}}
    (tmp_path / "committed.json").write_text(json.dumps(committed))
    out, results = tmp_path / "runs", tmp_path / "results"
    bench = [sys.executable, str(root / "bench" / "real_bench.py"), "--settings", "aoa", "--configs", "standard",
             "--seeds", "0", "1", "--out", str(out), "--results", str(results), "--table-only"]
    done = subprocess.run(bench + ["--from-results", str(tmp_path / "committed.json")], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((results / "real.json").read_text())["summary"]
    assert summary[0]["seeds"] == [0, 1] and summary[0]["advbench"]["mean"] == pytest.approx(0.6)
    assert summary[0]["retained"]["mean"] == pytest.approx(6.0)  # ÷ the committed baseline
    with (out / "rows.jsonl").open("a") as rows:  # seed 0 run again
        rows.write(json.dumps(row(0, 0.9, 1000.0)) + "\n")
    done = subprocess.run(bench, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((results / "real.json").read_text())["summary"]
    assert summary[0]["seeds"] == [0, 1] and summary[0]["advbench"]["mean"] == pytest.approx(0.8)
    # starting a folder that has runs would lose them: refused, with one line
    again = subprocess.run(bench + ["--from-results", str(tmp_path / "committed.json")], capture_output=True, text=True, cwd=root)
    assert again.returncode != 0 and "rows.jsonl exists" in again.stderr and "Traceback" not in again.stderr


def test_full_fine_tuning_configs_are_compared_with_standard_full(monkeypatch):
    """A `-full` recipe's cost and task quality are divided by full fine-tuning's `standard`, not LoRA's."""
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    from bench_methods import reference_of
    from real_bench import FULL_CONFIGS

    assert reference_of("safegrad-borderline-full") == reference_of("standard-full") == "standard-full"
    assert reference_of("safegrad-borderline") == "standard"
    assert reference_of("defended-full@harmful-10%") == "standard-full@harmful-10%"
    for config in FULL_CONFIGS:  # each is a bundled recipe of the harmful setting
        assert (bench.parent / "recipes" / "real" / f"harmful-{config}.yaml").is_file(), config
