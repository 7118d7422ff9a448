"""The mechanics of one optimizer step, however the run is spread and scaled: the loss the
methods compose, the micro-batches of gradient accumulation and each rank's share of them,
DDP's gradient sync, mixed precision (autocast, fp16's loss scaling), clipping of sharded
gradients, the one decision every rank must take alike, and the sum over ranks of what a
metrics row reports. `Trainer.train_step` is the step itself (the methods' hooks, the update);
it calls these.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from safetune.data import BatchSchedule, Example, length_groups
from safetune.distributed import Distributed, full_tensor
from safetune.loss import next_token_loss
from safetune.methods import MethodContext, SafetyMethod

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def compute_loss(methods: list[SafetyMethod], ctx: MethodContext, model, batch) -> torch.Tensor:
    """The task loss (a method may own it) plus every method's extra term."""
    loss = None
    for method in methods:
        loss = method.loss(ctx, batch)
        if loss is not None:
            break
    if loss is None:
        loss = next_token_loss(model, batch)
    for method in methods:
        extra = method.extra_loss(ctx, batch)
        if extra is not None:
            loss = loss + extra
    return loss


def mixed_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """train.precision as the autocast dtype of the forward pass (None: fp32) and the loss scaler:
    fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return AUTOCAST_DTYPES.get(precision), torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass (`dtype` None: full precision)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def backward(scaler: torch.amp.GradScaler, loss: torch.Tensor, device: torch.device) -> None:
    """Backpropagate `loss` with fp16's loss scale, outside autocast (a method may call this
    from inside a forward pass, through ctx.backward)."""
    with torch.autocast(device_type=device.type, enabled=False):
        scaler.scale(loss).backward()


def micro_batches(schedule: BatchSchedule, methods: list[SafetyMethod], ctx: MethodContext, step: int,
                  accum: int) -> list[list[Example]]:
    """The step's `accum` global micro-batches, as the methods prepare them (e.g. mix adds its
    safety rows) before they are sharded across ranks."""
    batches = []
    for micro in range(accum):
        micro_step = step * accum + micro
        examples = schedule.batch(micro_step)
        for method in methods:
            examples = method.prepare_batch(ctx, examples, micro_step)
        batches.append(examples)
    return batches


def accumulate_gradients(batches: list[list[Example]], methods: list[SafetyMethod], ctx: MethodContext,
                         train_model, scaler: torch.amp.GradScaler, autocast_dtype: torch.dtype | None,
                         dist: Distributed, split_by_length: bool) -> tuple[torch.Tensor, int]:
    """Forward and backward over this rank's share of every micro-batch; returns the step's loss
    (this rank's share, a tensor: no host sync) and the tokens this rank trained.

    Each pass's loss is weighted by its share of the step's trained tokens, so the gradient is
    the per-token mean over the whole (global) step: the same on 1 process with batch B x N as
    on N processes with batch B.
    """
    step_tokens = max(1, sum(e.trained_tokens for examples in batches for e in examples))
    loss_sum = torch.zeros((), device=ctx.device)
    tokens = 0
    # Each rank's share of a micro-batch, split in two by length when that saves much padding
    # (mix's long replay rows beside short task rows). Not under FSDP: every pass there is a
    # collective, so every rank must make the same number of passes.
    split = split_by_length and not dist.sharded
    passes = []
    for examples in batches:
        mine = dist.shard(examples)
        passes += length_groups(mine) if split else [mine]
    for index, mine in enumerate(passes):
        batch = ctx.batch_to_device(mine)
        # DDP averages gradients over ranks: x world_size makes that average a token-weighted sum
        weight = sum(e.trained_tokens for e in mine) / step_tokens * dist.world_size
        # DDP: all-reduce on the last pass only. FSDP reduce-scatters every micro-batch:
        # skipping it would keep every layer's whole gradient in memory, which FSDP exists to avoid.
        skip_sync = index < len(passes) - 1 and dist.enabled and not dist.sharded
        ctx.backward = lambda term: backward(scaler, term * weight, ctx.device)
        with (train_model.no_sync() if skip_sync else nullcontext()), autocast(ctx.device, autocast_dtype):
            loss = compute_loss(methods, ctx, train_model, batch)
        ctx.backward = None
        backward(scaler, loss * weight, ctx.device)
        loss_sum += loss.detach().float() * weight
        tokens += sum(len(e.input_ids) for e in mine)  # counted on the host: no device sync
    return loss_sum / dist.world_size, tokens


def clip_gradients(parameters: list[torch.nn.Parameter], max_grad_norm: float | None) -> torch.Tensor:
    """Clip to `max_grad_norm` (None or 0: measure only); returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm or float("inf"))
    return full_tensor(norm)  # FSDP: a DTensor


def agree_on_step(dist: Distributed, loss: torch.Tensor, grad_norm: torch.Tensor, stop_asked: bool,
                  scaler: torch.amp.GradScaler) -> tuple[bool, bool, bool]:
    """(finite, diverged, stop): may the step update the weights, did the run diverge, has any
    rank been asked to stop. The same on every rank, from one all-reduce: the step's one host sync."""
    flags = torch.stack([~torch.isfinite(loss), ~torch.isfinite(grad_norm),
                         torch.tensor(stop_asked, device=loss.device)]).float()
    if dist.enabled:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    loss_ok, finite = not bool(flags[0]), not bool(flags[:2].max())
    # fp16: non-finite gradients with a finite loss mean the loss scale overflowed, not
    # divergence; the scaler skips the step and lowers the scale
    diverged = not finite and not (scaler.is_enabled() and loss_ok)
    return finite, diverged, bool(flags[2])


def summed_over_ranks(dist: Distributed, loss: torch.Tensor, tokens: float) -> tuple[torch.Tensor, float]:
    """The step's loss and the tokens trained, over all ranks (each holds its share of both)."""
    if not dist.enabled:
        return loss, tokens
    shares = torch.stack([loss, torch.tensor(float(tokens), device=loss.device)])
    torch.distributed.all_reduce(shares)
    return shares[0], float(shares[1])
