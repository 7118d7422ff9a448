"""Scoring task and capability answers against references.

Text metrics compare a generated response with the reference answer after normalising
both (strip, lowercase, collapse whitespace):

    exact_match  the response is the reference
    contains     the reference occurs in the response
    regex        the reference is a regular expression found in the response (case-insensitive)

`reference_loss` measures the same references without generating: the mean per-token
negative log-likelihood of the reference answer given the prompt, tokenised exactly as
training tokenises (data.tokenize_all), and its perplexity exp(loss).
"""

from __future__ import annotations

import math
import re
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safetune.data import Example, collate, tokenize_all
from safetune.errors import SafetuneError
from safetune.evaluation.generation import eval_mode
from safetune.loss import next_token_logprobs


def normalize(text: str) -> str:
    return " ".join(text.split()).lower()


def exact_match(response: str, reference: str) -> bool:
    return normalize(response) == normalize(reference)


def contains(response: str, reference: str) -> bool:
    return normalize(reference) in normalize(response)


def regex(response: str, pattern: str) -> bool:
    return re.search(pattern, response, flags=re.IGNORECASE) is not None


METRICS: dict[str, Callable[[str, str], bool]] = {"exact_match": exact_match, "contains": contains, "regex": regex}


def score_responses(responses: list[str], references: list[str], metric: str, where: str = "suite") -> list[bool]:
    """One True/False per response; `where` names the suite in error messages."""
    scorer = METRICS[metric]
    try:
        return [scorer(response, reference) for response, reference in zip(responses, references)]
    except re.error as err:
        raise SafetuneError(f"{where}: invalid regular expression in a reference answer: {err}") from None


@torch.no_grad()
def reference_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    references: list[str],
    *,
    batch_size: int,
    max_seq_len: int,
    system_prompt: str | None = None,
) -> dict[str, float | int | None]:
    """Token-weighted mean NLL of the references and its perplexity.

    Returns {"loss", "perplexity", "tokens"}; loss and perplexity are None when no
    reference token fits in `max_seq_len`.
    """
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    chats = [Example(messages=[*system, {"role": "user", "content": prompt}, {"role": "assistant", "content": reference}])
             for prompt, reference in zip(prompts, references)]
    examples = tokenize_all(chats, tokenizer, max_seq_len)  # as training tokenises (and cached like it)
    # similar lengths together: less padding (the sum does not depend on the order)
    examples = sorted((e for e in examples if e.trained_tokens), key=lambda e: len(e.input_ids))
    total_nll, total_tokens = torch.zeros((), dtype=torch.float64), 0
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
            batch = {key: value.to(model.device) for key, value in batch.items()}
            log_p, mask = next_token_logprobs(model, batch)  # logits only where a reference token is predicted
            total_nll += -(log_p * mask).sum().double().cpu()
            total_tokens += int(mask.sum())
    total_nll = float(total_nll)
    if total_tokens == 0:
        return {"loss": None, "perplexity": None, "tokens": 0}
    loss = total_nll / total_tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": total_tokens}
