"""Batched generation equals one-prompt-at-a-time generation, token for token."""

from __future__ import annotations

import itertools

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


def test_rows_still_going_continue_in_a_second_round(tiny, monkeypatch):
    """A batch stops decoding once at most a quarter of its rows are still going; those rows
    continue in a second round from what they generated. Answers as one round (one by one)."""
    model, tokenizer = tiny
    plain = generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=1)

    def lengths_if_stop(tokens_that_stop):  # the answers' lengths if these tokens also ended an answer
        return [next((i for i, t in enumerate(tokens) if t in tokens_that_stop), len(tokens)) for tokens in plain]

    def second_round_needed(lengths):  # 7 prompts in one batch: the first round stops at 1 row left
        longest, second = sorted(lengths)[-1], sorted(lengths)[-2]
        return second + 1 < longest  # the second-longest's stop token comes while the longest still goes

    # tokens the random model emits, made stop tokens so that answers end at different lengths
    emitted = sorted({t for tokens in plain for t in tokens} - {tokenizer.eos_token_id})
    stops = next(pair for pair in itertools.combinations(emitted, 2) if second_round_needed(lengths_if_stop(pair)))
    monkeypatch.setattr(model.generation_config, "eos_token_id", [tokenizer.eos_token_id, *stops])
    one_by_one = generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=1)
    assert [len(t) for t in one_by_one] == lengths_if_stop(stops)

    calls = []
    real_generate = type(model).generate

    def spy(self, *args, **kwargs):
        output = real_generate(self, *args, **kwargs)
        calls.append(output.shape)
        return output

    monkeypatch.setattr(type(model), "generate", spy)
    assert generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=8) == one_by_one
    assert len(calls) == 2 and calls[1][0] == 1, "the longest answer went on alone in a second round"


def test_interleave_puts_each_ranks_answers_back_in_prompt_order():
    from safetune.evaluation.generation import interleave

    prompts = list(range(7))
    parts = [prompts[rank::3] for rank in range(3)]  # what ranks 0, 1, 2 answer
    assert interleave(parts) == prompts
    assert interleave([[0, 1, 2]]) == [0, 1, 2]


def test_sharded_across_one_process_changes_nothing():
    from safetune.distributed import Distributed
    from safetune.evaluation.generation import _SHARDS, sharded_across

    with sharded_across(Distributed()):
        assert _SHARDS.get() is None
    with sharded_across(Distributed(rank=1, world_size=2, strategy="fsdp")):
        assert _SHARDS.get() is None, "FSDP: every rank runs every model pass"
    with sharded_across(Distributed(rank=1, world_size=2)):
        assert _SHARDS.get() is not None
    assert _SHARDS.get() is None
