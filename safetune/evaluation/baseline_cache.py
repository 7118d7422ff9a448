"""Reuse the base model's evaluation across runs.

A baseline depends only on the model's files, the evaluation settings and the software
that evaluates, so runs that share them (every method x seed of a benchmark, a recipe
run twice) share one baseline. `run_baseline` looks it up here before evaluating and
stores what it computed. The key is a SHA-256 over:

    the model      every top-level file of its folder, by content (a hub id: its local
                   snapshot), plus the recipe's dtype, revision and chat_template
    the suites     each suite's settings (how it asks its prompts included) and its local
                   file's content (a hub dataset: its id and split only - a dataset
                   re-published under the same id is not noticed)
    the detectors  eval.refusal with the keyword list spelled out, and the judge's files
    the rest       max_new_tokens, batch_size, data.max_seq_len (reference loss), the
                   device type (cpu/cuda), the safetune, torch and transformers versions

Hashing reads every byte once (a 16 GB model: about a minute); the result is remembered
per file path, size and modification time in `file_hashes.json`, so later runs only stat
the files. Entries live in `$SAFETUNE_CACHE/baselines/<key>/` (default
`~/.cache/safetune/baselines/<key>/`), each with `key.json` listing what went into its key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers

from safetune import __version__
from safetune.data import resolve_local_path
from safetune.evaluation.refusal import DEFAULT_REFUSAL_MARKERS, resolve_judge_source
from safetune.evaluation.report import OUTPUTS_JSONL, REPORT_JSON, REPORT_MD, read_report, write_report
from safetune.files import cache_root, sha256_file, write_atomic
from safetune.modeling import resolve_model_path
from safetune.recipe import Recipe

BASELINE_FILES = (REPORT_JSON, REPORT_MD, OUTPUTS_JSONL)
KEY_FILE = "key.json"
SKIPPED_FILES = {*BASELINE_FILES, KEY_FILE}  # what evaluation itself writes next to a model


def baselines_dir() -> Path:
    return cache_root() / "baselines"


# --------------------------------------------------------------------------- fingerprints
class FileHashes:
    """SHA-256 of files, remembered per (resolved path, size, mtime) across processes."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_root() / "file_hashes.json"
        try:
            self.known: dict[str, list] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.known = {}  # no file yet, or a damaged one: start again
        self.changed = False

    def sha256(self, file: Path) -> str:
        file = file.resolve()
        stat = file.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = self.known.get(str(file))
        if entry and entry[:2] == stamp:
            return entry[2]
        digest = sha256_file(file)
        self.known[str(file)] = [*stamp, digest]
        self.changed = True
        return digest

    def folder(self, folder: Path) -> dict[str, str]:
        """file name -> sha256 for the folder's top-level files (what from_pretrained reads)."""
        return {file.name: self.sha256(file) for file in sorted(folder.iterdir())
                if file.is_file() and not file.name.startswith(".") and file.name not in SKIPPED_FILES}

    def save(self) -> None:
        if self.changed:
            try:
                write_atomic(self.path, json.dumps(self.known))
            except OSError:
                pass  # a read-only cache only costs rehashing next time


def local_model_folder(source: str, revision: str | None) -> Path | None:
    """The folder a model is loaded from: a local folder, or a hub id's snapshot in the local hub cache."""
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except Exception:  # not downloaded yet (or not a hub id): nothing to fingerprint
        return None


def _source_fingerprint(source: str, hashes: FileHashes, revision: str | None = None) -> dict | None:
    if Path(source).expanduser().is_file():  # a single-file model (GGUF)
        return {"files": {Path(source).name: hashes.sha256(Path(source).expanduser())}}
    folder = local_model_folder(source, revision)
    return None if folder is None else {"files": hashes.folder(folder)}


# Suite settings added after baselines were cached: unset, they stay out of the key, so the
# baselines cached before them are still found.
LATER_SUITE_SETTINGS = ("system_prompt", "prompt_template")


def _suite_fingerprint(suite, hashes: FileHashes) -> dict:
    entry = suite.model_dump()  # every setting, the system prompt and prompt template included
    for name in LATER_SUITE_SETTINGS:
        if entry[name] is None:
            del entry[name]
    local = resolve_local_path(suite.path, suite.folder)
    if local is not None and local.is_file():
        entry["sha256"] = hashes.sha256(local)
    elif local is not None and local.is_dir():
        entry["files"] = hashes.folder(local)
    return entry


def baseline_key(recipe: Recipe, device: torch.device | str) -> tuple[str, dict] | None:
    """(key, what went into it), or None when the model's files cannot be read here."""
    hashes = FileHashes()
    model = _source_fingerprint(resolve_model_path(recipe.model.path), hashes, recipe.model.revision)
    if model is None:
        return None
    config = recipe.eval
    refusal = config.refusal.model_dump()
    refusal["keywords"] = refusal["keywords"] if refusal["keywords"] is not None else list(DEFAULT_REFUSAL_MARKERS)
    if config.refusal.detector != "keyword":
        source = resolve_judge_source(config.refusal.judge)
        refusal["judge_files"] = _source_fingerprint(source, hashes)
    inputs = {
        "model": {**model, "dtype": recipe.model.dtype, "revision": recipe.model.revision,
                  "chat_template": recipe.model.chat_template},
        "suites": [_suite_fingerprint(suite, hashes) for suite in config.suites],
        "refusal": refusal,
        "generation": {"max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size},
        "max_seq_len": recipe.data.max_seq_len,
        "device": torch.device(device).type,
        "versions": {"safetune": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }
    hashes.save()
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]
    return key, inputs


# --------------------------------------------------------------------------- reuse and store
def reuse_baseline(key: str, out_dir: Path) -> dict | None:
    """Copy the cached baseline for `key` into `out_dir` and return its report, or None on a miss."""
    entry = baselines_dir() / key
    if not (entry / REPORT_JSON).is_file():
        return None
    try:
        report = read_report(entry)
        out_dir.mkdir(parents=True, exist_ok=True)
        if (entry / OUTPUTS_JSONL).is_file():
            write_atomic(out_dir / OUTPUTS_JSONL, (entry / OUTPUTS_JSONL).read_text(encoding="utf-8"))
    except Exception:  # a damaged entry is a miss: drop it, evaluate again and store anew
        shutil.rmtree(entry, ignore_errors=True)
        return None
    report["baseline_cache"] = {"key": key, "reused": True, "entry": str(entry)}
    write_report(report, out_dir)
    return report


def store_baseline(key: str, inputs: dict, out_dir: Path, report: dict) -> None:
    """Record the key in the report in `out_dir`, then copy the baseline files into the cache."""
    report["baseline_cache"] = {"key": key, "reused": False}
    write_report(report, out_dir)
    entry = baselines_dir() / key
    staging = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key}."))
        for name in BASELINE_FILES:
            if (out_dir / name).is_file():
                shutil.copyfile(out_dir / name, staging / name)
        (staging / KEY_FILE).write_text(json.dumps(inputs, indent=2) + "\n", encoding="utf-8")
        if entry.exists() and not (entry / REPORT_JSON).is_file():
            shutil.rmtree(entry, ignore_errors=True)  # a damaged entry: replace it
        os.replace(staging, entry)  # atomic: a reader sees the whole entry or none
    except OSError:
        pass  # another run stored this key first, or the cache is not writable: the run's own copy stands
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
