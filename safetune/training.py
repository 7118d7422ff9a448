"""THE training loop: one loop for every safety method (they plug in through hooks).

Read `train()` top to bottom: run directory -> model and data -> methods -> optimizer
-> (resume) -> loop -> final checkpoint -> safety report.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from safetune import checkpoint as ckpt
from safetune.data import IGNORE_INDEX, BatchSchedule, Example, build_training_data, collate, load_examples, tokenize_all
from safetune.envinfo import collect_env
from safetune.errors import SafetuneError, UsageError
from safetune.files import write_atomic
from safetune.methods import MethodContext, SafetyMethod, build_methods
from safetune.modeling import add_lora, load_model, load_tokenizer, load_trained_weights, pick_device
from safetune.monitor import SafetyMonitor
from safetune.progress import TrainingProgress
from safetune.recipe import Recipe
from safetune.rundir import BASELINE_DIR, FINAL_DIR, METRICS_LOG, RESOLVED_RECIPE

# Changing these between an interrupted run and its resume is fine; anything else is refused.
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "train.save_every", "train.log_every", "output", "eval", "monitor"}


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path | None
    steps: int
    wall_time_s: float
    report: dict | None = None


# --------------------------------------------------------------------------- helpers
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


def prepare_run_dir(recipe: Recipe, resume: bool) -> Path:
    run_dir = recipe.output_dir()
    # A baseline computed by `safetune baseline` beforehand is the only thing allowed in a new run dir.
    existing = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
    leftover = [name for name in existing if name != BASELINE_DIR]
    if resume:
        if ckpt.latest_checkpoint(run_dir) is None:
            raise UsageError(f"--resume: no complete checkpoint under {run_dir}/checkpoints")
        _refuse_changed_recipe(run_dir, recipe)
    elif leftover and recipe.output.overwrite:
        for name in leftover:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    elif leftover:
        raise UsageError(
            f"output.dir: {run_dir} already holds a run; use --resume, output.overwrite=true, or another output.dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def _refuse_changed_recipe(run_dir: Path, recipe: Recipe) -> None:
    saved_file = run_dir / RESOLVED_RECIPE
    if not saved_file.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_file.read_text()))
    current = _flatten(recipe.model_dump(mode="json"))
    changed = sorted(
        key for key in set(saved) | set(current)
        if saved.get(key) != current.get(key)
        and not any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_CHANGES)
    )
    if changed:
        raise UsageError(f"--resume: the recipe changed since the run started ({', '.join(changed)})")


def token_count(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())


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


class StopRequested(Exception):
    """SIGTERM during training: leave a resumable checkpoint and stop."""


# --------------------------------------------------------------------------- the loop
def train(recipe: Recipe, *, resume: bool = False, dry_run: bool = False, show_progress: bool = True) -> RunResult:
    started = time.perf_counter()
    run_dir = recipe.output_dir() if dry_run else prepare_run_dir(recipe, resume)
    seed_everything(recipe.train.seed)
    device = pick_device(recipe.train.device)
    say = print if show_progress else (lambda *_: None)

    # --- model, tokenizer, data
    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model, device=device)
    if recipe.model.lora:
        model = add_lora(model, recipe.model)
    data = build_training_data(recipe.data, tokenizer, recipe.train.seed)
    schedule = BatchSchedule(data.train, recipe.train.batch_size, recipe.train.seed, recipe.data.shuffle)
    total_steps = count_steps(recipe, schedule.batches_per_epoch)

    # --- baseline safety of the untouched model, so the final report can say what was kept
    if not dry_run and recipe.eval.suites and recipe.eval.at_end:
        ensure_baseline(recipe, run_dir, model, tokenizer, show_progress)
        started = time.perf_counter()  # wall time = the fine-tuning's cost, without the baseline

    # --- safety methods
    methods: list[SafetyMethod] = build_methods(recipe.method)
    reference = None
    if any(m.needs_reference_model for m in methods):
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    ctx = MethodContext(
        model=model, tokenizer=tokenizer, recipe=recipe, device=device, run_dir=run_dir,
        safety=data.safety, seed=recipe.train.seed, reference_model=reference, log=say,
    )
    for method in methods:
        method.setup(ctx)
        frozen = method.frozen_parameter_names(ctx)  # applied at once: later methods see only trainable ones
        for name, parameter in model.named_parameters():
            if name in frozen:
                parameter.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise SafetuneError("method: every parameter is frozen; nothing left to train")

    optimizer = torch.optim.AdamW(
        trainable, lr=recipe.train.learning_rate, betas=recipe.train.adam_betas,
        weight_decay=recipe.train.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(recipe.train.lr_schedule, recipe.train.warmup_steps, total_steps)
    )
    ctx.optimizer = optimizer

    if dry_run:
        return _dry_run(recipe, model, tokenizer, data, schedule, methods, ctx, optimizer, scheduler, total_steps, started)

    # --- everything a checkpoint (or a monitor rollback) must capture to continue exactly
    monitor = SafetyMonitor(recipe, model, tokenizer) if recipe.monitor.every else None
    progress = {"step": 0, "lr_scale": 1.0}

    def capture_state() -> dict:
        return {"step": progress["step"], "lr_scale": progress["lr_scale"],
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": ckpt.rng_state(),
                "methods": {m.name: m.state_dict() for m in methods},
                "monitor": monitor.state_dict() if monitor else {}}

    def restore_state(state: dict) -> None:
        if "model" in state:
            model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for method in methods:
            method.load_state_dict(state["methods"].get(method.name, {}))
        if monitor:
            monitor.load_state_dict(state.get("monitor", {}))
        ckpt.set_rng_state(state["rng"])
        progress.update(step=state["step"], lr_scale=state.get("lr_scale", 1.0))

    def save(folder: Path, with_state: bool) -> None:
        info = {"step": progress["step"], "total_steps": total_steps, "method": recipe.method_names,
                "recipe": recipe.name, "wall_time_s": round(time.perf_counter() - started, 2)}
        state = None
        if with_state:  # the weights are already in model.safetensors
            state = {k: v for k, v in capture_state().items() if k != "model"}
        ckpt.save_checkpoint(folder, model, tokenizer, info, state)

    if resume:
        folder = ckpt.latest_checkpoint(run_dir)
        load_trained_weights(model, folder, device)
        restore_state(ckpt.load_training_state(folder))
        say(f"resuming from {folder} (step {progress['step']}/{total_steps})")
    else:
        write_atomic(run_dir / RESOLVED_RECIPE, recipe.to_yaml())
        env = collect_env() | {"seed": recipe.train.seed, "device_used": str(device)}
        write_atomic(run_dir / "env.json", json.dumps(env, indent=2))

    metrics_file = (run_dir / METRICS_LOG).open("a", encoding="utf-8")
    writer = _tensorboard(recipe, run_dir)

    def log_record(record: dict) -> None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        if writer:
            for key, value in record.items():
                if key != "step":
                    writer.add_scalar(key, float(value), record["step"])

    stop = {"signal": None}
    previous_handler = _install_sigterm(stop)
    model.train()
    if monitor and monitor.reference is None:
        first = monitor.probe(progress["step"])
        log_record(first.record())
        say(first.describe())
    if monitor:  # the rollback target until a later probe passes (after a resume: the resumed state)
        monitor.remember(capture_state())
    window_start, window_tokens = time.perf_counter(), 0
    try:
        with TrainingProgress(total_steps, start=progress["step"], log_every=recipe.train.log_every,
                              enabled=show_progress) as bar:
            while progress["step"] < total_steps:
                step = ctx.step = progress["step"]
                logs: dict[str, float] = {}
                loss_sum = 0.0
                for micro in range(recipe.train.grad_accum):
                    micro_step = step * recipe.train.grad_accum + micro
                    examples = schedule.batch(micro_step)
                    for method in methods:
                        examples = method.prepare_batch(ctx, examples, micro_step)
                    batch = ctx.batch_to_device(examples)
                    loss = compute_loss(methods, ctx, model, batch)
                    (loss / recipe.train.grad_accum).backward()
                    loss_sum += float(loss.detach())
                    window_tokens += token_count(batch)
                for method in methods:
                    logs.update(method.after_backward(ctx))
                loss_value = loss_sum / recipe.train.grad_accum
                if not math.isfinite(loss_value):
                    # Skip the update rather than poison the weights; say so in the metrics.
                    optimizer.zero_grad(set_to_none=True)
                    logs["nonfinite_loss_skipped"] = 1.0
                else:
                    if recipe.train.max_grad_norm:
                        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable, recipe.train.max_grad_norm))
                    for method in methods:
                        method.before_step(ctx)
                    optimizer.step()
                    for method in methods:
                        logs.update(method.after_step(ctx))
                    optimizer.zero_grad(set_to_none=True)
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                step = progress["step"] = step + 1

                if step % recipe.train.log_every == 0 or step == total_steps:
                    now = time.perf_counter()
                    log_record({"step": step, "loss": loss_value, "lr": lr,
                                "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                                "elapsed_s": now - started} | logs)
                    window_start, window_tokens = now, 0
                bar.update(step, {"loss": loss_value, "lr": lr})
                if monitor and monitor.due(step):
                    result = monitor.probe(step)
                    log_record(result.record())
                    bar.probe(result.describe(), ok=not result.breached)
                    if not result.breached:
                        monitor.remember(capture_state())
                    else:
                        handle_breach(recipe, monitor, result, restore_state, progress, scheduler, log_record, bar)
                if recipe.train.save_every and step % recipe.train.save_every == 0:
                    save(run_dir / "checkpoints" / f"step-{step}", with_state=True)
                if stop["signal"]:
                    raise StopRequested
    except (KeyboardInterrupt, StopRequested):
        step = progress["step"]
        save(run_dir / "checkpoints" / f"step-{step}", with_state=True)
        raise SafetuneError(
            f"interrupted at step {step}/{total_steps}; checkpoint saved. Resume with: safetune train <recipe> --resume"
        ) from None
    finally:
        metrics_file.close()
        if writer:
            writer.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    # --- final checkpoint, held-out loss, safety report
    step = progress["step"]
    wall_time = time.perf_counter() - started
    eval_loss = mean_loss(model, data.eval, tokenizer, device)
    if eval_loss is not None:
        say(f"held-out task loss: {eval_loss:.4f}")
    final_dir = run_dir / FINAL_DIR
    save(final_dir, with_state=False)
    summary = {"steps": step, "wall_time_s": round(wall_time, 2), "eval_loss": eval_loss,
               "harmful_in_train": data.harmful_in_train, "train_examples": len(data.train),
               "methods": {m.name: m.summary() for m in methods},
               "monitor": monitor.state_dict() if monitor else None}
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    report = None
    if recipe.eval.suites and recipe.eval.at_end:
        report = final_report(recipe, run_dir, final_dir, model, tokenizer, summary, show_progress)
    say(f"done: {step} steps in {wall_time:.1f}s -> {final_dir}")
    return RunResult(run_dir=run_dir, final_dir=final_dir, steps=step, wall_time_s=wall_time, report=report)


def handle_breach(recipe, monitor, result, restore_state, progress, scheduler, log_record, bar) -> None:
    """warn: carry on; stop: end with an error; rollback: back to the last passing state, lower LR."""
    policy = recipe.monitor.on_breach
    if policy == "warn":
        return
    if policy == "stop" or monitor.rollbacks >= recipe.monitor.max_rollbacks:
        why = "" if policy == "stop" else f" after {monitor.rollbacks} rollbacks"
        raise SafetuneError(f"monitor: safety breach at step {result.step}{why} ({result.describe()}); stopped")
    rollbacks = monitor.rollbacks + 1
    lr_scale = progress["lr_scale"] * recipe.monitor.lr_factor
    restore_state(monitor.snapshot)
    monitor.rollbacks = rollbacks
    progress["lr_scale"] = lr_scale
    # The snapshot's scheduler holds the LR of its own time: rescale from the recipe's LR.
    scheduler.base_lrs = [recipe.train.learning_rate * lr_scale for _ in scheduler.base_lrs]
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    log_record({"step": result.step, "rollback_to": progress["step"], "lr_scale": lr_scale})
    bar.probe(f"{result.describe()}: rolled back to step {progress['step']}, LR x{lr_scale:g}", ok=False)


def compute_loss(methods: list[SafetyMethod], ctx: MethodContext, model, batch) -> torch.Tensor:
    """The task loss (a method may own it) plus every method's extra term."""
    loss = None
    for method in methods:
        loss = method.loss(ctx, batch)
        if loss is not None:
            break
    if loss is None:
        loss = model(**batch).loss
    for method in methods:
        extra = method.extra_loss(ctx, batch)
        if extra is not None:
            loss = loss + extra
    return loss


def _install_sigterm(stop: dict):
    def handler(signum, frame):
        stop["signal"] = signum

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _tensorboard(recipe: Recipe, run_dir: Path):
    if not recipe.output.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SafetuneError("output.tensorboard: install tensorboard (pip install tensorboard)") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _dry_run(recipe, model, tokenizer, data, schedule, methods, ctx, optimizer, scheduler, total_steps, started) -> RunResult:
    from rich.console import Console

    console = Console()
    show_example(data.train[0], tokenizer, console)
    tokens_per_step = sum(len(e.input_ids) for e in schedule.batch(0)) * recipe.train.grad_accum
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    console.print(
        f"train examples: {len(data.train)} (harmful mixed in: {data.harmful_in_train}) | "
        f"eval examples: {len(data.eval)} | safety examples: {len(data.safety)}\n"
        f"steps: {total_steps} | ~tokens: {tokens_per_step * total_steps:,} | "
        f"trainable parameters: {trainable:,} of {total:,} | methods: {', '.join(recipe.method_names)}"
    )
    examples = schedule.batch(0)
    for method in methods:
        examples = method.prepare_batch(ctx, examples, 0)
    loss = compute_loss(methods, ctx, model, ctx.batch_to_device(examples))
    loss.backward()
    for method in methods:
        method.after_backward(ctx)
    optimizer.step()
    scheduler.step()
    with tempfile.TemporaryDirectory() as tmp:
        folder = ckpt.save_checkpoint(Path(tmp) / "step-0", model, tokenizer, {"dry_run": True},
                                      {"optimizer": optimizer.state_dict()})
        assert ckpt.is_complete(folder)
    console.print(f"one optimizer step: loss {float(loss.detach()):.4f}; test checkpoint written and deleted. "
                  "Dry run OK: nothing was saved.")
    return RunResult(run_dir=recipe.output_dir(), final_dir=None, steps=0, wall_time_s=time.perf_counter() - started)


# --------------------------------------------------------------------------- evaluation glue
def ensure_baseline(recipe, run_dir: Path, model, tokenizer, show_progress: bool) -> None:
    """Evaluate the untouched model into <run>/baseline/ unless `safetune baseline` already did."""
    from safetune.evaluation.runner import baseline_dir, load_baseline, run_baseline

    if load_baseline(run_dir) is not None:
        return
    if show_progress:
        print("no baseline yet: evaluating the base model first")
    run_baseline(recipe, show_progress, out_dir=baseline_dir(run_dir), model=model, tokenizer=tokenizer)
    model.train()


def final_report(recipe, run_dir: Path, final_dir: Path, model, tokenizer, summary: dict, show_progress: bool) -> dict:
    from safetune.evaluation.runner import evaluate_model, load_baseline

    run_info = {"method": recipe.method_names, "steps": summary["steps"], "wall_time_s": summary["wall_time_s"],
                "recipe": recipe.name, "methods": summary["methods"]}
    report = evaluate_model(model, tokenizer, recipe, final_dir, checkpoint=str(final_dir),
                            baseline=load_baseline(run_dir), run_info=run_info, progress=show_progress)
    return report


# --------------------------------------------------------------------------- `safetune layers`
def detect_layers(recipe: Recipe) -> dict:
    """Run the recipe's safety-layer detector (its freeze method, else fisher) without training."""
    from safetune.methods.freeze import detect
    from safetune.methods.layers import select_layers
    from safetune.recipe import FreezeMethod

    config = next((m for m in recipe.method if m.name == "freeze"), None) or FreezeMethod(name="freeze")
    if recipe.data.safety is None:
        raise UsageError("data.safety: layer detection needs safety examples (prompt -> safe response)")
    seed_everything(recipe.train.seed)
    device = pick_device(recipe.train.device)
    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model, device=device)
    safety = tokenize_all(load_examples(recipe.data.safety, "data.safety", kind="safety"), tokenizer,
                          recipe.data.max_seq_len)
    ctx = MethodContext(model=model, tokenizer=tokenizer, recipe=recipe, device=device, run_dir=recipe.output_dir(),
                        safety=safety, seed=recipe.train.seed)
    scores = detect(ctx, config)
    chosen = select_layers(scores, config.top_k, config.threshold)
    return {"detector": config.detector, "scores": scores,
            "layers": [{"layer": i, "score": s, "frozen": i in chosen} for i, s in enumerate(scores)]}
