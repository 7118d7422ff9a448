"""The run directory: its layout, how a run prepares it (new, overwrite, resume), and the
readers evaluation and compare use.

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
import shutil
from pathlib import Path
from typing import Any

import yaml

from safetune import checkpoint as ckpt
from safetune.errors import UsageError

RESOLVED_RECIPE = "recipe.resolved.yaml"
METRICS_LOG = "metrics.jsonl"
BASELINE_DIR = "baseline"
FINAL_DIR = "final"

# Changing these between an interrupted run and its resume is fine; anything else is refused.
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "train.save_every", "train.keep_checkpoints", "train.log_every",
                     "output", "eval", "monitor"}


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


# --------------------------------------------------------------------------- preparing a run
def prepare_run_dir(recipe, resume: bool, say=print) -> tuple[Path, Path | None]:
    """Create or check the run directory; return it and the checkpoint to resume from (if any)."""
    run_dir = recipe.output_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"output.dir: {run_dir} is a file, not a folder")
    # A baseline computed by `safetune baseline` beforehand is the only thing allowed in a new run dir.
    existing = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
    leftover = [name for name in existing if name != BASELINE_DIR]
    resume_from = None
    if resume:
        skipped: list[str] = []
        resume_from = ckpt.latest_checkpoint(run_dir, skipped)
        for line in skipped:
            say(f"warning: --resume {line}")
        if resume_from is None and (run_dir / FINAL_DIR).is_dir():
            raise UsageError(f"--resume: {run_dir} holds a finished run (final/); nothing to resume")
        if resume_from is None and skipped:  # keep the damaged files for inspection: never delete them
            raise UsageError(f"--resume: no checkpoint under {run_dir}/checkpoints verifies; "
                             "use output.overwrite=true to start again")
        if resume_from is not None:
            _refuse_changed_recipe(run_dir, recipe)
        elif leftover:
            # Crashed before its first checkpoint: nothing to continue, so start again cleanly.
            say(f"--resume: no usable checkpoint under {run_dir}/checkpoints; starting from step 0")
            _clear(run_dir, leftover)
    elif leftover and recipe.output.overwrite:
        _clear(run_dir, leftover)
    elif leftover:
        raise UsageError(
            f"output.dir: {run_dir} already holds a run; add --resume to continue it, "
            "output.overwrite=true to replace it, or choose another output.dir"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output.dir: cannot write to {run_dir} ({err.strerror or err})") from None
    return run_dir, resume_from


def _clear(run_dir: Path, names: list[str]) -> None:
    for name in names:
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def _refuse_changed_recipe(run_dir: Path, recipe) -> None:
    saved_file = run_dir / RESOLVED_RECIPE
    if not saved_file.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_file.read_text(encoding="utf-8")))
    current = _flatten(recipe.model_dump(mode="json"))
    # a key the saved recipe lacks is a setting added to safetune since: it ran with its default
    changed = sorted(key for key in saved if saved[key] != current.get(key))
    refused = [key for key in changed
               if not any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_CHANGES)]
    if refused:
        raise UsageError(f"--resume: the recipe changed since the run started ({', '.join(refused)})")
    length = [key for key in changed if key in ("train.max_steps", "train.epochs")]
    if length and recipe.train.lr_schedule != "constant":
        # The schedule's shape depends on the total: a new length would silently change every later LR.
        was = {key: saved.get(key) for key in length}
        raise UsageError(
            f"--resume: {', '.join(f'{k} {was[k]} -> {current.get(k)}' for k in length)} would rebuild the "
            f"{recipe.train.lr_schedule} LR schedule mid-run; keep the length, or resume with train.lr_schedule=constant"
        )
