"""Atomic checkpoints: a Hugging Face model folder plus everything needed to resume.

A checkpoint is written into a hidden temporary folder, marked complete last, then
renamed into place, so a crash can never leave a folder that looks like a checkpoint
but is not one. `latest_checkpoint` only trusts folders with the completeness marker.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

COMPLETE_MARKER = "CHECKPOINT_COMPLETE"
TRAINER_STATE = "trainer_state.json"  # human-readable: step, epoch, metrics
TRAINING_STATE = "training_state.pt"  # optimizer, scheduler, RNG, method state


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    model,
    tokenizer,
    trainer_state: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write model + tokenizer (+ resume state) to `folder` atomically."""
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if training_state is not None:
        torch.save(training_state, tmp / TRAINING_STATE)
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
    (tmp / COMPLETE_MARKER).write_text("ok\n")
    if folder.exists():  # replacing (e.g. final/ after a resumed run): move the old one aside first
        old = folder.with_name(f".old-{folder.name}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
    return folder


def is_complete(folder: Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.split("-")[-1])


def latest_checkpoint(run_dir: Path) -> Path | None:
    folders = [
        f for f in (Path(run_dir) / "checkpoints").glob("step-*")
        if f.name.split("-")[-1].isdigit() and is_complete(f) and (f / TRAINING_STATE).is_file()
    ]
    return max(folders, key=checkpoint_step, default=None)


def load_training_state(folder: Path) -> dict[str, Any]:
    # weights_only: the state holds only tensors and plain Python values, nothing to unpickle.
    return torch.load(Path(folder) / TRAINING_STATE, map_location="cpu", weights_only=True)
