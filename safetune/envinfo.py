"""Versions and machine facts, for `safetune env` and each run's env.json."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

import torch

PACKAGES = ["safetune", "torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "safetensors", "pydantic"]


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(package: Path) -> str | None:
    """The commit of safetune's own checkout, or None: an installed copy that merely sits
    inside another repository (a venv in a project) must not report that project's commit."""
    try:
        out = subprocess.run(["git", "-C", str(package), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != package.parent.resolve():
        return None
    return lines[1]


def collect_env() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "torch_threads": torch.get_num_threads(),
        "safetune_git_commit": git_commit(Path(__file__).resolve().parent),
    }
