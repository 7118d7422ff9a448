"""The causal-LM loss every pass trains with: the mean cross-entropy of the trained tokens."""

from __future__ import annotations

import functools
import inspect

import torch

from safetune.data import IGNORE_INDEX
from safetune.errors import SafetuneError
from safetune.model_layers import decoder_layers


def next_token_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`model(**batch).loss` (mean cross-entropy of the trained tokens), with logits only where it reads them.

    In chat data most positions are prompt: their logits never reach the loss, yet
    projecting them onto the vocabulary (and the softmax, forward and backward) is a
    large share of a small model's step (the head is 18% of the lab model's matmul
    work; 7% of the lab task's tokens are trained). Here the head projects only the
    positions that predict a trained token (`trained_logits`), and so does the last
    decoder layer's MLP, whose output elsewhere the head never reads. Same value and
    gradients as the full computation; a model whose forward lacks `logits_to_keep` takes
    the plain path. No KV cache either: training never reads it, and building one copies
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
    handles = []
    head = _output_head(model) if _takes_logits_to_keep(model) else None
    if head is not None:
        def gather(module, args):
            hidden = args[0]
            return (hidden[mask], *args[1:]) if hidden.shape[:2] == mask.shape else None

        handles.append(head.register_forward_pre_hook(gather))
        handles += _last_mlp_on_trained_rows(model, columns, mask)
    try:
        logits = logits_at(model, batch, columns)
    finally:
        for handle in handles:
            handle.remove()
    if logits.dim() == 3:  # the hook did not apply
        logits = logits[mask]
    return logits, targets[mask], mask


def _last_mlp_on_trained_rows(model, columns: torch.Tensor, mask: torch.Tensor) -> list:
    """Hooks that run the LAST decoder layer's MLP on the N positions the head reads only.

    The last layer's output at any other position goes nowhere: its MLP output there only
    adds into a final hidden state the head never sees (attention, which mixes positions,
    comes before it). The MLP works per position, so computing it on the N wanted rows and
    leaving zeros elsewhere gives the same loss and gradients, and saves the work of one
    MLP on every untrained position (on the 4-layer lab model, 14% of a step's matrix
    products). Not done where the MLP is recomputed later (activation checkpointing: the
    recomputation would not see these hooks) or is a mixture of experts (routing
    statistics over all tokens).
    """
    inner = _unwrapped(model)
    name = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") else "is_gradient_checkpointing"
    if getattr(inner, name, False):  # (transformers 5 renamed the property)
        return []
    try:
        _, blocks = decoder_layers(inner)
    except SafetuneError:
        return []
    mlp = getattr(blocks[-1], "mlp", None)
    if not isinstance(mlp, torch.nn.Module) or any("expert" in name for name, _ in mlp.named_modules()):
        return []
    rows, kept = mask.nonzero(as_tuple=True)
    positions = columns[kept]  # (rows[i], positions[i]): the i-th row the head reads, in its order
    shape = {}

    def keep_rows(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[0] != mask.shape[0]:
            return None
        shape["full"] = hidden.shape
        return (hidden[rows, positions].unsqueeze(0), *args[1:])

    def scatter_back(module, args, output):
        full = shape.pop("full", None)
        if full is None or not isinstance(output, torch.Tensor):
            return None
        return output.new_zeros(full[:2] + output.shape[-1:]).index_put((rows, positions), output[0])

    return [mlp.register_forward_pre_hook(keep_rows), mlp.register_forward_hook(scatter_back)]


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
