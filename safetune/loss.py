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
    columns = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, logits_to_keep=columns, use_cache=False).logits
    kept = targets[:, columns]
    total = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), kept.flatten(),
                                              ignore_index=IGNORE_INDEX, reduction="sum")
    # a shard with no trained token (possible across ranks) adds 0, not 0/0
    return total / (kept != IGNORE_INDEX).sum().clamp(min=1)


def _takes_logits_to_keep(model) -> bool:
    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    return _forward_takes(type(inner), "logits_to_keep")


@functools.cache
def _forward_takes(cls: type, argument: str) -> bool:
    return argument in inspect.signature(cls.forward).parameters
