"""Atomic checkpoints: a Hugging Face model folder plus everything needed to resume.

A checkpoint is written into a hidden temporary folder, marked complete last, then
renamed into place, so a crash can never leave a folder that looks like a checkpoint
but is not one. Each checkpoint carries a manifest (size and sha256 of every file), so
a file damaged later (a disk error, a truncated copy) is found before it is loaded:
`latest_checkpoint` returns the newest checkpoint that verifies and says what it skipped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from safetune.errors import SafetuneError
from safetune.files import sha256_file

COMPLETE_MARKER = "CHECKPOINT_COMPLETE"
TRAINER_STATE = "trainer_state.json"  # human-readable: step, epoch, metrics
TRAINING_STATE = "training_state.pt"  # optimizer, scheduler, RNG, method state
MANIFEST = "MANIFEST.json"  # {file: {bytes, sha256}} of everything else in the folder
MAX_SHARD_SIZE = "50GB"  # transformers' default: a bigger model is saved in several files (and read back so)


class NonFiniteWeights(Exception):
    """The model holds NaN/inf values: such weights are never written to disk."""


class SaveFailed(SafetuneError):
    """A checkpoint could not be written (a full disk, a file-size or quota limit); nothing of it
    is left behind, and no older checkpoint was touched."""


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
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write model + tokenizer (+ resume state) to `folder` atomically.

    `weights`: the whole state dict when the model itself holds only shards (FSDP);
    default: the model's own.
    """
    folder = Path(folder)
    bad = nonfinite_tensors(weights if weights is not None else model.state_dict())
    if bad:
        raise NonFiniteWeights(f"{len(bad)} tensors hold NaN/inf (first: {bad[0]})")
    tmp = folder.with_name(f".tmp-{folder.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    check_free_space(folder, _saved_bytes(model, weights) + tensor_bytes(training_state))
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE,
                              **({"state_dict": weights} if weights is not None else {}))
        _name_plain_class(tmp / "config.json", model)
        tokenizer.save_pretrained(tmp)
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE)
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
        write_manifest(tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
    except Exception as err:  # ENOSPC, EFBIG, EDQUOT...: a half-written folder helps no one
        why = _write_failure(err)
        if why is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveFailed(f"cannot write {folder} ({why})") from None
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


def tensor_bytes(tree: Any) -> int:
    """The bytes of every tensor in a (nested) state dict: about what saving it writes."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(value) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(value) for value in tree)
    return 0


def _saved_bytes(model, weights: dict[str, torch.Tensor] | None) -> int:
    if weights is not None:
        return tensor_bytes(weights)
    if getattr(model, "peft_config", None):  # a LoRA model saves its adapters only
        return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return tensor_bytes(model.state_dict())


def _write_failure(err: Exception) -> str | None:
    """Why writing failed, when `err` is the disk's refusal (each writer says it its own way)."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = str(err)
    if type(err).__name__ == "SafetensorError" and "I/O error" in text:  # safetensors' Rust writer
        return text.split("I/O error:", 1)[1].strip()
    if isinstance(err, RuntimeError) and "inline_container" in text:  # torch.save's zip writer
        return f"writing {TRAINING_STATE} failed; is the disk full?"
    return None


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse before writing when the disk cannot hold `needed` bytes (plus a margin for the
    tokenizer and small files): better one line now than a half-written folder."""
    where = next((p for p in (Path(folder).parent, *Path(folder).parents) if p.exists()), Path.cwd())
    free = shutil.disk_usage(where).free
    wanted = int(needed * 1.05) + (64 << 20)
    if free < wanted:
        raise SaveFailed(f"cannot write {folder}: {free / 2**30:.2f} GiB free on its disk, "
                         f"about {wanted / 2**30:.2f} GiB needed")


def is_complete(folder: Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.split("-")[-1])


def nonfinite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of parameters/buffers holding NaN or inf (one reduction each, no copies)."""
    return [name for name, tensor in state_dict.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def _name_plain_class(config_file: Path, model) -> None:
    """FSDP2 renames a sharded model's class to FSDP<Class>; the saved config must name <Class>."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule) or not config_file.is_file():  # (a LoRA adapter folder has no config.json)
        return
    plain = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["architectures"] = [plain.__name__]
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name not in (MANIFEST, COMPLETE_MARKER))
    manifest = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def verify_checkpoint(folder: Path) -> str | None:
    """None when every file matches the manifest, else one line saying which file is damaged.

    Folders written before manifests existed (or by other tools) have none: nothing to check.
    """
    folder = Path(folder)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        return None
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{manifest_file} is damaged"
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{path} is damaged ({size} bytes, expected {expected['bytes']})"
        if sha256_file(path) != expected["sha256"]:
            return f"{path} is damaged (checksum mismatch)"
    return None


def safetensors_problem(path: Path) -> str | None:
    """None when `path` is a whole safetensors file, else what is wrong with it. Reads only the
    header (8 bytes of length, then JSON naming each tensor's byte range), so it is cheap: it
    finds a truncated copy or a file that is no safetensors at all, not a flipped bit."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length > min(size - 8, 100 << 20):
                return f"{path} is not a safetensors file (or is cut short: {size} bytes)"
            header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return f"{path} is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return f"{path} is not a safetensors file (its header is not a JSON object)"
    ends = [entry.get("data_offsets", [0, 0])[1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict)]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"{path} is damaged ({size} bytes, its header describes {expected})"
    return None


def weights_problem(folder: Path) -> str | None:
    """The first damaged file of a model folder: against its manifest when it has one (a
    checkpoint safetune wrote), else each safetensors file against its own header."""
    return verify_checkpoint(folder) or next(
        filter(None, (safetensors_problem(f) for f in sorted(Path(folder).glob("*.safetensors")))), None)


def resumable_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints holding a training state, newest first."""
    folders = [
        f for f in (Path(run_dir) / "checkpoints").glob("step-*")
        if f.name.split("-")[-1].isdigit() and is_complete(f) and (f / TRAINING_STATE).is_file()
    ]
    return sorted(folders, key=checkpoint_step, reverse=True)


def prune_checkpoints(run_dir: Path, keep: int) -> list[str]:
    """Delete all but the `keep` newest complete checkpoints; return the names deleted.
    Each goes by a rename first, so an interruption never leaves a half-deleted step-N."""
    deleted = []
    for folder in resumable_checkpoints(run_dir)[keep:]:
        doomed = folder.with_name(f".old-{folder.name}")
        if doomed.exists():
            shutil.rmtree(doomed)
        os.replace(folder, doomed)
        shutil.rmtree(doomed)
        deleted.append(folder.name)
    return deleted


def latest_checkpoint(run_dir: Path, skipped: list[str] | None = None) -> Path | None:
    """The newest checkpoint that verifies; each damaged one is described in `skipped`."""
    for folder in resumable_checkpoints(run_dir):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder
        if skipped is not None:
            skipped.append(f"skipped {folder.name}: {problem}")
    return None


def load_training_state(folder: Path) -> dict[str, Any]:
    # weights_only: the state holds only tensors and plain Python values, nothing to unpickle.
    return torch.load(Path(folder) / TRAINING_STATE, map_location="cpu", weights_only=True)
