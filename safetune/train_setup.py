"""The parts a training run is built from, each made from the recipe: the model (LoRA,
gradient checkpointing, FSDP's sharded loading, a frozen reference copy), the methods'
set-up, the number of steps, the optimizer and its learning-rate schedule, a new run's first
files. `Trainer.setup` puts them together (the data is `train_data`'s).
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
from pathlib import Path

import torch

from safetune.distributed import Distributed
from safetune.envinfo import collect_env
from safetune.errors import SafetuneError
from safetune.files import write_atomic
from safetune.methods import MethodContext, SafetyMethod
from safetune.modeling import BaseWithoutAdapters, add_lora, build_empty_model, load_model
from safetune.recipe import Recipe
from safetune.rundir import RESOLVED_RECIPE


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the model
def build_model(recipe: Recipe, dist: Distributed, device: torch.device, wants_reference: bool):
    """The model to train (LoRA, checkpointing; sharded under FSDP) and, if a method wants one,
    the frozen aligned model (else None): under LoRA the base with the adapters off, else a copy."""
    if dist.sharded:  # FSDP: sharded from the start; no rank holds the whole model on its device
        return load_sharded_model(recipe, dist, device, wants_reference)
    model = prepare_model(load_model(recipe.model, device=device), recipe)
    if not wants_reference:
        return model, None
    if recipe.model.lora:  # the base under the adapters is the aligned model: no copy needed
        return model, BaseWithoutAdapters(model)
    return model, copy.deepcopy(model).eval().requires_grad_(False)


def prepare_model(model, recipe: Recipe):
    """LoRA adapters and gradient checkpointing, as the recipe asks."""
    if recipe.model.lora:
        model = add_lora(model, recipe.model)
    if recipe.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def load_sharded_model(recipe: Recipe, dist: Distributed, device: torch.device, wants_reference: bool):
    """FSDP: rank 0 alone reads the weights (into CPU memory); every rank builds the model on
    the meta device, shards it and receives its shards from rank 0 (`Distributed.load_shards`).
    The frozen reference copy, if a method wants one, is sharded the same way.

    Rank 0 makes its LoRA adapters (random init) exactly as one process would, and every
    rank then continues from rank 0's random state: the run is the 1-process run's.
    """
    whole = buffers = loaded_as = conversions = None
    if dist.is_main:
        base = load_model(recipe.model, device="cpu")
        # what from_pretrained gives beyond the weights: the dtype, the folder's generation
        # settings, and (rank 0 alone saves) the renaming back to the checkpoint's own key names
        loaded_as = {"dtype": base.dtype, "generation_config": base.generation_config}
        conversions = getattr(base, "_weight_conversions", None)
        loaded = prepare_model(base, recipe)
        whole, buffers = loaded.state_dict(), dict(loaded.named_buffers())
        del base, loaded
    loaded_as = dist.broadcast(loaded_as)
    random_state = dist.broadcast(torch.get_rng_state())  # rank 0's, as one process has it now
    models = []
    for _ in range(2 if wants_reference else 1):
        model = build_empty_model(recipe.model, **loaded_as, weight_conversions=conversions)
        models.append(dist.load_shards(prepare_model(model, recipe), whole, buffers, device))
    del whole, buffers
    torch.set_rng_state(random_state)  # building (e.g. LoRA's init of what is then overwritten) drew from it
    reference = models[1].eval().requires_grad_(False) if wants_reference else None
    return models[0], reference


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass: memory for time, same gradients."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # LoRA: frozen embeddings must still pass gradients on


def training_model(recipe: Recipe, dist: Distributed, model, device: torch.device) -> torch.nn.Module:
    """What the task passes run through: `model` in DDP's wrapper when distributed (FSDP shards the
    model itself), compiled when train.compile asks."""
    wrapped = dist.wrap(model, device)
    return compile_for_training(wrapped) if recipe.train.compile else wrapped


def compile_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile'd view of `model` (same parameters) for the task forward pass only.

    A wrapper, not `model.compile()` in place: safety passes and generation (probes, the
    final evaluation) call the model itself and stay eager, since generation would
    recompile at every new sequence length. Batch widths vary, so the second width seen
    makes torch compile a dynamic-shape graph once instead of one graph per width.
    """
    return torch.compile(model)


# --------------------------------------------------------------------------- methods, steps, optimizer
def set_up_methods(methods: list[SafetyMethod], ctx: MethodContext, model) -> list[torch.nn.Parameter]:
    """Each method's setup and the parameters it freezes; returns the parameters left to train."""
    for method in methods:
        method.setup(ctx)
        frozen = method.frozen_parameter_names(ctx)  # applied at once: later methods see only trainable ones
        for name, parameter in model.named_parameters():
            if name in frozen:
                parameter.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise SafetuneError("method: every parameter is frozen; nothing left to train")
    return trainable


# --------------------------------------------------------------------------- steps and optimizer
def count_steps(recipe: Recipe, batches_per_epoch: int, warn: bool = False) -> int:
    """The run's optimizer steps; `warn` (rank 0): say so when the warmup fills the whole run."""
    if recipe.train.max_steps is not None:
        total = recipe.train.max_steps
    else:
        total = max(1, math.ceil(recipe.train.epochs * batches_per_epoch / recipe.train.grad_accum))
    if warn and recipe.train.warmup_steps >= total:
        print(f"warning: train.warmup_steps ({recipe.train.warmup_steps}) is not shorter than the run "
              f"({total} steps); the learning rate never reaches train.learning_rate", file=sys.stderr)
    return total


def build_optimizer(recipe: Recipe, params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where the device has a fused kernel (one launch for all tensors)."""
    fused = device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=recipe.train.learning_rate, betas=recipe.train.adam_betas,
                             weight_decay=recipe.train.weight_decay, fused=fused)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int):
    """The learning-rate schedule: warmup, then train.lr_schedule over the run."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(recipe.train.lr_schedule, recipe.train.warmup_steps, total_steps)
    )


def lr_multiplier(schedule: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


# --------------------------------------------------------------------------- the run folder
def write_run_files(run_dir: Path, recipe: Recipe, device: torch.device, processes: int,
                    data_files: dict[str, str]) -> None:
    """A new run's first files: the recipe as resolved, and env.json (versions, device, data files)."""
    write_atomic(run_dir / RESOLVED_RECIPE, recipe.to_yaml())
    env = collect_env() | {"seed": recipe.train.seed, "device_used": str(device),
                           "processes": processes, "data_files": data_files}
    write_atomic(run_dir / "env.json", json.dumps(env, indent=2))
