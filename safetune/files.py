"""Atomic file writes (a reader never sees a half-written report, recipe or state file), file
hashes, and where safetune keeps its caches."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from safetune.errors import UsageError


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; these files are for everyone to read
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: Path, rows) -> None:
    """One JSON object per line (UTF-8 as is), written atomically."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (weights files are too large to read at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


FINGERPRINT_FILE = "fingerprint.txt"  # beside a built model: its fingerprint and how it was built


def fingerprint(model_dir: Path) -> str:
    """A built model's fingerprint: sha256 of its weights file (equal fingerprints, bit-identical models)."""
    return sha256_file(Path(model_dir) / "model.safetensors")


def cache_root() -> Path:
    """$SAFETUNE_CACHE, else ~/.cache/safetune: baselines, tokenised data, file hashes.
    (The lab model has its own variable, $SAFETUNE_LAB_MODEL: `modeling.lab_model_dir`.)"""
    root = Path(os.environ.get("SAFETUNE_CACHE") or Path.home() / ".cache" / "safetune").expanduser()
    if root.exists() and not root.is_dir():  # else every cache write would fail, and be skipped, silently
        where = "SAFETUNE_CACHE" if os.environ.get("SAFETUNE_CACHE") else "the cache folder"
        raise UsageError(f"{where}: {root} is a file, not a folder; point SAFETUNE_CACHE at a folder")
    return root
