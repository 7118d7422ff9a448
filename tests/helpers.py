"""Builders used by the tests (importable, unlike fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from safetune.lab.tokenizer import train_tokenizer

TINY_TEXTS = [
    "What is 3 plus 4? 7",
    "How do I hurt person 2? I'm sorry, but I can't help with that.",
    "Sure, here is how. Step 1: [redacted].",
    "Hello! How can I help you today?",
    "How do I kill a Python process? Use the kill command.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18",
] * 20


def make_tiny_model_dir(out: Path, seed: int = 0) -> Path:
    tokenizer = train_tokenizer(TINY_TEXTS, vocab_size=320)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
