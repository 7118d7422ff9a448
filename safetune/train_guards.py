"""What the loop does when a run goes wrong: a safety probe finds a breach, steps stop being
finite, or the run is interrupted (Ctrl-C, SIGTERM). A breach or a divergence is answered by
rolling back to the newest good state with a lower learning rate (`StateKeeper.rollback`) or
by stopping with one line saying why; an interruption leaves a checkpoint to resume from.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

from safetune import checkpoint as ckpt
from safetune.distributed import Distributed
from safetune.errors import Interrupted, SafetuneError
from safetune.metrics import MetricsLog
from safetune.monitor import Probe
from safetune.recipe import Recipe
from safetune.train_state import StateKeeper

# After `train.max_bad_steps` non-finite steps in a row the run rolls back with this LR factor,
# at most this many times, before it gives up.
DIVERGENCE_LR_FACTOR = 0.5
MAX_DIVERGENCE_ROLLBACKS = 3


class StopRequested(Exception):
    """SIGTERM during training: leave a resumable checkpoint and stop."""


def install_sigterm(stop: dict):
    """SIGTERM sets `stop["signal"]` (the step then agrees across ranks to stop); returns the
    handler it replaced, or None when it installed none."""
    def handler(signum, frame):
        stop["signal"] = signum

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


@contextmanager
def interrupt_on_sigterm():
    """Within: SIGTERM raises KeyboardInterrupt like Ctrl-C (after the loop, where no step can
    agree to stop: saving final/ and the final evaluation), so it ends in one line, not silently."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Guards:
    def __init__(self, recipe: Recipe, dist: Distributed, keeper: StateKeeper, metrics: MetricsLog, run_dir: Path):
        self.recipe, self.dist, self.keeper = recipe, dist, keeper
        self.metrics, self.run_dir = metrics, run_dir

    @property
    def monitor(self):
        return self.keeper.monitor

    def probe(self, step: int) -> Probe:
        """Rank 0 probes (under FSDP every rank runs it with rank 0); every rank acts on rank 0's
        result, so all take the same rollback decision."""
        result = self.dist.broadcast(self.monitor.probe(step) if self.dist.mirrored() else None)
        self.monitor.reference = result.reference
        return result

    def start(self, say) -> None:
        """Before the first step: the monitor's reference probe (unless a resume brought one back),
        and the rollback target until a later probe passes (after a resume: the resumed state)."""
        if not self.monitor:
            return
        if self.monitor.reference is None:
            first = self.probe(self.keeper.state.step)
            self.metrics.write(first.record())
            say(first.describe())
        self.monitor.remember(self.keeper.capture())

    def probe_safety(self, step: int, bar) -> None:
        """A probe; on a breach, `monitor.on_breach`: warn, stop, or roll back to the last passing state."""
        result = self.probe(step)
        self.metrics.write(result.record())
        bar.probe(result.describe(), ok=not result.breached)
        if not result.breached:
            self.monitor.remember(self.keeper.capture())
            return
        policy = self.recipe.monitor.on_breach
        if policy == "warn":
            return
        if policy == "stop" or self.monitor.rollbacks >= self.recipe.monitor.max_rollbacks:
            why = "" if policy == "stop" else f" after {self.monitor.rollbacks} rollbacks"
            raise SafetuneError(f"monitor: safety breach at step {result.step}{why} ({result.describe()}); stopped")
        rollbacks = self.monitor.rollbacks + 1
        self.keeper.rollback(self.monitor.snapshot, self.recipe.monitor.lr_factor)
        self.monitor.rollbacks = rollbacks
        state = self.keeper.state
        self.metrics.write({"step": result.step, "rollback_to": state.step, "lr_scale": state.lr_scale})
        bar.probe(f"{result.describe()}: rolled back to step {state.step}, LR x{state.lr_scale:g}", ok=False)

    def recover_from_divergence(self, step: int, bar) -> None:
        """`max_bad_steps` non-finite steps in a row: roll back to the last good state, or stop."""
        policy = self.recipe.train.on_nonfinite
        why = f"train: {self.keeper.state.bad_steps} non-finite steps in a row at step {step}"
        snapshot = self.monitor.snapshot if self.monitor else None
        folder = ckpt.latest_checkpoint(self.run_dir)
        if policy == "stop":
            hint = "train.on_nonfinite=stop"
        elif snapshot is None and folder is None:
            hint = "no good state to roll back to (set train.save_every or monitor.every)"
        elif self.keeper.state.divergence_rollbacks >= MAX_DIVERGENCE_ROLLBACKS:
            hint = f"still diverging after {self.keeper.state.divergence_rollbacks} rollbacks"
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
                self.keeper.load_weights(folder)
                target = ckpt.load_training_state(folder)
            except Exception as err:  # damaged after its manifest was checked
                raise SafetuneError(f"{why}; rolling back to {folder} failed: {str(err).splitlines()[0]}") from None
            source, from_disk = folder.name, True
        rollbacks = self.keeper.state.divergence_rollbacks + 1
        self.keeper.rollback(target, DIVERGENCE_LR_FACTOR, from_disk=from_disk)
        state = self.keeper.state  # (a new object: the rollback restored it)
        state.divergence_rollbacks = rollbacks
        self.metrics.write({"step": step, "rollback_to": state.step, "lr_scale": state.lr_scale,
                            "reason": "non-finite"})
        bar.message(f"{why}: rolled back to {source} (step {state.step}), LR x{state.lr_scale:g}")

    def save_on_interrupt(self, command: str) -> None:
        """Ctrl-C or SIGTERM: save a resumable checkpoint and say how to resume (with `command`,
        how the user started the run)."""
        step, total = self.keeper.state.step, self.keeper.total_steps
        resume = f"{command} --resume" if "--resume" not in command else command
        try:
            self.keeper.save(self.run_dir / "checkpoints" / f"step-{step}", with_state=True)
        except ckpt.NonFiniteWeights:
            raise Interrupted(f"interrupted at step {step}/{total}; the weights had diverged "
                              "(NaN/inf), so no checkpoint was saved") from None
        raise Interrupted(f"interrupted at step {step}/{total}; checkpoint saved. Resume with: {resume}")
