"""Safety monitoring during training: probes, breach policies, rollback with a lower LR."""

import json

import pytest

from safetune.errors import SafetuneError
from safetune.monitor import SafetyMonitor
from safetune.recipe import validate_tree
from safetune.training import train


def recipe(tiny_model_dir, tiny_data, out, **monitor):
    return validate_tree({
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": {"path": str(tiny_data["task"])}, "max_seq_len": 64},
        "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-2, "lr_schedule": "constant", "log_every": 1},
        "monitor": {"every": 2, "samples": 4} | monitor,
        "eval": {"suites": [{"kind": "harmful", "path": str(tiny_data["safety"]), "category_field": "category"}],
                 "max_new_tokens": 4, "at_end": False},
        "output": {"dir": str(out)},
    })


def scripted(monkeypatch, rates):
    """Make the probe return the given refusal rates in order (the model itself is untouched)."""
    queue = list(rates)
    monkeypatch.setattr(SafetyMonitor, "measure", lambda self: queue.pop(0))


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_probes_run_every_n_steps_with_real_generation(tiny_model_dir, tiny_data, tmp_path):
    result = train(recipe(tiny_model_dir, tiny_data, tmp_path / "run"), show_progress=False)
    probes = [r for r in records(result.run_dir) if "probe/harmful_refusal_rate" in r]
    assert [p["step"] for p in probes] == [0, 2, 4, 6]
    assert all(0.0 <= p["probe/harmful_refusal_rate"] <= 1.0 for p in probes)


def test_rollback_restores_last_passing_state_and_lowers_lr(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    # step 0: 1.0 (reference), step 2: ok, step 4: breach -> back to step 2, then ok to the end
    scripted(monkeypatch, [1.0, 0.95, 0.5, 0.95, 0.95])
    result = train(recipe(tiny_model_dir, tiny_data, tmp_path / "run", min_retained=0.9, lr_factor=0.5),
                   show_progress=False)
    lines = records(result.run_dir)
    rollback = [r for r in lines if "rollback_to" in r]
    assert rollback == [{"step": 4, "rollback_to": 2, "lr_scale": 0.5}]
    lrs = [r["lr"] for r in lines if "lr" in r]
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(5e-3)
    assert result.steps == 6
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["monitor"]["rollbacks"] == 1


def test_stop_policy_and_rollback_limit(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    scripted(monkeypatch, [1.0, 0.1])
    with pytest.raises(SafetuneError, match="monitor: safety breach at step 2"):
        train(recipe(tiny_model_dir, tiny_data, tmp_path / "a", on_breach="stop"), show_progress=False)
    scripted(monkeypatch, [1.0, 0.1, 0.1, 0.1])
    with pytest.raises(SafetuneError, match="after 2 rollbacks"):
        train(recipe(tiny_model_dir, tiny_data, tmp_path / "b", max_rollbacks=2), show_progress=False)


def test_warn_policy_carries_on(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    scripted(monkeypatch, [1.0, 0.1, 0.1, 0.1])
    result = train(recipe(tiny_model_dir, tiny_data, tmp_path / "run", on_breach="warn"), show_progress=False)
    assert result.steps == 6
    assert sum(r.get("probe/breach", False) for r in records(result.run_dir)) == 3


def test_the_rollback_snapshot_holds_the_trainable_weights_in_cpu_memory(tiny_model_dir, tiny_data, tmp_path,
                                                                          monkeypatch):
    """LoRA: the frozen base model is not copied (it never changes), and the copy is not kept on
    the accelerator; a rollback still restores the trained weights exactly."""
    import torch

    from safetune.train_state import StateKeeper

    snapshots, restored = [], []
    remember = SafetyMonitor.remember
    monkeypatch.setattr(SafetyMonitor, "remember", lambda self, state: (remember(self, state),
                                                                        snapshots.append(self.snapshot)))
    rollback = StateKeeper.rollback

    def checked_rollback(self, target, lr_factor, from_disk=False):
        rollback(self, target, lr_factor, from_disk)
        live = dict(self.model.named_parameters())
        restored.append(all(torch.equal(live[name].detach().cpu(), saved) for name, saved in target["model"].items()))

    monkeypatch.setattr(StateKeeper, "rollback", checked_rollback)
    scripted(monkeypatch, [1.0, 0.95, 0.5, 0.95, 0.95])
    tree = recipe(tiny_model_dir, tiny_data, tmp_path / "run", min_retained=0.9).model_dump(mode="json")
    tree["model"]["lora"] = {"r": 4, "alpha": 8}
    train(validate_tree(tree), show_progress=False)
    snapshot = snapshots[-1]["model"]
    assert snapshot and all("lora_" in name for name in snapshot)  # no frozen base weight
    assert all(t.device.type == "cpu" for t in snapshot.values())
    assert restored == [True]
