"""Batched greedy generation: the evaluator's hot path.

Prompts are rendered with the chat template (`modeling.format_prompt`), sorted by length
so each batch holds prompts of similar length (less padding), left-padded (so every
sequence ends at the same position and the next token is read from the last column),
and decoded greedily with the KV cache by `model.generate`. Greedy decoding is
deterministic, and the batched result equals the one-prompt-at-a-time result token for
token (tests/test_eval_generation.py checks it).

`generate_ids` is the one loop, over already-tokenised inputs; `generate` renders user
prompts first (each after a system turn when a suite sets `system_prompt`). A generative
judge (refusal.py) renders its own inputs and calls `generate_ids` too, so there is a
single generator to swap for a serving engine.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager, nullcontext
from typing import Iterator, Optional, Sequence, Union

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from safetune.distributed import is_fsdp_model
from safetune.modeling import format_prompt


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS of the tokenizer plus any end-of-turn ids the model's generation config lists."""
    configured = model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    return sorted({tokenizer.eos_token_id, *(i for i in configured if i is not None)})


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate without dropout, then put the model back as it was (the trainer probes mid-run)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def progress_bar(enabled: bool) -> Progress | nullcontext:
    if not enabled:
        return nullcontext()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


SystemPrompts = Union[str, Sequence[Optional[str]], None]  # one for every prompt, or one per prompt


def system_prompts(system_prompt: SystemPrompts, count: int) -> list[str | None]:
    """`system_prompt` as one entry per prompt."""
    if system_prompt is None or isinstance(system_prompt, str):
        return [system_prompt] * count
    if len(system_prompt) != count:
        raise ValueError(f"{len(system_prompt)} system prompts for {count} prompts")
    return list(system_prompt)


def chat_input_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], system_prompt: SystemPrompts = None
) -> list[list[int]]:
    """Each user prompt rendered with the chat template (after its system turn, if any) and tokenised."""
    rendered = [format_prompt(tokenizer, prompt, system)
                for prompt, system in zip(prompts, system_prompts(system_prompt, len(prompts)))]
    # The chat template already placed any BOS it wants; don't let the tokenizer add another.
    return tokenizer(rendered, add_special_tokens=False)["input_ids"] if rendered else []


class _FewRowsLeft(StoppingCriteria):
    """Ends a batch's `generate` once at most `few` of its rows are still going.

    A batch decodes until its longest answer ends: when most answers are a few tokens and
    one runs to max_new_tokens (a capability suite, a model that stopped refusing), most
    of the decoding is rows that already ended. Stopped this way, the rows still going
    continue in a second round, pooled with the other batches' and in batches as full
    as the first round's.
    """

    def __init__(self, stops: list[int], prompt_width: int, few: int):
        self.stops, self.prompt_width, self.few = stops, prompt_width, few

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        ended = torch.isin(input_ids[:, self.prompt_width :], torch.tensor(self.stops, device=input_ids.device))
        stop = bool((~ended.any(dim=1)).sum() <= self.few)  # one host sync per step, as generate's own check
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
    description: str = "generate",
) -> list[list[int]]:
    """The greedy continuation of each already-tokenised input, cut before the first stop token.

    The one generation loop: the evaluated model's answers and a generative judge's
    verdicts (which render their own inputs) both go through it. Two rounds: each batch
    decodes until at most a quarter of its rows are still going (`_FewRowsLeft`); those
    rows then continue, from their prompt plus what they have generated, pooled into
    full batches. Greedy decoding continues a prefix the same way, so the answers are
    the one-round answers (tests/test_eval_generation.py); on lab checkpoints the
    evaluation's generation took 13-24 % less time. Under FSDP every rank must run the
    same forwards, so there it is one round.
    """
    stops = stop_token_ids(model, tokenizer)
    results: list[list[int]] = [[] for _ in input_ids]
    two_rounds = not is_fsdp_model(model)

    with eval_mode(model), progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(input_ids), speed="") if progress else None
        done = 0
        pending = list(range(len(input_ids)))
        for last_round in ((False, True) if two_rounds else (True,)):
            going = []
            order = sorted(pending, key=lambda i: len(input_ids[i]) + len(results[i]), reverse=True)
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                budgets = [max_new_tokens - len(results[i]) for i in indices]
                batch = tokenizer.pad(
                    {"input_ids": [input_ids[i] + results[i] for i in indices]}, padding_side="left", return_tensors="pt"
                ).to(model.device)
                width = batch["input_ids"].shape[1]
                early = [] if last_round else [_FewRowsLeft(stops, width, len(indices) // 4)]
                output = model.generate(
                    **batch,
                    do_sample=False,
                    max_new_tokens=max(budgets),
                    eos_token_id=stops,
                    pad_token_id=tokenizer.pad_token_id,
                    use_cache=True,
                    stopping_criteria=StoppingCriteriaList(early),
                    # FSDP: every rank must run each forward (it gathers the layers); keep all ranks
                    # stepping until every rank's batch has finished
                    synced_gpus=is_fsdp_model(model),
                )
                for index, budget, tokens in zip(indices, budgets, output[:, width:].tolist()):
                    tokens = tokens[:budget]
                    kept = _cut_at_stop(tokens, stops)
                    results[index] = results[index] + kept
                    if last_round or len(kept) < len(tokens) or len(tokens) == budget:  # stopped, or at its budget
                        done += 1
                    else:
                        going.append(index)
                if bar is not None:
                    elapsed = bar.tasks[task].elapsed or 1e-9
                    bar.update(task, completed=done, speed=f"{done / elapsed:.1f} prompts/s")
            pending = going
            if not pending:
                break
    return results


# Set by `sharded_across`: under DDP every rank holds the whole model, so the ranks split the
# prompts of each generation and gather the answers instead of rank 0 generating them all.
_SHARDS: contextvars.ContextVar = contextvars.ContextVar("generation_shards", default=None)


@contextmanager
def sharded_across(dist) -> Iterator[None]:
    """Within this block, `generate_token_ids` on each DDP rank answers every world_size-th
    prompt and all ranks get every answer, in order. Every rank must make the same calls.
    Under FSDP (no rank can run the model alone) and on one process it changes nothing."""
    token = _SHARDS.set(dist if dist.enabled and not dist.sharded else None)
    try:
        yield
    finally:
        _SHARDS.reset(token)


def interleave(parts: list[list]) -> list:
    """Rank r's answers to prompts r, r + n, r + 2n, ... back in the prompts' order."""
    return [parts[i % len(parts)][i // len(parts)] for i in range(sum(len(part) for part in parts))]


def generate_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
    description: str = "generate",
    system_prompt: SystemPrompts = None,
) -> list[list[int]]:
    """The new tokens of each user prompt's greedy continuation (chat template applied)."""
    input_ids = chat_input_ids(tokenizer, prompts, system_prompt)
    dist = _SHARDS.get()
    if dist is not None:
        input_ids = input_ids[dist.rank :: dist.world_size]
        progress = progress and dist.is_main
    token_ids = generate_ids(model, tokenizer, input_ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             progress=progress, description=description)
    return token_ids if dist is None else interleave(dist.all_gather(token_ids))


def decode(tokenizer: PreTrainedTokenizerBase, token_ids: list[list[int]]) -> list[str]:
    return [text.strip() for text in tokenizer.batch_decode(token_ids, skip_special_tokens=True)]


def _cut_at_stop(tokens: list[int], stops: list[int]) -> list[int]:
    # A finished sequence is padded until the whole batch finishes; drop the stop and after.
    for position, token in enumerate(tokens):
        if token in stops:
            return tokens[:position]
    return tokens


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
    description: str = "generate",
    system_prompt: SystemPrompts = None,
) -> list[str]:
    """Greedy responses to user prompts (after `system_prompt`, if any), decoded without special tokens."""
    token_ids = generate_token_ids(
        model, tokenizer, prompts,
        max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, description=description,
        system_prompt=system_prompt,
    )
    return decode(tokenizer, token_ids)


def generate_one_by_one(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    progress: bool = False,
) -> list[str]:
    """The naive loop (one `generate` call per prompt): the reference for tests and bench."""
    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=1, progress=progress)
