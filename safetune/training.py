"""THE training loop: one loop for every safety method (they plug in through hooks).

Shaped like a torchtune recipe: a `Trainer` with a lifecycle you can read top to bottom,

    setup()       run directory -> model, tokenizer, data -> methods -> optimizer -> (resume)
    train_step()  one optimizer step: micro-batches, method hooks, clip, step
    fit()         the loop: steps, logging, safety probes, checkpoints, divergence guard
    finish()      final checkpoint, held-out loss, summary, safety report

with the library beside it: the parts it is built from (`train_setup`), the data, its audit
and the batch schedule (`train_data`), the mechanics of a step: micro-batches, DDP/FSDP, mixed
precision (`train_step`), the one state object that checkpoints, resumes and rollbacks go
through (`train_state`), what it does when a run goes wrong (`train_guards`), the evaluation
it calls (`train_eval`) and the dry run (`dry_run`).
"""

from __future__ import annotations

import gc
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from safetune.distributed import Distributed
from safetune.dry_run import rehearse
from safetune.errors import Interrupted
from safetune.files import write_atomic
from safetune.methods import MethodContext, SafetyMethod, build_methods
from safetune.metrics import MetricsLog, trim_after
from safetune.modeling import load_tokenizer, model_source, pick_device
from safetune.monitor import SafetyMonitor
from safetune.progress import TrainingProgress
from safetune.recipe import Recipe
from safetune.rundir import FINAL_DIR, METRICS_LOG, prepare_run_dir
from safetune.runlock import unlock_run_dir
from safetune.train_data import batch_schedule, load_training_data
from safetune.train_eval import ensure_baseline, final_evaluation, mean_loss
from safetune.train_guards import Guards, StopRequested, install_sigterm, interrupt_on_sigterm
from safetune.train_setup import (build_model, build_optimizer, build_scheduler, count_steps, seed_everything,
                                  set_up_methods, training_model, write_run_files)
from safetune.train_state import StateKeeper, TrainState
from safetune.train_step import (accumulate_gradients, agree_on_step, clip_gradients, micro_batches, mixed_precision,
                                 summed_over_ranks)


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path | None
    steps: int
    wall_time_s: float
    report: dict | None = None


class Trainer:
    def __init__(self, recipe: Recipe, *, show_progress: bool = True, command: str | None = None):
        self.recipe = recipe
        self.dist = Distributed.from_env(recipe.train.distributed.strategy)
        if self.dist.enabled:  # the strategy in effect (accelerate's --use_fsdp may pick it) is what the run records
            recipe.train.distributed.strategy = self.dist.strategy
        self.show_progress = show_progress and self.dist.is_main  # rank 0 alone draws and prints
        self.say = print if self.show_progress else (lambda *_: None)
        self.command = command or "safetune train <recipe>"  # how the user started it, for the "resume with" hint
        self.stop = {"signal": None}  # set by the SIGTERM handler
        self.stop_agreed = False  # some rank was asked to stop (agreed on in train_step)
        self._segment_start = time.perf_counter()

    @property
    def state(self) -> TrainState:
        """The loop's counters: the keeper's, since a resume or a rollback replaces them."""
        return self.keeper.state

    def elapsed(self) -> float:
        return self.keeper.elapsed()

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

        self.tokenizer = load_tokenizer(recipe.model)
        self.methods: list[SafetyMethod] = build_methods(recipe.method)
        wants_reference = any(m.needs_reference_model for m in self.methods)
        self.model, reference = build_model(recipe, self.dist, self.device, wants_reference)
        # the audit of data.train runs while the model is still the aligned one
        self.data, self.audit = load_training_data(recipe, self.dist, self.model, self.tokenizer, self.device,
                                                   None if dry_run else self.run_dir, self.say)
        self.schedule = batch_schedule(recipe, self.data.train, self.model, self.dist.world_size)
        self.total_steps = count_steps(recipe, self.schedule.batches_per_epoch, warn=self.dist.is_main)
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

    def setup_methods(self, reference, dry_run: bool) -> None:
        """The methods' context, each method's setup, the parameters they freeze."""
        recipe = self.recipe
        self.ctx = MethodContext(
            model=self.model, tokenizer=self.tokenizer, recipe=recipe, device=self.device,
            run_dir=None if dry_run else self.run_dir,  # a dry run leaves the run dir untouched
            safety=self.data.safety, borderline=self.data.borderline, train_examples=self.data.train,
            seed=recipe.train.seed, reference_model=reference, log=self.say,
            is_main=self.dist.is_main, broadcast_tensors=self.dist.broadcast_tensors,
        )
        self.trainable = set_up_methods(self.methods, self.ctx, self.model)

    def setup_optimizer(self) -> None:
        """Optimizer, LR schedule, the DDP/FSDP (and compiled) training model, mixed precision,
        and the state object that holds them all."""
        recipe = self.recipe
        self.optimizer = build_optimizer(recipe, self.trainable, self.device)
        self.scheduler = build_scheduler(recipe, self.optimizer, self.total_steps)
        self.ctx.optimizer = self.optimizer
        self.train_model = self.ctx.train_model = training_model(recipe, self.dist, self.model, self.device)
        self.autocast_dtype, self.scaler = mixed_precision(recipe.train.precision, self.device)
        self.keeper = StateKeeper(recipe, self.dist, self.device, self.model, self.tokenizer, self.optimizer,
                                  self.scheduler, self.scaler, self.methods, self.total_steps, self._segment_start)

    def start_or_resume(self, resume_from: Path | None) -> None:
        """The monitor, then the checkpoint's state (resume) or the run's first files."""
        recipe = self.recipe
        if recipe.monitor.every:
            self.keeper.monitor = SafetyMonitor(recipe, self.model, self.tokenizer)
        self.state.world_size = self.dist.world_size
        if resume_from is not None:
            self.keeper.resume(resume_from)
            dropped = trim_after(self.run_dir / METRICS_LOG, self.state.step) if self.dist.is_main else 0
            self.say(f"resuming from {resume_from} (step {self.state.step}/{self.total_steps})"
                     + (f"; {dropped} later metrics rows trimmed" if dropped else ""))
        elif self.dist.is_main:
            write_run_files(self.run_dir, recipe, self.device, self.dist.world_size, self.data.files)
        if resume_from is None or not self.dist.is_main:
            # from here on randomness (dropout) differs per rank, as each rank sees other examples;
            # a resumed rank 0 continues with the generators saved in its checkpoint
            torch.manual_seed(recipe.train.seed * 1000 + self.dist.rank + self.state.step * 7919)

    # ----------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches (the gradient: the per-token mean over
        the whole global step). Returns tensors/values to log. A step whose loss or gradients are
        not finite is skipped instead of poisoning the weights."""
        recipe, ctx = self.recipe, self.ctx
        step = ctx.step = self.state.step
        batches = micro_batches(self.schedule, self.methods, ctx, step, recipe.train.grad_accum)
        loss, tokens = accumulate_gradients(batches, self.methods, ctx, self.train_model, self.scaler,
                                            self.autocast_dtype, self.dist, recipe.data.split_by_length)
        self.scaler.unscale_(self.optimizer)  # methods and clipping see the true gradients
        logs: dict[str, Any] = {}
        for method in self.methods:
            logs.update(method.after_backward(ctx))
        grad_norm = clip_gradients(self.trainable, recipe.train.max_grad_norm)
        finite, diverged, self.stop_agreed = agree_on_step(self.dist, loss, grad_norm,
                                                           self.stop["signal"] is not None, self.scaler)
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
        return {"loss": loss, "grad_norm": grad_norm, "tokens": tokens, "diverged": diverged} | logs

    # ----------------------------------------------------------------------- the loop
    def fit(self) -> RunResult:
        recipe, keeper = self.recipe, self.keeper
        self.metrics = MetricsLog(self.run_dir / METRICS_LOG,
                                  self.run_dir / "tensorboard" if recipe.output.tensorboard else None,
                                  enabled=self.dist.is_main)
        guards = self.guards = Guards(recipe, self.dist, keeper, self.metrics, self.run_dir)
        previous_handler = install_sigterm(self.stop)
        self.model.train()
        guards.start(self.say)
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
                            guards.recover_from_divergence(step, bar)
                            continue
                    if step % recipe.train.log_every == 0 or step == self.total_steps:
                        now = time.perf_counter()
                        bar.update(step, self.log_step(step, out, window_tokens, now - window_start))
                        window_start, window_tokens = now, 0
                    else:
                        bar.update(step, {})
                    if keeper.monitor and keeper.monitor.due(step):
                        guards.probe_safety(step, bar)
                    if recipe.train.save_every and step % recipe.train.save_every == 0:
                        keeper.save_periodic(self.run_dir, step, bar.message)
                    if self.stop_agreed:  # SIGTERM on any rank: all ranks save and stop at the same step
                        raise StopRequested
        except (KeyboardInterrupt, StopRequested):
            guards.save_on_interrupt(self.command)
        finally:
            self.metrics.close()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        return self.finish()

    def log_step(self, step: int, out: dict, tokens: float, seconds: float) -> dict:
        """One metrics row: the step's loss and gradient norm, the throughput of the `tokens` trained
        since the last row (in `seconds`), the methods' statistics."""
        out["loss"], tokens = summed_over_ranks(self.dist, out["loss"], tokens)
        record = {"step": step, "loss": float(out.pop("loss")), "grad_norm": float(out.pop("grad_norm")),
                  "tokens_per_s": tokens / max(seconds, 1e-9), "elapsed_s": self.elapsed(),
                  "skipped_steps": self.state.skipped_steps}
        # methods' statistics may be tensors (no host sync until now)
        record |= {k: float(v) if isinstance(v, torch.Tensor) else v
                   for k, v in out.items() if k not in ("tokens", "diverged")}
        self.metrics.write(record)
        return record

    # ----------------------------------------------------------------------- the end
    def finish(self) -> RunResult:
        """final/, the summary and the safety report. Ctrl-C or SIGTERM before final/ is complete
        leaves a resumable checkpoint; after, final/ stays and `safetune eval` writes the report."""
        final_dir = self.run_dir / FINAL_DIR
        with interrupt_on_sigterm():
            try:
                summary = self.save_final(final_dir)
            except KeyboardInterrupt:
                self.guards.save_on_interrupt(self.command)
            try:
                return self.evaluate_final(final_dir, summary)
            except KeyboardInterrupt:
                raise Interrupted(f"interrupted during the final evaluation; {final_dir} is complete. Write its "
                                  f"safety report with: safetune eval {final_dir}") from None

    def save_final(self, final_dir: Path) -> dict:
        """The held-out loss, final/ and summary.json; returns the summary."""
        step, wall_time = self.state.step, self.elapsed()
        # (FSDP: the held-out loss and the methods' sums over shards need every rank)
        eval_loss = mean_loss(self.model, self.data.eval, self.tokenizer, self.device) if self.dist.mirrored() else None
        methods = {m.name: m.summary() for m in self.methods} if self.dist.mirrored() else {}
        if eval_loss is not None:
            self.say(f"held-out task loss: {eval_loss:.4f}")
        self.keeper.save_final(self.run_dir, final_dir, self.command)
        summary = {"steps": step, "wall_time_s": round(wall_time, 2), "eval_loss": eval_loss,
                   "skipped_steps": self.state.skipped_steps, "lr_scale": self.state.lr_scale,
                   "harmful_in_train": self.data.harmful_in_train, "train_examples": len(self.data.train),
                   "dropped_rows": self.data.dropped, "truncated_rows": self.data.truncated,
                   "data_audit": self.audit, "methods": methods, "data_files": self.data.files,
                   "monitor": self.keeper.monitor.state_dict() if self.keeper.monitor else None}
        if self.dist.is_main:
            write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary

    def evaluate_final(self, final_dir: Path, summary: dict) -> RunResult:
        """The final safety report (when the recipe asks for one)."""
        step, wall_time = summary["steps"], summary["wall_time_s"]
        report = final_evaluation(self.recipe, self.dist, self.run_dir, final_dir, self.model, self.tokenizer,
                                  summary, self.show_progress)
        self.say(f"done: {step} steps in {wall_time:.1f}s -> {final_dir}")
        return RunResult(run_dir=self.run_dir, final_dir=final_dir, steps=step, wall_time_s=wall_time,
                         report=report if self.dist.is_main else None)

    def close(self) -> None:
        """Leave the process group, and let go of the run folder. The DDP wrapper goes first: its
        reducer holds the process group, and if the reducer were the last holder, gloo's destructor
        would run under the GIL and could deadlock with a gloo worker thread that needs the GIL to
        free a finished collective's tensors (seen as an occasional hang of a rank at exit)."""
        if self.dist.enabled:
            self.train_model = None
            if getattr(self, "ctx", None) is not None:
                self.ctx.train_model = None
            gc.collect()  # DDP modules sit in reference cycles: free the reducer now, not at exit
        self.dist.close()
        if getattr(self, "run_dir", None) is not None:
            unlock_run_dir(self.run_dir)


def train(recipe: Recipe, *, resume: bool = False, dry_run: bool = False, show_progress: bool = True,
          command: str | None = None) -> RunResult:
    """Set up and run one fine-tuning run (the `safetune train` command)."""
    trainer = Trainer(recipe, show_progress=show_progress, command=command)
    try:
        trainer.setup(resume=resume, dry_run=dry_run)
        if not dry_run:
            return trainer.fit()
        rehearse(trainer)
        return RunResult(run_dir=trainer.run_dir, final_dir=None, steps=0, wall_time_s=trainer.elapsed())
    finally:
        trainer.close()

