"""The run directory layout: the trainer writes it, evaluation and compare read it.

    runs/<name>/
      recipe.resolved.yaml   the recipe as it ran
      metrics.jsonl          one JSON object per logged step (+ monitor probe lines)
      baseline/              the base model's safety report (written by evaluation)
      checkpoints/step-N/    HF model folders
      final/                 the final model and its safety report
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RESOLVED_RECIPE = "recipe.resolved.yaml"
METRICS_LOG = "metrics.jsonl"
BASELINE_DIR = "baseline"
FINAL_DIR = "final"


def find_run_dir(path: Path) -> Path | None:
    """The nearest folder at or above `path` that holds recipe.resolved.yaml."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if (folder / RESOLVED_RECIPE).is_file():
            return folder
    return None


def read_metrics_log(run_dir: Path) -> list[dict]:
    """metrics.jsonl as a list of dicts; a line cut short by a crash is skipped."""
    path = Path(run_dir) / METRICS_LOG
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def checkpoint_step(checkpoint: Path, history: list[dict]) -> int | None:
    """`checkpoints/step-N` -> N; any other folder (final/) -> the last logged step."""
    match = re.fullmatch(r"step-(\d+)", Path(checkpoint).name)
    if match:
        return int(match.group(1))
    steps = [row["step"] for row in history if isinstance(row.get("step"), int)]
    return max(steps) if steps else None


def wall_time_at(step: int | None, history: list[dict]) -> float | None:
    """Seconds of training up to `step`, from the log's `elapsed_s`."""
    times = [row["elapsed_s"] for row in history
             if "elapsed_s" in row and (step is None or row.get("step", 0) <= step)]
    return times[-1] if times else None
