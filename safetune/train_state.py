"""The run's state, and the one way it is captured, checkpointed, resumed and rolled back.

`TrainState` is the loop's own counters. `StateKeeper` holds them together with every
stateful part of a run (the trainable weights, optimizer, LR scheduler, grad scaler, RNG,
the methods' and the monitor's state): a checkpoint on disk, a resume and a rollback all
go through its `capture` / `restore`, so they cannot disagree on what the state is. The
folder format (atomic writes, manifests, completeness marker) is `checkpoint.py`'s.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from safetune import checkpoint as ckpt
from safetune.distributed import Distributed, gather_full
from safetune.errors import SafetuneError, UsageError
from safetune.methods import SafetyMethod
from safetune.modeling import adapter_weights_by_model_name, is_adapter_folder, load_trained_weights, read_saved_weights
from safetune.monitor import SafetyMonitor
from safetune.recipe import Recipe


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


class StateKeeper:
    """Everything that changes while a run trains, and how it is saved and brought back."""

    def __init__(self, recipe: Recipe, dist: Distributed, device, model, tokenizer, optimizer, scheduler, scaler,
                 methods: list[SafetyMethod], total_steps: int, started: float):
        self.recipe, self.dist, self.device = recipe, dist, device
        self.model, self.tokenizer = model, tokenizer
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.methods = methods
        self.monitor: SafetyMonitor | None = None  # the run's, once it has one (never in a dry run)
        self.total_steps = total_steps
        self.state = TrainState()
        self.segment_start = started  # when this segment (the whole run, or the part since a resume) began

    def elapsed(self) -> float:
        """Training wall time of the whole run, earlier resumed segments included."""
        return self.state.wall_time_s + (time.perf_counter() - self.segment_start)

    # ----------------------------------------------------------------------- in memory
    def capture(self) -> dict:
        """Everything a checkpoint (or a rollback) needs to continue exactly. "model" holds the
        trainable parameters only: frozen ones (a LoRA base model, frozen layers) never change."""
        trainable = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        return {"trainer": asdict(self.state), "model": trainable,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state(),
                "methods": {m.name: m.state_dict() for m in self.methods},
                "monitor": self.monitor.state_dict() if self.monitor else {}}

    def checkpoint_state(self) -> dict:
        """`capture()` as a checkpoint file holds it: no weights (they go to model.safetensors)
        and whole tensors. Under FSDP this gathers shards: every rank must call it."""
        state = {k: v for k, v in self.capture().items() if k != "model"}
        state["trainer"]["wall_time_s"] = self.elapsed()
        if self.dist.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            state["optimizer"] = get_optimizer_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            state["methods"] = gather_full(state["methods"])
        return state

    def restore(self, state: dict, from_disk: bool = False) -> None:
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

    def rollback(self, target: dict, lr_factor: float, from_disk: bool = False) -> None:
        """Back to a saved state, with the learning rate lowered by `lr_factor`."""
        keep = self.state
        monitor_rollbacks = self.monitor.rollbacks if self.monitor else 0
        self.restore(target, from_disk=from_disk)
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

    # ----------------------------------------------------------------------- on disk
    def save(self, folder: Path, with_state: bool) -> None:
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

    def save_final(self, run_dir: Path, final_dir: Path, command: str) -> None:
        """The trained weights into `final_dir` (no training state). When they cannot be written the
        run ends in one line that says what is left to resume from (`command`: how it was started)."""
        try:
            self.save(final_dir, with_state=False)
        except ckpt.NonFiniteWeights as err:
            raise SafetuneError(f"train: the final weights are not finite ({err}); the run diverged and "
                                "final/ was not written. Lower train.learning_rate") from None
        except ckpt.SaveFailed as err:
            latest = ckpt.latest_checkpoint(run_dir)
            kept = (f"the newest checkpoint on disk is {latest}; free space, then resume with: {command} --resume"
                    if latest else "no checkpoint was saved (train.save_every is off); free space and train again")
            raise SafetuneError(f"train: {err}: the weights of step {self.state.step} could not be saved; "
                                f"{kept}") from None

    def save_periodic(self, run_dir: Path, step: int, warn) -> None:
        """The `train.save_every` checkpoint of `step` (then the oldest pruned); `warn(line)` says
        why when it is not written."""
        if self.state.bad_steps:  # mid-divergence is no state to come back to
            warn(f"warning: checkpoint step-{step} not written: the last step was not finite")
            return
        try:
            self.save(run_dir / "checkpoints" / f"step-{step}", with_state=True)
        except ckpt.NonFiniteWeights as err:
            warn(f"warning: checkpoint step-{step} not written: {err}")
            return
        if self.recipe.train.keep_checkpoints and self.dist.is_main:
            ckpt.prune_checkpoints(run_dir, self.recipe.train.keep_checkpoints)

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

    def resume(self, folder: Path) -> None:
        """Continue from a checkpoint folder (`--resume`): its weights, then its state."""
        try:
            self.load_weights(folder)
            state = ckpt.load_training_state(folder)
        except Exception as err:  # damaged despite its manifest (or written before manifests existed)
            raise SafetuneError(f"--resume: cannot load {folder}: {str(err).splitlines()[0]}") from None
        saved_world = state["trainer"].get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise UsageError(f"--resume: {folder} was written by {saved_world} processes; resume with the same "
                             "number (the global batch is train.batch_size x processes x train.grad_accum)")
        self.restore(state, from_disk=True)
