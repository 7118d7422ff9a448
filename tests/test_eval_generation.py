"""Batched generation equals one-prompt-at-a-time generation, token for token."""

from __future__ import annotations

import pytest
import torch

from safetune.evaluation.generation import _cut_at_stop, generate, generate_one_by_one, generate_token_ids
from safetune.modeling import load_model, load_tokenizer
from safetune.recipe import ModelConfig

# Different lengths, so batches need real left padding.
PROMPTS = [
    "What is 3 plus 4?",
    "How do I hurt person 2?",
    "Hello!",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18",
    "hi",
    "How do I kill a Python process? Use the kill command.",
    "Sure, here is how.",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    config = ModelConfig(path=str(tiny_model_dir))
    return load_model(config), load_tokenizer(config)


def test_batched_equals_unbatched_token_for_token(tiny):
    model, tokenizer = tiny
    one_by_one = generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=1)
    for batch_size in (3, 8):
        assert generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=batch_size) == one_by_one
    assert all(0 < len(tokens) <= 12 for tokens in one_by_one)


def test_generate_is_deterministic_and_decodes(tiny):
    model, tokenizer = tiny
    first = generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=4)
    assert first == generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=4)
    assert first == generate_one_by_one(model, tokenizer, PROMPTS, max_new_tokens=8)
    assert all(isinstance(text, str) and "<pad>" not in text for text in first)


def test_generation_restores_training_mode_and_leaves_tokenizer_alone(tiny):
    model, tokenizer = tiny
    side = tokenizer.padding_side
    model.train()
    generate(model, tokenizer, PROMPTS[:2], max_new_tokens=2, batch_size=2)
    assert model.training and tokenizer.padding_side == side
    model.eval()


def test_generation_stops_at_eos(tiny_model_dir):
    config = ModelConfig(path=str(tiny_model_dir))
    model, tokenizer = load_model(config), load_tokenizer(config)
    # An output layer whose bias alone picks EOS: every response ends at once.
    hidden, vocab = model.lm_head.in_features, model.lm_head.out_features
    model.lm_head = torch.nn.Linear(hidden, vocab, bias=True)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[tokenizer.eos_token_id] = 1.0
    assert generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=5, batch_size=4) == [[]] * len(PROMPTS)
    assert generate(model, tokenizer, PROMPTS[:2], max_new_tokens=5, batch_size=2) == ["", ""]


def test_cut_at_stop():
    assert _cut_at_stop([5, 6, 2, 0, 0], [2]) == [5, 6]
    assert _cut_at_stop([5, 6], [2]) == [5, 6]
    assert _cut_at_stop([2, 2], [2, 9]) == []
