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
    work; 7% of the lab task's tokens are trained). Here the head projects only the
    positions that predict a trained token (`trained_logits`). Same value and gradients
    as the full computation; a model whose forward lacks `logits_to_keep` takes the
    plain path. No KV cache either: training never reads it, and building one copies
    every layer's keys and values.
    """
    if not _takes_logits_to_keep(model):
        return model(**batch).loss
    logits, targets, _ = trained_logits(model, batch)
    total = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    # a shard with no trained token (possible across ranks) adds 0, not 0/0
    return total / max(targets.numel(), 1)


def trained_columns(labels: torch.Tensor) -> torch.Tensor:
    """The positions i (0 .. length - 2) where some row predicts a trained token i + 1."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


def logits_at(model, batch: dict[str, torch.Tensor], columns: torch.Tensor) -> torch.Tensor:
    """The logits of positions `columns` only ([batch, len(columns), vocab]), no KV cache."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    if _takes_logits_to_keep(model):
        return model(**inputs, logits_to_keep=columns, use_cache=False).logits
    return model(**inputs, use_cache=False).logits[:, columns]


def trained_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits of the N positions that predict a trained token ([N, vocab]), those tokens
    ([N]), and where the positions sit: a mask over [batch, `trained_columns`], row-major.

    `logits_to_keep` can only keep whole columns (every row at once); rows of different
    lengths put their answers in different columns, so most kept cells are still prompt or
    padding. A forward pre-hook on the output head hands it only the N wanted hidden
    states. What a model does after its head (Gemma's soft-capping, a logit scale) is
    elementwise and works on [N, vocab] alike; a model whose head is not its output
    embedding module gets the columns and is cut afterwards.
    """
    labels = batch["labels"]
    columns = trained_columns(labels)
    targets = labels[:, 1:][:, columns]  # position i predicts token i + 1
    mask = targets != IGNORE_INDEX
    handle = None
    head = _output_head(model) if _takes_logits_to_keep(model) else None
    if head is not None:
        def gather(module, args):
            hidden = args[0]
            return (hidden[mask], *args[1:]) if hidden.shape[:2] == mask.shape else None

        handle = head.register_forward_pre_hook(gather)
    try:
        logits = logits_at(model, batch, columns)
    finally:
        if handle is not None:
            handle.remove()
    if logits.dim() == 3:  # the hook did not apply
        logits = logits[mask]
    return logits, targets[mask], mask


def next_token_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(trained token | what precedes it), and the mask of trained tokens: [batch, columns]
    (`trained_columns`; 0 where the mask is False, so every masked sum is the full one).
    float32 cross-entropy as HF's loss computes it.
    """
    logits, targets, mask = trained_logits(model, batch)
    ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    return torch.zeros(mask.shape, dtype=ce.dtype, device=ce.device).masked_scatter(mask, -ce), mask


def _unwrapped(model):
    inner = getattr(model, "module", model)  # DistributedDataParallel
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft


def _takes_logits_to_keep(model) -> bool:
    return _forward_takes(type(_unwrapped(model)), "logits_to_keep")


def _output_head(model):
    get = getattr(_unwrapped(model), "get_output_embeddings", None)
    return get() if get is not None else None


@functools.cache
def _forward_takes(cls: type, argument: str) -> bool:
    return argument in inspect.signature(cls.forward).parameters
