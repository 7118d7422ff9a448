"""Atomic file writes (a reader never sees a half-written report, recipe or state file), and
where safetune keeps its caches."""

from __future__ import annotations

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


def cache_root() -> Path:
    """$SAFETUNE_CACHE, else ~/.cache/safetune: baselines, tokenised data, file hashes.
    (The lab model has its own variable, $SAFETUNE_LAB_MODEL: `modeling.lab_model_dir`.)"""
    root = Path(os.environ.get("SAFETUNE_CACHE") or Path.home() / ".cache" / "safetune").expanduser()
    if root.exists() and not root.is_dir():  # else every cache write would fail, and be skipped, silently
        where = "SAFETUNE_CACHE" if os.environ.get("SAFETUNE_CACHE") else "the cache folder"
        raise UsageError(f"{where}: {root} is a file, not a folder; point SAFETUNE_CACHE at a folder")
    return root
