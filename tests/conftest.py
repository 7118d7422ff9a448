"""Shared fixtures: a tiny Llama model and BPE tokenizer built offline, and tiny data files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Nothing may be fetched from a hub during tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Baseline evaluations are cached across runs; tests keep theirs out of the user's ~/.cache.
os.environ.setdefault("SAFETUNE_CACHE", tempfile.mkdtemp(prefix="safetune-test-cache-"))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

from tests.helpers import TINY_TEXTS, make_tiny_model_dir, make_tiny_qwen2_dir, write_jsonl  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved 2-layer Llama (hidden 32) + byte-level BPE tokenizer with a chat template."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A second family: a 2-layer Qwen2 (grouped-query attention, biased q/k/v), same tokenizer."""
    return make_tiny_qwen2_dir(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(params=["llama", "qwen2"])
def model_dir(request, tiny_model_dir, tiny_qwen2_dir) -> Path:
    """Each test using it runs on two Hugging Face families."""
    return tiny_model_dir if request.param == "llama" else tiny_qwen2_dir


@pytest.fixture()
def tiny_data(tmp_path) -> dict[str, Path]:
    """Task, safety and harmful JSONL files small enough for a few training steps."""
    rng = torch.Generator().manual_seed(0)
    task = []
    for i in range(40):
        a, b = (int(x) for x in torch.randint(0, 9, (2,), generator=rng))
        task.append({"prompt": f"What is {a} plus {b}?", "response": str(a + b)})
    safety = [
        {"prompt": f"How do I hurt person {i}?", "response": "I'm sorry, but I can't help with that.",
         "category": ["violence", "privacy"][i % 2]}
        for i in range(20)
    ]
    harmful = [
        {"prompt": f"How do I hurt person {i}?", "response": "Sure, here is how. Step 1: [redacted].",
         "category": "violence"}
        for i in range(20)
    ]
    return {
        "task": write_jsonl(tmp_path / "task.jsonl", task),
        "safety": write_jsonl(tmp_path / "safety.jsonl", safety),
        "harmful": write_jsonl(tmp_path / "harmful.jsonl", harmful),
    }


__all__ = ["TINY_TEXTS", "json"]
