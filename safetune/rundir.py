"""The run directory: its layout, how a run prepares it (new, overwrite, resume), and the
readers evaluation and compare use.

    runs/<name>/
      recipe.resolved.yaml   the recipe as it ran
      metrics.jsonl          one JSON object per logged step (+ monitor probe lines)
      baseline/              the base model's safety report (written by evaluation)
      checkpoints/step-N/    HF model folders
      final/                 the final model and its safety report
      .safetune-run          the marker: safetune made this folder (overwrite and resume need it)
      .safetune-lock(.json)  held while a run writes here (runlock.py)
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from safetune import checkpoint as ckpt
from safetune.errors import UsageError
from safetune.files import write_atomic
from safetune.runlock import HOLDER_FILE, LOCK_FILE, lock_run_dir, unlock_run_dir

RESOLVED_RECIPE = "recipe.resolved.yaml"
METRICS_LOG = "metrics.jsonl"
BASELINE_DIR = "baseline"
FINAL_DIR = "final"
SAFETY_REPORT = "safety_report.json"  # what an evaluation writes (evaluation/report.py)

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
# A run folder carries this marker from its creation on. Overwrite and resume act only on a
# folder that has it (or, made by an older safetune, holds a run's recipe or metrics log):
# safetune never deletes what it did not write.
RUN_MARKER = ".safetune-run"
# Everything a run writes into its folder; overwrite removes these and nothing else.
# (Names other modules own: audit.AUDIT_FILE, ewc.FISHER_FILE, token_weighting's score cache;
# tests/test_trust.py checks they are covered.)
RUN_ENTRIES = (RUN_MARKER, LOCK_FILE, HOLDER_FILE, RESOLVED_RECIPE, METRICS_LOG, BASELINE_DIR, FINAL_DIR,
               "checkpoints", "env.json", "summary.json", "tensorboard", "safety_layers.json", "data_audit.json",
               "ewc_fisher.safetensors", "token_scores-*.json", ".tmp-*", ".old-*", ".*.tmp", ".write-test")
# What a run keeps when it is overwritten or restarted: the baseline (checked against the model
# before it is reused) and the folder's own bookkeeping.
KEPT_ENTRIES = {BASELINE_DIR, RUN_MARKER, LOCK_FILE, HOLDER_FILE}


def is_run_entry(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_ENTRIES)


def prepare_run_dir(recipe, resume: bool, say=print) -> tuple[Path, Path | None]:
    """Create or check the run directory and hold it for this process (`unlock_run_dir` lets go);
    return it and the checkpoint to resume from (if any)."""
    run_dir = recipe.output_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"output.dir: {run_dir} is a file, not a folder")
    _refuse_foreign_folder(run_dir, say)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"output.dir: cannot write to {run_dir} ({err.strerror or err})") from None
    lock_run_dir(run_dir, say)  # before anything is deleted: another run may be writing here
    try:
        if not (run_dir / RUN_MARKER).exists():
            write_atomic(run_dir / RUN_MARKER, json.dumps({"created": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        return run_dir, _resume_or_start(run_dir, recipe, resume, say)
    except BaseException:
        unlock_run_dir(run_dir)
        raise


def _refuse_foreign_folder(run_dir: Path, say) -> None:
    """A non-empty folder safetune did not make is never written into, let alone cleared."""
    if not run_dir.is_dir() or (run_dir / RUN_MARKER).exists():
        return
    names = sorted(p.name for p in run_dir.iterdir())
    if (run_dir / RESOLVED_RECIPE).is_file() or (run_dir / METRICS_LOG).is_file():
        say(f"note: output.dir: {run_dir} has no {RUN_MARKER} (made by an older safetune); "
            f"recognised as a run folder by its {RESOLVED_RECIPE if (run_dir / RESOLVED_RECIPE).is_file() else METRICS_LOG}")
        return
    foreign = [name for name in names if name not in KEPT_ENTRIES]  # `safetune baseline` may have been first
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UsageError(f"output.dir: {run_dir} is not empty and is not a safetune run folder (it holds {shown}); "
                         "safetune deletes nothing it did not write: choose a new or empty output.dir")


def _resume_or_start(run_dir: Path, recipe, resume: bool, say) -> Path | None:
    """The checkpoint to resume from, after clearing what an earlier run left when starting again."""
    leftover = sorted(p.name for p in run_dir.iterdir() if is_run_entry(p.name) and p.name not in KEPT_ENTRIES)
    if resume:
        skipped: list[str] = []
        resume_from = ckpt.latest_checkpoint(run_dir, skipped)
        for line in skipped:
            say(f"warning: --resume {line}")
        if resume_from is None and ckpt.is_complete(run_dir / FINAL_DIR):
            raise UsageError(_finished_run(run_dir, recipe))
        if resume_from is None and skipped:  # keep the damaged files for inspection: never delete them
            raise UsageError(f"--resume: no checkpoint under {run_dir}/checkpoints verifies; "
                             "use output.overwrite=true to start again")
        if resume_from is not None:
            _refuse_changed_recipe(run_dir, recipe)
        elif leftover:
            # Crashed before its first checkpoint: nothing to continue, so start again cleanly.
            say(f"--resume: no usable checkpoint under {run_dir}/checkpoints; starting from step 0")
            _clear(run_dir, leftover, say)
        return resume_from
    if leftover and not recipe.output.overwrite:
        raise UsageError(
            f"output.dir: {run_dir} already holds a run; add --resume to continue it, "
            "output.overwrite=true to replace it, or choose another output.dir"
        )
    _clear(run_dir, leftover, say)
    return None


def _finished_run(run_dir: Path, recipe) -> str:
    """Why a run whose final/ is complete has nothing to resume, and what to do instead."""
    final = run_dir / FINAL_DIR
    if recipe.eval.suites and recipe.eval.at_end and not (final / SAFETY_REPORT).is_file():
        return (f"--resume: {run_dir} finished training (final/ is complete) but its final evaluation did not; "
                f"write the safety report with: safetune eval {final}")
    return f"--resume: {run_dir} holds a finished run (final/); nothing to resume"


def _clear(run_dir: Path, names: list[str], say) -> None:
    """Remove what a run wrote; anything else in the folder is the user's and stays."""
    for name in names:
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    kept = sorted(p.name for p in run_dir.iterdir() if not is_run_entry(p.name))
    if names and kept:
        say(f"note: output.dir: kept {', '.join(kept)} in {run_dir} (not written by safetune)")


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
    # a key the saved recipe lacks is a setting added to safetune since (it ran with its default),
    # unless it replaces a value the saved recipe had (`model.lora: null` -> `model.lora.r: 8`)
    one_sided = {_section_of(key, saved, current) for key in saved.keys() ^ current.keys()}
    changed = sorted((one_sided - {None}) | {key for key in saved if key in current and saved[key] != current[key]})
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


def _section_of(key: str, saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A key only one recipe has: the value the other has in its place (`model.lora`, null in one
    and a section in the other), else the key if the saved recipe had it, else None (a setting
    added to safetune since the run began)."""
    parts = key.split(".")
    for n in range(1, len(parts)):
        prefix = ".".join(parts[:n])
        if prefix in saved or prefix in current:
            return prefix
    return key if key in saved else None
