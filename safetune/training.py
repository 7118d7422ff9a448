"""THE training loop: one loop for every safety method (they plug in through hooks).

Shaped like a torchtune recipe: a `Trainer` with a lifecycle you can read top to bottom,

    setup()       run directory -> model, tokenizer, data -> methods -> optimizer -> (resume)
    train_step()  one optimizer step: micro-batches, method hooks, clip, step
    fit()         the loop: steps, logging, safety probes, checkpoints, divergence guard
    finish()      final checkpoint, held-out loss, summary, safety report

and one state object (`TrainState` + the model/optimizer/scheduler/method state) that
checkpoints, resumes and rollbacks all go through (`capture_state` / `restore_state`).
"""

from __future__ import annotations

import copy
import gc
import json
import math
import random
import signal
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from safetune import checkpoint as ckpt
from safetune.audit import audit_training_data
from safetune.data import (IGNORE_INDEX, BatchSchedule, Example, build_training_data, collate, length_groups,
                           pack_examples, prepare_packing)
from safetune.distributed import Distributed, full_tensor, gather_full
from safetune.envinfo import collect_env
from safetune.evaluation.generation import sharded_across
from safetune.errors import Interrupted, SafetuneError, UsageError
from safetune.files import write_atomic
from safetune.loss import next_token_loss
from safetune.methods import MethodContext, SafetyMethod, build_methods
from safetune.metrics import MetricsLog, trim_after
from safetune.modeling import (adapter_weights_by_model_name, add_lora, build_empty_model, is_adapter_folder,
                               load_model, load_tokenizer, load_trained_weights, model_source, pick_device,
                               read_saved_weights)
from safetune.monitor import SafetyMonitor
from safetune.progress import TrainingProgress
from safetune.recipe import Recipe
from safetune.rundir import FINAL_DIR, METRICS_LOG, RESOLVED_RECIPE, prepare_run_dir

# After `train.max_bad_steps` non-finite steps in a row the run rolls back with this LR factor,
# at most this many times, before it gives up.
DIVERGENCE_LR_FACTOR = 0.5
MAX_DIVERGENCE_ROLLBACKS = 3
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path | None
    steps: int
    wall_time_s: float
    report: dict | None = None


@dataclass
class TrainState:
    """The loop's own counters; saved with every checkpoint next to the tensors' state."""

    step: int = 0  # optimizer steps done
    lr_scale: float = 1.0  # lowered by each rollback
    wall_time_s: float = 0.0  # training time of the earlier segments of a resumed run
    bad_steps: int = 0  # consecutive non-finite steps
    skipped_steps: int = 0  # all non-finite steps, skipped without an update
    divergence_rollbacks: int = 0
    world_size: int = 1  # processes that trained it (a resume needs the same global batch)


# --------------------------------------------------------------------------- small helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def count_steps(recipe: Recipe, batches_per_epoch: int) -> int:
    if recipe.train.max_steps is not None:
        return recipe.train.max_steps
    return max(1, math.ceil(recipe.train.epochs * batches_per_epoch / recipe.train.grad_accum))


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


def mean_loss(model, examples: list[Example], tokenizer, device, batch_size: int = 16) -> float | None:
    """Mean per-token cross-entropy over `examples` (the held-out task split)."""
    if not examples:
        return None
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * n
            tokens += n
    model.train()
    return total / max(tokens, 1)


def show_example(example: Example, tokenizer, console) -> None:
    """Print a tokenised example with the masked (not trained) tokens dimmed."""
    from rich.text import Text

    text = Text()
    for token_id, label in zip(example.input_ids, example.labels):
        piece = tokenizer.decode([token_id])
        text.append(piece, style="dim strike" if label == IGNORE_INDEX else "bold green")
    console.print("[bold]first training example[/] ([dim strike]masked[/], [bold green]trained[/]):")
    console.print(text)


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


class StopRequested(Exception):
    """SIGTERM during training: leave a resumable checkpoint and stop."""


# --------------------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, recipe: Recipe, *, show_progress: bool = True, command: str | None = None):
        self.recipe = recipe
        self.dist = Distributed.from_env(recipe.train.distributed.strategy)
        if self.dist.enabled:  # the strategy in effect (accelerate's --use_fsdp may pick it) is what the run records
            recipe.train.distributed.strategy = self.dist.strategy
        self.show_progress = show_progress and self.dist.is_main  # rank 0 alone draws and prints
        self.say = print if self.show_progress else (lambda *_: None)
        # how the user started this run, for the "resume with" hint
        self.command = command or "safetune train <recipe>"
        self.state = TrainState()
        self.monitor: SafetyMonitor | None = None
        self.metrics: MetricsLog | None = None
        self.stop = {"signal": None}  # set by the SIGTERM handler
        self.stop_agreed = False  # some rank was asked to stop (agreed on in train_step)
        self._segment_start = time.perf_counter()

    # ----------------------------------------------------------------------- setup
    def setup(self, *, resume: bool = False, dry_run: bool = False) -> None:
        """Everything before the first step, in order: run dir, model and data, baseline,
        methods, optimizer, then a fresh start or the resumed state."""
        recipe = self.recipe
        model_source(recipe.model)  # a model.path that is no model fails before the run dir is touched
        resume_from = None
        if dry_run or not self.dist.is_main:
            self.run_dir = recipe.output_dir()
        else:
            self.run_dir, resume_from = prepare_run_dir(recipe, resume, self.say)
        resume_from = self.dist.broadcast(resume_from)
        seed_everything(recipe.train.seed)  # the same on every rank: model set-up must not differ
        self.device = pick_device(recipe.train.device)

        reference = self.setup_model()
        self.setup_data(dry_run)
        # the untouched model's safety, so the final report can say what was kept
        if not dry_run and recipe.eval.suites and recipe.eval.at_end and self.dist.mirrored():
            ensure_baseline(recipe, self.run_dir, self.model, self.tokenizer, self.show_progress, self.dist)
        self.dist.reshard(self.model)
        self.dist.barrier()
        self._segment_start = time.perf_counter()  # wall time: method setup + training, not the baseline
        self.setup_methods(reference, dry_run)  # they may freeze parameters: before the optimizer
        self.setup_optimizer()
        if not dry_run:
            self.start_or_resume(resume_from)

    def setup_model(self):
        """Tokenizer, methods, the model (LoRA, checkpointing; sharded under FSDP) and, if a
        method wants one, a frozen copy of the aligned model (returned)."""
        recipe = self.recipe
        self.tokenizer = load_tokenizer(recipe.model)
        self.methods: list[SafetyMethod] = build_methods(recipe.method)
        wants_reference = any(m.needs_reference_model for m in self.methods)
        if self.dist.sharded:  # FSDP: sharded from the start; no rank holds the whole model on its device
            self.model, reference = self.load_sharded_model(wants_reference)
        else:
            self.model = self.prepare_model(load_model(recipe.model, device=self.device))
            reference = copy.deepcopy(self.model).eval().requires_grad_(False) if wants_reference else None
        return reference

    def setup_data(self, dry_run: bool) -> None:
        """Tokenised data, the audit of data.train (while the model is the aligned one), packing
        and the batch schedule."""
        recipe = self.recipe
        self.data = build_training_data(recipe.data, self.tokenizer, recipe.train.seed)
        if self.dist.is_main:
            for note in self.data.notes:  # dropped or truncated rows: shown even with --quiet
                print(note, file=sys.stderr)
        # a data audit may drop harmful rows from data.train (every rank ends with rank 0's choice)
        everything = self.data.train
        if self.dist.mirrored():
            self.audit = audit_training_data(recipe, self.data, self.model, self.tokenizer, device=self.device,
                                             run_dir=None if dry_run else self.run_dir, log=self.say,
                                             broadcast=self.dist.agree, write=self.dist.is_main)
        position = {id(example): i for i, example in enumerate(everything)}
        kept = self.dist.broadcast([position[id(e)] for e in self.data.train] if self.dist.is_main else None)
        self.audit = self.dist.broadcast(self.audit if self.dist.is_main else None)
        self.data.train = [everything[i] for i in kept]
        train_examples = self.data.train  # what the batches are drawn from: read only after the audit
        if recipe.data.packing:  # batches of packed sequences; the examples themselves stay as they are
            prepare_packing(self.model)
            train_examples = pack_examples(train_examples, recipe.data.max_seq_len, recipe.train.seed)
        # the GLOBAL micro-batch (batch_size per process x processes); each rank trains on its slice
        self.schedule = BatchSchedule(train_examples, recipe.train.batch_size * self.dist.world_size,
                                      recipe.train.seed, recipe.data.shuffle)
        self.total_steps = count_steps(recipe, self.schedule.batches_per_epoch)

    def setup_methods(self, reference, dry_run: bool) -> None:
        """The methods' context, each method's setup, the parameters they freeze."""
        recipe = self.recipe
        self.ctx = MethodContext(
            model=self.model, tokenizer=self.tokenizer, recipe=recipe, device=self.device,
            run_dir=None if dry_run else self.run_dir,  # a dry run leaves the run dir untouched
            safety=self.data.safety, borderline=self.data.borderline, train_examples=self.data.train,
            seed=recipe.train.seed,
            reference_model=reference, log=self.say,
            is_main=self.dist.is_main, broadcast_tensors=self.dist.broadcast_tensors,
        )
        for method in self.methods:
            method.setup(self.ctx)
            frozen = method.frozen_parameter_names(self.ctx)  # applied at once: later methods see only trainable ones
            for name, parameter in self.model.named_parameters():
                if name in frozen:
                    parameter.requires_grad_(False)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise SafetuneError("method: every parameter is frozen; nothing left to train")

    def setup_optimizer(self) -> None:
        """Optimizer, LR schedule, the DDP/FSDP (and compiled) training model, mixed precision."""
        recipe = self.recipe
        self.optimizer = build_optimizer(recipe, self.trainable, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(recipe.train.lr_schedule, recipe.train.warmup_steps, self.total_steps)
        )
        self.ctx.optimizer = self.optimizer
        self.train_model = self.ctx.train_model = self.dist.wrap(self.model, self.device)
        if recipe.train.compile:
            self.train_model = self.ctx.train_model = compile_for_training(self.train_model)
        precision = recipe.train.precision
        self.autocast_dtype = AUTOCAST_DTYPES.get(precision)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    def start_or_resume(self, resume_from: Path | None) -> None:
        """The monitor, then the checkpoint's state (resume) or the run's first files."""
        recipe = self.recipe
        if recipe.monitor.every:
            self.monitor = SafetyMonitor(recipe, self.model, self.tokenizer)
        self.state.world_size = self.dist.world_size
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            dropped = trim_after(self.run_dir / METRICS_LOG, self.state.step) if self.dist.is_main else 0
            self.say(f"resuming from {resume_from} (step {self.state.step}/{self.total_steps})"
                     + (f"; {dropped} later metrics rows trimmed" if dropped else ""))
        elif self.dist.is_main:
            write_atomic(self.run_dir / RESOLVED_RECIPE, recipe.to_yaml())
            env = collect_env() | {"seed": recipe.train.seed, "device_used": str(self.device),
                                   "processes": self.dist.world_size}
            write_atomic(self.run_dir / "env.json", json.dumps(env, indent=2))
        if resume_from is None or not self.dist.is_main:
            # from here on randomness (dropout) differs per rank, as each rank sees other examples;
            # a resumed rank 0 continues with the generators saved in its checkpoint
            torch.manual_seed(recipe.train.seed * 1000 + self.dist.rank + self.state.step * 7919)

    def prepare_model(self, model):
        """LoRA adapters and gradient checkpointing, as the recipe asks."""
        if self.recipe.model.lora:
            model = add_lora(model, self.recipe.model)
        if self.recipe.train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model

    def load_sharded_model(self, wants_reference: bool):
        """FSDP: rank 0 alone reads the weights (into CPU memory); every rank builds the model on
        the meta device, shards it and receives its shards from rank 0 (`Distributed.load_shards`).
        The frozen reference copy, if a method wants one, is sharded the same way.

        Rank 0 makes its LoRA adapters (random init) exactly as one process would, and every
        rank then continues from rank 0's random state: the run is the 1-process run's.
        """
        recipe, dist = self.recipe, self.dist
        whole = buffers = loaded_as = conversions = None
        if dist.is_main:
            base = load_model(recipe.model, device="cpu")
            # what from_pretrained gives beyond the weights: the dtype, the folder's generation
            # settings, and (rank 0 alone saves) the renaming back to the checkpoint's own key names
            loaded_as = {"dtype": base.dtype, "generation_config": base.generation_config}
            conversions = getattr(base, "_weight_conversions", None)
            loaded = self.prepare_model(base)
            whole, buffers = loaded.state_dict(), dict(loaded.named_buffers())
            del base, loaded
        loaded_as = dist.broadcast(loaded_as)
        random_state = dist.broadcast(torch.get_rng_state())  # rank 0's, as one process has it now
        models = []
        for _ in range(2 if wants_reference else 1):
            model = build_empty_model(recipe.model, **loaded_as, weight_conversions=conversions)
            models.append(dist.load_shards(self.prepare_model(model), whole, buffers, self.device))
        del whole, buffers
        torch.set_rng_state(random_state)  # building (e.g. LoRA's init of what is then overwritten) drew from it
        reference = models[1].eval().requires_grad_(False) if wants_reference else None
        return models[0], reference

    # ----------------------------------------------------------------------- state
    def capture_state(self) -> dict:
        """Everything a checkpoint (or a rollback) needs to continue exactly. "model" holds the
        trainable parameters only: frozen ones (a LoRA base model, frozen layers) never change."""
        trainable = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        return {"trainer": asdict(self.state), "model": trainable,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state(),
                "methods": {m.name: m.state_dict() for m in self.methods},
                "monitor": self.monitor.state_dict() if self.monitor else {}}

    def checkpoint_state(self) -> dict:
        """`capture_state()` as a checkpoint file holds it: no weights (they go to model.safetensors)
        and whole tensors. Under FSDP this gathers shards: every rank must call it."""
        state = {k: v for k, v in self.capture_state().items() if k != "model"}
        state["trainer"]["wall_time_s"] = self.elapsed()
        if self.dist.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            state["optimizer"] = get_optimizer_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            state["methods"] = gather_full(state["methods"])
        return state

    def restore_state(self, state: dict, from_disk: bool = False) -> None:
        if "model" in state:
            missing = set(state["model"]) - set(self.model.state_dict())
            assert not missing, f"snapshot names unknown to the model: {sorted(missing)[:3]}"
            self.model.load_state_dict(state["model"], strict=False)
        if from_disk and self.dist.sharded:  # whole tensors from checkpoint_state(): shard them again
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for method in self.methods:
            method.load_state_dict(state["methods"].get(method.name, {}))
        if self.monitor:
            self.monitor.load_state_dict(state.get("monitor", {}))
        if self.dist.is_main:  # the checkpoint holds rank 0's generators; others reseed after setup
            ckpt.set_rng_state(state["rng"])
        self.state = TrainState(**state["trainer"])

    def elapsed(self) -> float:
        """Training wall time of the whole run, earlier resumed segments included."""
        return self.state.wall_time_s + (time.perf_counter() - self._segment_start)

    def save_checkpoint(self, folder: Path, with_state: bool) -> None:
        """Rank 0 writes; the others wait until the folder is complete (under FSDP they first
        send rank 0 their shards)."""
        weights = None
        if self.dist.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        state = self.checkpoint_state() if with_state and self.dist.mirrored() else None
        if not self.dist.is_main:
            self.dist.barrier()
            return
        info = {"step": self.state.step, "total_steps": self.total_steps, "method": self.recipe.method_names,
                "recipe": self.recipe.name, "wall_time_s": round(self.elapsed(), 2)}
        try:
            ckpt.save_checkpoint(folder, self.model, self.tokenizer, info, state, weights=weights)
        finally:
            self.dist.barrier()

    def load_weights(self, folder: Path) -> None:
        """A checkpoint's weights into the model (under FSDP: each rank keeps its shards of them)."""
        if not self.dist.sharded:
            load_trained_weights(self.model, folder, self.device)
            return
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        folder = Path(folder)
        if is_adapter_folder(folder):  # LoRA: the adapters only; the base weights are the ones loaded at setup
            saved = load_file(folder / "adapter_model.safetensors", device=str(self.device))
            weights = adapter_weights_by_model_name(self.model, saved)
        else:
            weights = read_saved_weights(folder, self.device)
        set_model_state_dict(self.model, weights, options=StateDictOptions(full_state_dict=True, strict=False))

    def load_checkpoint(self, folder: Path) -> None:
        try:
            self.load_weights(folder)
            state = ckpt.load_training_state(folder)
        except Exception as err:  # damaged despite its manifest (or written before manifests existed)
            raise SafetuneError(f"--resume: cannot load {folder}: {str(err).splitlines()[0]}") from None
        saved_world = state["trainer"].get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise UsageError(f"--resume: {folder} was written by {saved_world} processes; resume with the same "
                             "number (the global batch is train.batch_size x processes x train.grad_accum)")
        self.restore_state(state, from_disk=True)

    def rollback(self, target: dict, lr_factor: float, from_disk: bool = False) -> None:
        """Back to a saved state, with the learning rate lowered by `lr_factor`."""
        keep = self.state
        monitor_rollbacks = self.monitor.rollbacks if self.monitor else 0
        self.restore_state(target, from_disk=from_disk)
        if self.monitor:  # the target's count is older: rollbacks already taken still count toward the limit
            self.monitor.rollbacks = monitor_rollbacks
        self.state.lr_scale = keep.lr_scale * lr_factor
        self.state.wall_time_s = keep.wall_time_s
        self.state.divergence_rollbacks = keep.divergence_rollbacks
        self.state.skipped_steps = keep.skipped_steps
        # The restored scheduler holds the LR of its own time: rescale from the recipe's LR.
        scheduler = self.scheduler
        scheduler.base_lrs = [self.recipe.train.learning_rate * self.state.lr_scale for _ in scheduler.base_lrs]
        for group, base, factor in zip(self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)

    # ----------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches. Returns tensors/values to log.

        Each micro-batch's loss is weighted by its share of the step's trained tokens, so
        the gradient is the per-token mean over the whole (global) step: the same on 1
        process with batch B x N as on N processes with batch B. The loss stays a tensor
        (no host sync); the one sync per step is a finiteness flag, so a diverging step
        is skipped instead of poisoning the weights.
        """
        recipe, ctx, dist = self.recipe, self.ctx, self.dist
        step = ctx.step = self.state.step
        accum = recipe.train.grad_accum
        micro_batches = []
        for micro in range(accum):  # methods (e.g. mix) add to the global batch before it is sharded
            micro_step = step * accum + micro
            examples = self.schedule.batch(micro_step)
            for method in self.methods:
                examples = method.prepare_batch(ctx, examples, micro_step)
            micro_batches.append(examples)
        step_tokens = max(1, sum(e.trained_tokens for examples in micro_batches for e in examples))
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        # Each rank's share of a micro-batch, split in two by length when that saves much padding
        # (mix's long replay rows beside short task rows). Not under FSDP: every pass there is a
        # collective, so every rank must make the same number of passes.
        split = recipe.data.split_by_length and not dist.sharded
        passes = []
        for examples in micro_batches:
            mine = dist.shard(examples)
            passes += length_groups(mine) if split else [mine]
        for index, mine in enumerate(passes):
            batch = ctx.batch_to_device(mine)
            # DDP averages gradients over ranks: x world_size makes that average a token-weighted sum
            weight = sum(e.trained_tokens for e in mine) / step_tokens * dist.world_size
            last = index == len(passes) - 1
            # DDP: all-reduce on the last pass only. FSDP reduce-scatters every micro-batch:
            # skipping it would keep every layer's whole gradient in memory, which FSDP exists to avoid.
            skip_sync = not last and dist.enabled and not dist.sharded
            with (self.train_model.no_sync() if skip_sync else nullcontext()), self._autocast():
                loss = compute_loss(self.methods, ctx, self.train_model, batch)
            self.scaler.scale(loss * weight).backward()
            loss_sum += loss.detach().float() * weight
            tokens += sum(len(e.input_ids) for e in mine)  # counted on the host: no device sync
        self.scaler.unscale_(self.optimizer)  # methods and clipping see the true gradients
        logs: dict[str, Any] = {}
        for method in self.methods:
            logs.update(method.after_backward(ctx))
        max_norm = recipe.train.max_grad_norm or float("inf")
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.trainable, max_norm))  # FSDP: a DTensor
        loss_value = loss_sum / dist.world_size
        # every rank must take the same decisions: one all-reduce of [loss bad, grad bad, stop asked]
        flags = torch.stack([~torch.isfinite(loss_value), ~torch.isfinite(grad_norm),
                             torch.tensor(self.stop["signal"] is not None, device=self.device)]).float()
        if dist.enabled:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        loss_ok, finite = not bool(flags[0]), not bool(flags[:2].max())
        self.stop_agreed = bool(flags[2])
        # fp16: non-finite gradients with a finite loss mean the loss scale overflowed, not
        # divergence; the scaler skips the step and lowers the scale
        diverged = not finite and not (self.scaler.is_enabled() and loss_ok)
        if finite:
            for method in self.methods:
                method.before_step(ctx)
            self.scaler.step(self.optimizer)
            for method in self.methods:
                logs.update(method.after_step(ctx))
            self.state.bad_steps = 0
        elif diverged:
            self.state.bad_steps += 1
            self.state.skipped_steps += 1
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        logs["lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.state.step = step + 1
        return {"loss": loss_value, "grad_norm": grad_norm, "tokens": tokens, "diverged": diverged} | logs

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # ----------------------------------------------------------------------- the loop
    def fit(self) -> RunResult:
        recipe = self.recipe
        self.metrics = MetricsLog(self.run_dir / METRICS_LOG,
                                  self.run_dir / "tensorboard" if recipe.output.tensorboard else None,
                                  enabled=self.dist.is_main)
        previous_handler = _install_sigterm(self.stop)
        self.model.train()
        if self.monitor and self.monitor.reference is None:
            first = self.probe(self.state.step)
            self.metrics.write(first.record())
            self.say(first.describe())
        if self.monitor:  # the rollback target until a later probe passes (after a resume: the resumed state)
            self.monitor.remember(self.capture_state())
        window_start, window_tokens = time.perf_counter(), 0
        try:
            with TrainingProgress(self.total_steps, start=self.state.step, log_every=recipe.train.log_every,
                                  enabled=self.show_progress) as bar:
                while self.state.step < self.total_steps:
                    out = self.train_step()
                    step = self.state.step
                    window_tokens += out["tokens"]
                    if out["diverged"]:
                        bar.message(f"step {step}: non-finite loss or gradient; update skipped "
                                    f"({self.state.bad_steps} in a row, {self.state.skipped_steps} in all)")
                        if self.state.bad_steps >= recipe.train.max_bad_steps:
                            self.recover_from_divergence(step, bar)
                            continue
                    if step % recipe.train.log_every == 0 or step == self.total_steps:
                        now = time.perf_counter()
                        if self.dist.enabled:  # each rank holds its share of the loss and tokens
                            shares = torch.stack([out["loss"], torch.tensor(float(window_tokens), device=self.device)])
                            torch.distributed.all_reduce(shares)
                            out["loss"], window_tokens = shares[0], float(shares[1])
                        record = {"step": step, "loss": float(out.pop("loss")), "grad_norm": float(out.pop("grad_norm")),
                                  "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                                  "elapsed_s": self.elapsed(), "skipped_steps": self.state.skipped_steps}
                        # methods' statistics may be tensors (no host sync until now)
                        record |= {k: float(v) if isinstance(v, torch.Tensor) else v
                                   for k, v in out.items() if k not in ("tokens", "diverged")}
                        self.metrics.write(record)
                        bar.update(step, record)
                        window_start, window_tokens = now, 0
                    else:
                        bar.update(step, {})
                    if self.monitor and self.monitor.due(step):
                        self.probe_safety(step, bar)
                    if recipe.train.save_every and step % recipe.train.save_every == 0:
                        self.save_periodic(step, bar)
                    if self.stop_agreed:  # SIGTERM on any rank: all ranks save and stop at the same step
                        raise StopRequested
        except (KeyboardInterrupt, StopRequested):
            self.save_on_interrupt()
        finally:
            self.metrics.close()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        return self.finish()

    def probe(self, step: int):
        """Rank 0 probes (under FSDP every rank runs it with rank 0); every rank acts on rank 0's
        result, so all take the same rollback decision."""
        result = self.dist.broadcast(self.monitor.probe(step) if self.dist.mirrored() else None)
        self.monitor.reference = result.reference
        return result

    def probe_safety(self, step: int, bar) -> None:
        result = self.probe(step)
        self.metrics.write(result.record())
        bar.probe(result.describe(), ok=not result.breached)
        if not result.breached:
            self.monitor.remember(self.capture_state())
            return
        policy = self.recipe.monitor.on_breach
        if policy == "warn":
            return
        if policy == "stop" or self.monitor.rollbacks >= self.recipe.monitor.max_rollbacks:
            why = "" if policy == "stop" else f" after {self.monitor.rollbacks} rollbacks"
            raise SafetuneError(f"monitor: safety breach at step {result.step}{why} ({result.describe()}); stopped")
        rollbacks = self.monitor.rollbacks + 1
        self.rollback(self.monitor.snapshot, self.recipe.monitor.lr_factor)
        self.monitor.rollbacks = rollbacks
        self.metrics.write({"step": result.step, "rollback_to": self.state.step, "lr_scale": self.state.lr_scale})
        bar.probe(f"{result.describe()}: rolled back to step {self.state.step}, LR x{self.state.lr_scale:g}", ok=False)

    def recover_from_divergence(self, step: int, bar) -> None:
        """`max_bad_steps` non-finite steps in a row: roll back to the last good state, or stop."""
        policy = self.recipe.train.on_nonfinite
        why = f"train: {self.state.bad_steps} non-finite steps in a row at step {step}"
        snapshot = self.monitor.snapshot if self.monitor else None
        folder = ckpt.latest_checkpoint(self.run_dir)
        if policy == "stop":
            hint = "train.on_nonfinite=stop"
        elif snapshot is None and folder is None:
            hint = "no good state to roll back to (set train.save_every or monitor.every)"
        elif self.state.divergence_rollbacks >= MAX_DIVERGENCE_ROLLBACKS:
            hint = f"still diverging after {self.state.divergence_rollbacks} rollbacks"
        else:
            hint = None
        if hint:
            raise SafetuneError(f"{why}; {hint}. The run diverged: lower train.learning_rate "
                                "or train in float32/bf16; nothing non-finite was saved")
        # the newest good state: the monitor's last passing snapshot or the last checkpoint on disk
        if snapshot is not None and (folder is None or snapshot["trainer"]["step"] >= ckpt.checkpoint_step(folder)):
            target, source, from_disk = snapshot, "the last passing safety probe", False
        else:
            try:
                self.load_weights(folder)
                target = ckpt.load_training_state(folder)
            except Exception as err:  # damaged after its manifest was checked
                raise SafetuneError(f"{why}; rolling back to {folder} failed: {str(err).splitlines()[0]}") from None
            source, from_disk = folder.name, True
        rollbacks = self.state.divergence_rollbacks + 1
        self.rollback(target, DIVERGENCE_LR_FACTOR, from_disk=from_disk)
        self.state.divergence_rollbacks = rollbacks
        self.metrics.write({"step": step, "rollback_to": self.state.step, "lr_scale": self.state.lr_scale,
                            "reason": "non-finite"})
        bar.message(f"{why}: rolled back to {source} (step {self.state.step}), LR x{self.state.lr_scale:g}")

    def save_periodic(self, step: int, bar) -> None:
        if self.state.bad_steps:  # mid-divergence is no state to come back to
            bar.message(f"warning: checkpoint step-{step} not written: the last step was not finite")
            return
        try:
            self.save_checkpoint(self.run_dir / "checkpoints" / f"step-{step}", with_state=True)
        except ckpt.NonFiniteWeights as err:
            bar.message(f"warning: checkpoint step-{step} not written: {err}")
            return
        if self.recipe.train.keep_checkpoints and self.dist.is_main:
            ckpt.prune_checkpoints(self.run_dir, self.recipe.train.keep_checkpoints)

    def save_on_interrupt(self) -> None:
        step = self.state.step
        resume = f"{self.command} --resume" if "--resume" not in self.command else self.command
        try:
            self.save_checkpoint(self.run_dir / "checkpoints" / f"step-{step}", with_state=True)
        except ckpt.NonFiniteWeights:
            raise Interrupted(f"interrupted at step {step}/{self.total_steps}; the weights had diverged "
                              "(NaN/inf), so no checkpoint was saved") from None
        raise Interrupted(f"interrupted at step {step}/{self.total_steps}; checkpoint saved. Resume with: {resume}")

    # ----------------------------------------------------------------------- the end
    def finish(self) -> RunResult:
        recipe = self.recipe
        step = self.state.step
        wall_time = self.elapsed()
        final_dir = self.run_dir / FINAL_DIR
        evaluates = recipe.eval.suites and recipe.eval.at_end
        # (FSDP: the held-out loss and the methods' sums over shards need every rank)
        eval_loss = mean_loss(self.model, self.data.eval, self.tokenizer, self.device) if self.dist.mirrored() else None
        methods = {m.name: m.summary() for m in self.methods} if self.dist.mirrored() else {}
        if not self.dist.is_main:
            # the final evaluation needs every rank and rank 0 alone writes: under DDP each rank
            # answers its share of the prompts (`sharded_across`), under FSDP every model pass
            # needs every rank's shards (which the checkpoint first sends to rank 0)
            self.save_checkpoint(final_dir, with_state=False)
            if evaluates:
                with sharded_across(self.dist):
                    final_report(recipe, self.run_dir, final_dir, self.model, self.tokenizer, {"steps": step,
                                 "wall_time_s": wall_time, "methods": {}}, show_progress=False, write=False)
            return RunResult(run_dir=self.run_dir, final_dir=final_dir, steps=step, wall_time_s=wall_time)
        if eval_loss is not None:
            self.say(f"held-out task loss: {eval_loss:.4f}")
        try:
            self.save_checkpoint(final_dir, with_state=False)
        except ckpt.NonFiniteWeights as err:
            raise SafetuneError(f"train: the final weights are not finite ({err}); the run diverged and "
                                "final/ was not written. Lower train.learning_rate") from None
        summary = {"steps": step, "wall_time_s": round(wall_time, 2), "eval_loss": eval_loss,
                   "skipped_steps": self.state.skipped_steps, "lr_scale": self.state.lr_scale,
                   "harmful_in_train": self.data.harmful_in_train, "train_examples": len(self.data.train),
                   "dropped_rows": self.data.dropped, "truncated_rows": self.data.truncated,
                   "data_audit": self.audit,
                   "methods": methods,
                   "monitor": self.monitor.state_dict() if self.monitor else None}
        write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        report = None
        if evaluates:
            with sharded_across(self.dist):
                report = final_report(recipe, self.run_dir, final_dir, self.model, self.tokenizer, summary,
                                      self.show_progress)
        self.say(f"done: {step} steps in {wall_time:.1f}s -> {final_dir}")
        return RunResult(run_dir=self.run_dir, final_dir=final_dir, steps=step, wall_time_s=wall_time, report=report)

    def close(self) -> None:
        """Leave the process group. The DDP wrapper goes first: its reducer holds the process
        group, and if the reducer were the last holder, gloo's destructor would run under the GIL
        and could deadlock with a gloo worker thread that needs the GIL to free a finished
        collective's tensors (seen as an occasional hang of a rank at exit)."""
        if self.dist.enabled:
            self.train_model = None
            if getattr(self, "ctx", None) is not None:
                self.ctx.train_model = None
            gc.collect()  # DDP modules sit in reference cycles: free the reducer now, not at exit
        self.dist.close()

    def dry_run(self) -> RunResult:
        """Show the first example and the run's size, take one real step, write a test checkpoint."""
        from rich.console import Console

        console = Console()
        recipe, data = self.recipe, self.data
        show_example(data.train[0], self.tokenizer, console)
        tokens_per_step = sum(len(e.input_ids) for e in self.schedule.batch(0)) * recipe.train.grad_accum
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        console.print(
            f"train examples: {len(data.train)} (harmful mixed in: {data.harmful_in_train}) | "
            f"eval examples: {len(data.eval)} | safety examples: {len(data.safety)}\n"
            f"steps: {self.total_steps} | ~tokens: {tokens_per_step * self.total_steps:,} | "
            f"trainable parameters: {trainable:,} of {total:,} | methods: {', '.join(recipe.method_names)}"
        )
        out = self.train_step()
        with tempfile.TemporaryDirectory() as tmp:
            folder = ckpt.save_checkpoint(Path(tmp) / "step-0", self.model, self.tokenizer, {"dry_run": True},
                                          {"optimizer": self.optimizer.state_dict()})
            assert ckpt.is_complete(folder) and ckpt.verify_checkpoint(folder) is None
        console.print(f"one optimizer step: loss {float(out['loss']):.4f}; test checkpoint written and deleted. "
                      "Dry run OK: nothing was saved.")
        return RunResult(run_dir=self.run_dir, final_dir=None, steps=0, wall_time_s=self.elapsed())


def train(recipe: Recipe, *, resume: bool = False, dry_run: bool = False, show_progress: bool = True,
          command: str | None = None) -> RunResult:
    """Set up and run one fine-tuning run (the `safetune train` command)."""
    trainer = Trainer(recipe, show_progress=show_progress, command=command)
    try:
        trainer.setup(resume=resume, dry_run=dry_run)
        return trainer.dry_run() if dry_run else trainer.fit()
    finally:
        trainer.close()


# --------------------------------------------------------------------------- building blocks
def build_optimizer(recipe: Recipe, params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where the device has a fused kernel (one launch for all tensors)."""
    fused = device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=recipe.train.learning_rate, betas=recipe.train.adam_betas,
                             weight_decay=recipe.train.weight_decay, fused=fused)


def compile_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile'd view of `model` (same parameters) for the task forward pass only.

    A wrapper, not `model.compile()` in place: safety passes and generation (probes, the
    final evaluation) call the model itself and stay eager, since generation would
    recompile at every new sequence length. Batch widths vary, so the second width seen
    makes torch compile a dynamic-shape graph once instead of one graph per width.
    """
    return torch.compile(model)


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass: memory for time, same gradients."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # LoRA: frozen embeddings must still pass gradients on


def _install_sigterm(stop: dict):
    def handler(signum, frame):
        stop["signal"] = signum

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


# --------------------------------------------------------------------------- evaluation glue
def ensure_baseline(recipe, run_dir: Path, model, tokenizer, show_progress: bool,
                    dist: Distributed | None = None) -> None:
    """Evaluate the untouched model into <run>/baseline/ unless `safetune baseline` already did.

    run_baseline copies a cached evaluation of the same model and eval settings instead
    when there is one (and says so). Called on the ranks that run model passes
    (`dist.mirrored()`): rank 0, or every rank under FSDP, where rank 0 decides and writes.
    """
    from safetune.evaluation.runner import baseline_dir, current_baseline, run_baseline

    dist = dist or Distributed()  # one process
    say = print if show_progress and dist.is_main else (lambda *_: None)
    if dist.agree(current_baseline(run_dir, recipe, model.device, say) is not None if dist.is_main else None):
        return
    run_baseline(recipe, show_progress and dist.is_main, out_dir=baseline_dir(run_dir), model=model,
                 tokenizer=tokenizer, broadcast=dist.agree, write=dist.is_main)
    model.train()


def final_report(recipe, run_dir: Path, final_dir: Path, model, tokenizer, summary: dict, show_progress: bool,
                 write: bool = True) -> dict:
    from safetune.evaluation.runner import evaluate_model, load_baseline

    run_info = {"method": recipe.method_names, "steps": summary["steps"], "wall_time_s": summary["wall_time_s"],
                "recipe": recipe.name, "methods": summary["methods"]}
    return evaluate_model(model, tokenizer, recipe, final_dir, checkpoint=str(final_dir),
                          baseline=load_baseline(run_dir), run_info=run_info, progress=show_progress, write=write)
