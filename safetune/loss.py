"""The causal-LM loss every pass trains with: the mean cross-entropy of the trained tokens."""

from __future__ import annotations

import functools
import inspect

import torch

from safetune.data import IGNORE_INDEX


def next_token_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`model(**batch).loss` (mean cross-entropy of the trained tokens), with logits only where it reads them.

    In chat data most positions are prompt: their logits never reach the loss, yet
    projecting them onto the vocabulary (and the softmax, forward and backward) is a
    large share of a small model's step (the head is 18% of the lab model's matmul
    work; 7% of the lab task's tokens are trained). Transformers' causal
    LMs take `logits_to_keep`: here the sequence columns where some row predicts a
    trained token. Same value and gradients as the full computation; a model whose
    forward lacks the argument takes the plain path. No KV cache either: training
    never reads it, and building one copies every layer's keys and values.
    """
    if not _takes_logits_to_keep(model):
        return model(**batch).loss
    targets = batch["labels"][:, 1:]  # position i predicts token i + 1
    columns = trained_columns(batch["labels"])
    logits = logits_at(model, batch, columns)
    kept = targets[:, columns]
    total = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), kept.flatten(),
                                              ignore_index=IGNORE_INDEX, reduction="sum")
    # a shard with no trained token (possible across ranks) adds 0, not 0/0
    return total / (kept != IGNORE_INDEX).sum().clamp(min=1)


def trained_columns(labels: torch.Tensor) -> torch.Tensor:
    """The positions i (0 .. length - 2) where some row predicts a trained token i + 1."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


def logits_at(model, batch: dict[str, torch.Tensor], columns: torch.Tensor) -> torch.Tensor:
    """The logits of positions `columns` only ([batch, len(columns), vocab]), no KV cache."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    if _takes_logits_to_keep(model):
        return model(**inputs, logits_to_keep=columns, use_cache=False).logits
    return model(**inputs, use_cache=False).logits[:, columns]


def next_token_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(trained token | what precedes it), and the mask of trained tokens: [batch, columns].

    Only the columns `trained_columns` keeps (the rest hold no trained token in any row, so
    every masked sum over them is unchanged); float32 cross-entropy as HF's loss computes it.
    """
    columns = trained_columns(batch["labels"])
    logits = logits_at(model, batch, columns)
    targets = batch["labels"][:, 1:][:, columns]
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                           ignore_index=IGNORE_INDEX, reduction="none")
    return -ce.view_as(targets), targets != IGNORE_INDEX


def _takes_logits_to_keep(model) -> bool:
    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    return _forward_takes(type(inner), "logits_to_keep")


@functools.cache
def _forward_takes(cls: type, argument: str) -> bool:
    return argument in inspect.signature(cls.forward).parameters
