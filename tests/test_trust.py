"""Issue 8, training side: divergence never "succeeds", gate failures exit 3, damaged
checkpoints are skipped on resume and named by eval, resume bookkeeping is exact."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from safetune import checkpoint as ckpt
from safetune.cli import app
from safetune.errors import Interrupted, SafetuneError, UsageError
from safetune.recipe import validate_tree
from safetune.training import train
from tests.helpers import patch_compute_loss, train_until_interrupted
from tests.test_training import make_recipe

runner = CliRunner()


def strict_json_rows(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def all_finite(folder) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(folder / "model.safetensors").values()
               if t.is_floating_point())


def nan_loss_between(monkeypatch, first_call: int, last_call: int):
    """Make compute_loss return NaN for calls first..last (1-based): a transient divergence."""
    patch_compute_loss(monkeypatch, lambda n: float("nan") if first_call <= n <= last_call else None)


def test_huge_learning_rate_fails_and_writes_nothing_non_finite(tiny_model_dir, tiny_data, tmp_path):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", max_steps=30, learning_rate=1.0, save_every=5,
                       max_grad_norm=None)
    tree["model"]["dtype"] = "float16"
    with pytest.raises(SafetuneError, match="non-finite steps in a row"):
        train(validate_tree(tree), show_progress=False)
    run = tmp_path / "run"
    assert not (run / "final").exists()
    for folder in (run / "checkpoints").glob("step-*"):
        assert all_finite(folder), folder
    strict_json_rows(run / "metrics.jsonl")  # no bare NaN


def test_transient_divergence_rolls_back_to_last_checkpoint_with_lower_lr(tiny_model_dir, tiny_data, tmp_path,
                                                                          monkeypatch):
    nan_loss_between(monkeypatch, 3, 5)  # steps 3, 4, 5 diverge (one micro-batch per step)
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=2, max_bad_steps=3)
    result = train(validate_tree(tree), show_progress=False)
    assert result.steps == 6
    rows = strict_json_rows(tmp_path / "run" / "metrics.jsonl")
    rollback = [r for r in rows if r.get("reason") == "non-finite"]
    assert rollback == [{"step": 5, "rollback_to": 2, "lr_scale": 0.5, "reason": "non-finite"}]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_steps"] == 3 and summary["lr_scale"] == 0.5
    assert all_finite(result.final_dir)


def test_divergence_without_a_good_state_stops_with_one_line(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    nan_loss_between(monkeypatch, 2, 99)
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", max_bad_steps=2)
    with pytest.raises(SafetuneError, match="no good state to roll back to"):
        train(validate_tree(tree), show_progress=False)


def gate_recipe(tmp_path, tiny_model_dir, tiny_data):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", max_steps=2)
    tree["eval"] = {"max_new_tokens": 4, "batch_size": 8,
                    "suites": [{"kind": "task", "path": str(tiny_data["task"]), "reference_field": "response",
                                "limit": 4}],
                    "gate": {"min_task_score": 1.0}}  # an untrained tiny model cannot reach it
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_train_exits_3_when_the_gate_fails_and_keeps_the_checkpoint(tiny_model_dir, tiny_data, tmp_path):
    path = gate_recipe(tmp_path, tiny_model_dir, tiny_data)
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 3, result.output
    assert "safety gate failed" in result.output and "Traceback" not in result.output
    assert ckpt.is_complete(tmp_path / "run" / "final")
    again = runner.invoke(app, ["train", str(path), "--quiet", "output.overwrite=true", "--allow-gate-failure"])
    assert again.exit_code == 0, again.output


def test_resume_skips_a_damaged_checkpoint(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=2)
    train_until_interrupted(monkeypatch, validate_tree(tree), 5, match="Resume with: safetune train")
    run = tmp_path / "run"
    assert ckpt.latest_checkpoint(run).name == "step-4"
    weights = run / "checkpoints" / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    skipped: list[str] = []
    assert ckpt.latest_checkpoint(run, skipped).name == "step-2"
    assert "step-4" in skipped[0] and "model.safetensors is damaged" in skipped[0]
    resumed = train(validate_tree(tree), resume=True, show_progress=False)
    assert resumed.steps == 6
    steps = [row["step"] for row in strict_json_rows(run / "metrics.jsonl") if "loss" in row]
    assert steps == [2, 4, 6], "rows after the resumed checkpoint are trimmed, not duplicated"


def test_eval_names_the_damaged_file(tiny_model_dir, tiny_data, tmp_path):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", max_steps=2)
    result = train(validate_tree(tree), show_progress=False)
    weights = result.final_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = runner.invoke(app, ["eval", str(result.final_dir), "--quiet"])
    assert out.exit_code == 1 and "model.safetensors is damaged" in out.output and "Traceback" not in out.output


def test_resume_after_a_crash_before_the_first_checkpoint_starts_over(tiny_model_dir, tiny_data, tmp_path,
                                                                       monkeypatch):
    def crash(n):
        raise RuntimeError("power cut")

    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run")
    patch_compute_loss(monkeypatch, crash)
    with pytest.raises(RuntimeError):
        train(validate_tree(tree), show_progress=False)
    monkeypatch.undo()
    with pytest.raises(UsageError, match="add --resume to continue it, output.overwrite=true"):
        train(validate_tree(tree), show_progress=False)
    assert train(validate_tree(tree), resume=True, show_progress=False).steps == 6


def test_resume_refuses_a_new_length_under_a_decaying_schedule(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=2)
    train_until_interrupted(monkeypatch, validate_tree(tree), 3)
    tree["train"]["max_steps"] = 10
    with pytest.raises(UsageError, match="train.max_steps 6 -> 10 would rebuild the cosine LR schedule"):
        train(validate_tree(tree), resume=True, show_progress=False)


def test_wall_time_accumulates_over_a_resume(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=2)

    def slow_then_interrupt(n):
        if n == 3:
            raise KeyboardInterrupt
        time.sleep(0.3)

    patch_compute_loss(monkeypatch, slow_then_interrupt)
    with pytest.raises(Interrupted):
        train(validate_tree(tree), show_progress=False)
    monkeypatch.undo()
    result = train(validate_tree(tree), resume=True, show_progress=False)
    assert result.wall_time_s >= 0.6, "the first segment's time is counted"
    assert not math.isnan(result.wall_time_s)


def test_output_dir_that_is_a_file_is_one_line(tiny_model_dir, tiny_data, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "taken")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        train(validate_tree(tree), show_progress=False)


def test_resume_is_exact_on_gpt_neox(tiny_data, tmp_path):
    """GPT-NeoX saves `embed_out` but its module calls it `lm_head`: the resume must still load it."""
    from tests.helpers import make_tiny_neox_dir

    model_dir = make_tiny_neox_dir(tmp_path / "neox")
    whole = train(validate_tree(make_recipe(model_dir, tiny_data, tmp_path / "whole", max_steps=4,
                                            lr_schedule="constant")), show_progress=False)
    split = make_recipe(model_dir, tiny_data, tmp_path / "split", max_steps=2, save_every=2, lr_schedule="constant")
    train(validate_tree(split), show_progress=False)
    split["train"]["max_steps"] = 4
    resumed = train(validate_tree(split), resume=True, show_progress=False)
    a, b = load_file(whole.final_dir / "model.safetensors"), load_file(resumed.final_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_every_checkpoint_damaged_deletes_nothing(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=2)
    train_until_interrupted(monkeypatch, validate_tree(tree), 5)
    for weights in (tmp_path / "run" / "checkpoints").glob("step-*/model.safetensors"):
        weights.write_bytes(b"damaged")
    with pytest.raises(UsageError, match="no checkpoint under .* verifies; use output.overwrite=true"):
        train(validate_tree(tree), resume=True, show_progress=False)
    assert len(list((tmp_path / "run" / "checkpoints").glob("step-*"))) == 2, "kept for inspection"


def test_resume_with_other_monitor_samples_takes_a_new_probe_reference(tiny_model_dir, tiny_data, tmp_path,
                                                                         monkeypatch):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=2)
    tree["eval"] = {"max_new_tokens": 2, "batch_size": 8,
                    "suites": [{"kind": "harmful", "path": str(tiny_data["safety"])}]}
    tree["monitor"] = {"every": 2, "samples": 4, "on_breach": "warn"}
    train_until_interrupted(monkeypatch, validate_tree(tree), 5)
    tree["monitor"]["samples"] = 6  # other prompts: the saved start rate no longer compares
    train(validate_tree(tree), resume=True, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    probes = [row for row in rows if "probe/harmful_refusal_rate" in row]
    assert [row["step"] for row in probes] == [0, 2, 4, 4, 6], "a fresh reference probe at the resumed step"
    assert probes[3]["probe/reference"] == probes[3]["probe/harmful_refusal_rate"]


def test_a_divergence_rollback_keeps_the_monitors_rollback_count(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """monitor.max_rollbacks counts every safety rollback of the run: rolling back to an older
    state after a divergence must not hand the monitor its older (smaller) count."""
    from safetune.monitor import SafetyMonitor

    rates = iter([1.0, 0.95] + [0.5] * 20)  # step 0: reference, step 2: passes, then every probe breaches
    monkeypatch.setattr(SafetyMonitor, "measure", lambda self: next(rates))
    nan_loss_between(monkeypatch, 5, 5)  # right after the safety rollback to step 2, step 3 diverges
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", max_bad_steps=1, lr_schedule="constant")
    tree["monitor"] = {"every": 2, "samples": 4, "min_retained": 0.9, "max_rollbacks": 1}
    tree["eval"] = {"suites": [{"kind": "harmful", "path": str(tiny_data["safety"]), "category_field": "category"}],
                    "max_new_tokens": 4, "at_end": False}
    with pytest.raises(SafetuneError, match="after 1 rollbacks"):
        train(validate_tree(tree), show_progress=False)
    rows = strict_json_rows(tmp_path / "run" / "metrics.jsonl")
    assert [r.get("reason") for r in rows if "rollback_to" in r] == [None, "non-finite"]
