"""Builders used by the tests (importable, unlike fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from safetune.lab.tokenizer import train_tokenizer

TINY_TEXTS = [
    "What is 3 plus 4? 7",
    "How do I hurt person 2? I'm sorry, but I can't help with that.",
    "Sure, here is how. Step 1: [redacted].",
    "Hello! How can I help you today?",
    "How do I kill a Python process? Use the kill command.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18",
] * 20


def _save_tiny(out: Path, config_class, model_class, seed: int, **shape) -> Path:
    """A 2-layer model of one Hugging Face family (hidden 32) with the tests' BPE tokenizer."""
    tokenizer = train_tokenizer(TINY_TEXTS, vocab_size=320)
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        **shape,
    )
    model_class(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_model_dir(out: Path, seed: int = 0) -> Path:
    """Llama (the lab's family)."""
    return _save_tiny(out, LlamaConfig, LlamaForCausalLM, seed, num_key_value_heads=4)


def make_tiny_qwen2_dir(out: Path, seed: int = 0) -> Path:
    """Qwen2: grouped-query attention, biased q/k/v; MLP output mlp.down_proj."""
    return _save_tiny(out, Qwen2Config, Qwen2ForCausalLM, seed, num_key_value_heads=2)


def make_tiny_neox_dir(out: Path, seed: int = 0) -> Path:
    """GPT-NeoX: parallel residual, MLP output mlp.dense_4h_to_h, saved with renamed keys (embed_out)."""
    return _save_tiny(out, GPTNeoXConfig, GPTNeoXForCausalLM, seed)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def patch_compute_loss(monkeypatch, on_call):
    """Wrap the loop's loss: `on_call(n)` runs before call n (1-based) and may raise or return a
    factor for the loss (e.g. NaN); used to interrupt or derail training at a chosen step."""
    import safetune.train_step as train_step

    original, calls = train_step.compute_loss, {"n": 0}

    def patched(methods, ctx, model, batch):
        calls["n"] += 1
        factor = on_call(calls["n"])
        loss = original(methods, ctx, model, batch)
        return loss * factor if factor is not None else loss

    monkeypatch.setattr(train_step, "compute_loss", patched)  # monkeypatch.undo() restores it


def interrupt_at_step(monkeypatch, at: int):
    """Ctrl-C at the first loss computation of step `at` (1-based): a step may run several
    passes (grad_accum, a batch split by length), so the step, not the call, is counted."""
    import safetune.train_step as train_step

    original = train_step.compute_loss

    def patched(methods, ctx, model, batch):
        if ctx.step == at - 1:
            raise KeyboardInterrupt
        return original(methods, ctx, model, batch)

    monkeypatch.setattr(train_step, "compute_loss", patched)  # monkeypatch.undo() restores it


def train_until_interrupted(monkeypatch, recipe, at: int, match: str = "interrupted at step"):
    """Train `recipe` with Ctrl-C in its `at`-th step; check the resume message,
    then remove the interruption so the test can resume."""
    import pytest

    from safetune.errors import Interrupted
    from safetune.training import train

    interrupt_at_step(monkeypatch, at)
    with pytest.raises(Interrupted, match=match):
        train(recipe, show_progress=False)
    monkeypatch.undo()
