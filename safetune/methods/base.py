"""The protocol every safety method implements, and the context it receives.

A method never opens files or parses YAML. The training loop calls its hooks in this
order each optimizer step:

    prepare_batch  -> (loss | default cross-entropy) + extra_loss  -> backward
                      (a term on other data may be backpropagated first: ctx.backward)
    ... repeated for each micro-batch of gradient accumulation ...
    after_backward (edit the accumulated, synchronised .grad)  -> clip
    before_step -> optimizer.step -> after_step (e.g. edit the applied update, reset a probe)

`setup` runs once before training, after the model is built and before the optimizer
exists, so `frozen_parameter_names` can take parameters out of training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from safetune.data import Example, collate


@dataclass
class MethodContext:
    model: nn.Module
    tokenizer: Any
    recipe: Any
    device: torch.device
    run_dir: Path | None  # None in a dry run: a method writes and reuses no cache file
    safety: list[Example]
    seed: int
    borderline: list[Example] = field(default_factory=list)  # benign look-alikes with normal answers
    train_examples: list[Example] = field(default_factory=list)  # the task data the batches come from
    step: int = 0  # the optimizer step being computed (0-based)
    reference_model: Any = None  # the frozen aligned model, called like one (needs_reference_model)
    optimizer: torch.optim.Optimizer | None = None  # set by the loop once it exists (before step 0)
    log: Callable[[str], None] = print
    # Distributed runs: the TASK forward pass must go through `train_model` (the DDP wrapper,
    # which synchronises gradients); `model` is the bare module for names, parameters and
    # safety-side passes (identical on every rank). Only the main process writes files.
    train_model: nn.Module | None = None
    is_main: bool = True
    # makes a safety-side tensor list identical on every rank (rank 0's); a no-op on one process
    broadcast_tensors: Callable[[list[torch.Tensor]], None] = lambda tensors: None
    # Backpropagates a loss term at once, weighted and scaled as the pass's loss is (set by the
    # loop for each forward pass; None outside one). A method whose term is a forward pass of
    # its own (e.g. on safety data) calls it BEFORE the task's forward: that graph is then
    # freed before the task's is built, so the two never take memory at the same time. (DDP:
    # gradients accumulate locally until the task's backward synchronises them all.)
    backward: Callable[[torch.Tensor], None] | None = None

    def task_model(self) -> nn.Module:
        return self.train_model if self.train_model is not None else self.model

    def batch_to_device(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        batch = collate(examples, self.tokenizer.pad_token_id)
        return {key: value.to(self.device) for key, value in batch.items()}

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


class SafetyMethod:
    """Default hooks do nothing, so a method overrides only what it changes."""

    name = "base"
    setup_order = 1  # lower sets up first; freezing (0) goes before methods that read parameters
    needs_reference_model = False  # True: the loop keeps a frozen copy of the aligned model

    def __init__(self, config):
        self.config = config

    def setup(self, ctx: MethodContext) -> None:
        """Once, before training (e.g. compute a Fisher matrix, detect safety layers)."""

    def frozen_parameter_names(self, ctx: MethodContext) -> set[str]:
        return set()

    def prepare_batch(self, ctx: MethodContext, examples: list[Example], micro_step: int) -> list[Example]:
        return examples

    def loss(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Own the task loss (e.g. per-token weighting). None = the loop's cross-entropy."""
        return None

    def extra_loss(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """A term added to the task loss (e.g. a regulariser)."""
        return None

    def after_backward(self, ctx: MethodContext) -> dict[str, float]:
        """Edit the accumulated gradients in place before clipping; return values to log."""
        return {}

    def before_step(self, ctx: MethodContext) -> None:
        """Right before optimizer.step (after clipping): e.g. remember the weights."""

    def after_step(self, ctx: MethodContext) -> dict[str, float]:
        """Right after optimizer.step: e.g. edit the applied update; return values to log."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Figures for the safety report (e.g. SafeGrad's conflict rate)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
