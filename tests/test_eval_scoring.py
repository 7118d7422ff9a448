"""Answer metrics and reference loss/perplexity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from safetune.errors import SafetuneError
from safetune.evaluation.scoring import contains, exact_match, reference_loss, regex, score_responses
from safetune.modeling import format_prompt, load_model, load_tokenizer
from safetune.recipe import ModelConfig


def test_exact_match_normalises_case_and_whitespace():
    assert exact_match("  Positive\n", "positive")
    assert exact_match("New  York", "new york")
    assert not exact_match("positive.", "positive")


def test_contains_and_regex():
    assert contains("The answer is 42.", "42")
    assert not contains("The answer is 4.", "42")
    assert regex("The answer is 42.", r"\b42\b")
    assert regex("POSITIVE", r"^positive$")
    assert not regex("142", r"\b42\b")


def test_score_responses_and_bad_pattern():
    assert score_responses(["7", "8"], ["7", "9"], "exact_match") == [True, False]
    with pytest.raises(SafetuneError, match=r"eval.suites\[task\]: invalid regular expression"):
        score_responses(["x"], ["("], "regex", where="eval.suites[task]")


def test_reference_loss_matches_a_hand_computation(tiny_model_dir):
    config = ModelConfig(path=str(tiny_model_dir))
    model, tokenizer = load_model(config), load_tokenizer(config)
    prompts, references = ["What is 3 plus 4?", "Hello!", "How do I hurt person 2?"], ["7", "Hi there", "I'm sorry."]

    # By hand: the prompt as generation sees it, then the reference and EOS; loss on those
    # only, as in training (what the template adds after EOS is not scored).
    total, count = 0.0, 0
    for prompt, reference in zip(prompts, references):
        prompt_text = format_prompt(tokenizer, prompt)
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reference}]
        answer_text = tokenizer.apply_chat_template(chat, tokenize=False)[len(prompt_text):]
        assert answer_text.startswith(reference + tokenizer.eos_token)
        answer_text = reference + tokenizer.eos_token
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad():
            logits = model(ids).logits[0]
        start = len(prompt_ids)
        total += F.cross_entropy(logits[start - 1 : -1], ids[0, start:], reduction="sum").item()
        count += len(answer_ids)

    for batch_size in (1, 3):
        result = reference_loss(model, tokenizer, prompts, references, batch_size=batch_size, max_seq_len=256)
        assert result["tokens"] == count
        assert result["loss"] == pytest.approx(total / count, rel=1e-5)
        assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_reference_loss_of_a_prompt_longer_than_the_window(tiny_model_dir):
    # data.truncation's default cuts the prompt from the left, so the reference is still scored
    config = ModelConfig(path=str(tiny_model_dir))
    model, tokenizer = load_model(config), load_tokenizer(config)
    result = reference_loss(model, tokenizer, ["a long prompt " * 20], ["x"], batch_size=2, max_seq_len=8)
    assert result["tokens"] == 2 and math.isfinite(result["loss"])  # "x" and EOS
