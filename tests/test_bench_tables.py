"""bench/lab_bench.py's README table: one row per config and setting, one column per task."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_lab_bench():
    if str(ROOT / "bench") not in sys.path:  # where a script finds bench/common.py
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("lab_bench", ROOT / "bench" / "lab_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(task, config, setting, retained, over, task_score=1.0):
    stat = lambda mean: {"mean": mean, "std": 0.01, "min": mean, "n": 3}  # noqa: E731
    return {"task": task, "config": config, "setting": setting, "retained": stat(retained),
            "over_refusal_rate": stat(over), "task_score": stat(task_score)}


def test_readme_table_has_a_column_per_task_and_orders_configs():
    bench = load_lab_bench()
    summary = [entry("extract", "mix", "harmful-10%", 0.6, 0.01, 0.86), entry("sentiment", "mix", "benign", 0.98, 0.02),
               entry("sentiment", "standard", "benign", 0.01, 0.0), entry("extract", "mix", "benign", 0.97, 0.02)]
    metrics = {"metrics": {"harmful_refusal_rate": 0.983, "over_refusal_rate": 0.015}}
    meta = {"command": "python bench/lab_bench.py", "machine": "x", "seconds": 1.0, "seeds": [0, 1, 2],
            "tasks": ["sentiment", "extract"]}
    table = bench.readme_table(summary, {"sentiment": metrics, "extract": metrics}, meta)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [
        "| standard | benign | 0.01 ± 0.01 · 0.00 | – | 1.00 |",
        "| mix | benign | 0.98 ± 0.01 · 0.02 | 0.97 ± 0.01 · 0.02 | 1.00 |",
        "| mix | harmful-10% | – | 0.60 ± 0.01 · 0.01 | 0.86 |",
    ]
