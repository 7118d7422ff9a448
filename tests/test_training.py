"""The training loop: reproducibility, exact resume, mix batches, dry run, atomic checkpoints."""

import json

import pytest
import torch
from safetensors.torch import load_file

from safetune import checkpoint as ckpt
from safetune.errors import UsageError
from safetune.recipe import validate_tree
from safetune.training import train
from tests.helpers import train_until_interrupted


def make_recipe(tiny_model_dir, tiny_data, out, **train_overrides):
    tree = {
        "name": "t",
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": {"path": str(tiny_data["task"])}, "safety": {"path": str(tiny_data["safety"])},
                 "max_seq_len": 64},
        "method": "standard",
        "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-2, "log_every": 2} | train_overrides,
        "output": {"dir": str(out)},
    }
    return tree


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_same_seed_same_weights(tiny_model_dir, tiny_data, tmp_path):
    first = train(validate_tree(make_recipe(tiny_model_dir, tiny_data, tmp_path / "a")), show_progress=False)
    second = train(validate_tree(make_recipe(tiny_model_dir, tiny_data, tmp_path / "b")), show_progress=False)
    a, b = weights(first.final_dir), weights(second.final_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    base = weights(tiny_model_dir)
    assert any(not torch.equal(a[k], base[k]) for k in a), "training changed the weights"
    other = train(validate_tree(make_recipe(tiny_model_dir, tiny_data, tmp_path / "c", seed=1)), show_progress=False)
    c = weights(other.final_dir)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_run_directory_contents(tiny_model_dir, tiny_data, tmp_path):
    result = train(validate_tree(make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=3)),
                   show_progress=False)
    run = result.run_dir
    for name in ("recipe.resolved.yaml", "env.json", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]
    assert {"loss", "lr", "tokens_per_s"} <= set(lines[0])
    assert ckpt.is_complete(run / "checkpoints" / "step-3") and ckpt.is_complete(run / "final")
    assert not list(run.rglob(".tmp-*")), "no temporary checkpoint left behind"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "final")  # a normal Hugging Face folder


def test_existing_run_refused_without_resume(tiny_model_dir, tiny_data, tmp_path):
    recipe = validate_tree(make_recipe(tiny_model_dir, tiny_data, tmp_path / "run"))
    train(recipe, show_progress=False)
    with pytest.raises(UsageError, match="already holds a run"):
        train(recipe, show_progress=False)


def test_resume_refuses_changed_recipe(tiny_model_dir, tiny_data, tmp_path):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=3)
    train(validate_tree(tree), show_progress=False)
    tree["train"]["learning_rate"] = 0.5
    with pytest.raises(UsageError, match=r"recipe changed since the run started \(train.learning_rate\)"):
        train(validate_tree(tree), resume=True, show_progress=False)


def test_mix_puts_configured_fraction_of_safety_in_batches(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    import safetune.train_step as train_step

    seen = []
    original = train_step.compute_loss

    def spy(methods, ctx, model, batch):
        seen.append(batch["input_ids"].shape[0])
        return original(methods, ctx, model, batch)

    monkeypatch.setattr(train_step, "compute_loss", spy)
    from safetune.methods.mix import Mix
    from safetune.recipe import MixMethod

    prepared = []
    real_prepare = Mix.prepare_batch
    monkeypatch.setattr(Mix, "prepare_batch", lambda self, ctx, ex, k: prepared.append(r := real_prepare(self, ctx, ex, k)) or r)
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", batch_size=6)
    tree["method"] = {"name": "mix", "safety_fraction": 0.25}
    train(validate_tree(tree), show_progress=False)
    assert sum(seen) == 8 * 6  # 6 task + 2 safety: 2 / 8 = 0.25 (in one pass, or two by length)
    for batch in prepared:
        assert [e.source for e in batch].count("safety") == 2
        assert [e.source for e in batch].count("task") == 6
    assert MixMethod(name="mix").safety_fraction == 0.1


@pytest.mark.parametrize("method", ["standard", {"name": "freeze", "layers": "auto", "top_k": 1}, "ewc"])
def test_dry_run_trains_and_saves_nothing(tiny_model_dir, tiny_data, tmp_path, capsys, method):
    """Not even the caches methods keep in a run dir (freeze's layer table, ewc's Fisher):
    a dry run followed by the real run must not find a run dir "already holding a run"."""
    out = tmp_path / "run"
    tree = make_recipe(tiny_model_dir, tiny_data, out)
    tree["method"] = method
    result = train(validate_tree(tree), dry_run=True)
    assert result.steps == 0 and result.final_dir is None
    assert not out.exists()
    printed = capsys.readouterr().out
    assert "first training example" in printed and "one optimizer step" in printed and "steps: 6" in printed


def test_interrupted_then_resumed_equals_uninterrupted(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """Ctrl-C at step 2 leaves a checkpoint; resuming gives bit-identical weights (mix draws RNG per batch)."""
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "whole")
    tree["method"] = "mix"
    whole = train(validate_tree(tree), show_progress=False)

    tree["output"]["dir"] = str(tmp_path / "split")
    recipe = validate_tree(tree)
    train_until_interrupted(monkeypatch, recipe, 3, match="interrupted at step 2/6; checkpoint saved")
    assert ckpt.latest_checkpoint(tmp_path / "split").name == "step-2"
    resumed = train(recipe, resume=True, show_progress=False)
    assert resumed.steps == 6
    a, b = weights(whole.final_dir), weights(resumed.final_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedules():
    from safetune.train_setup import lr_multiplier

    cosine = lr_multiplier("cosine", warmup=2, total=10)
    assert cosine(0) < cosine(1) < cosine(2) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(0.0, abs=1e-9)
    linear = lr_multiplier("linear", warmup=0, total=4)
    assert [linear(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_multiplier("constant", 0, 5)(3) == 1.0


def test_resume_from_a_checkpoint_saved_in_several_files(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """A model above max_shard_size (50 GB by default) is saved as shards plus an index;
    --resume must read them (it read model.safetensors only)."""
    monkeypatch.setattr(ckpt, "MAX_SHARD_SIZE", "20KB")
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "whole")
    whole = train(validate_tree(tree), show_progress=False)
    tree["output"]["dir"] = str(tmp_path / "split")
    recipe = validate_tree(tree)
    train_until_interrupted(monkeypatch, recipe, 3, match="interrupted at step 2/6; checkpoint saved")
    step2 = ckpt.latest_checkpoint(tmp_path / "split")
    assert (step2 / "model.safetensors.index.json").is_file() and not (step2 / "model.safetensors").exists()
    resumed = train(recipe, resume=True, show_progress=False)
    from safetune.modeling import read_saved_weights

    a, b = read_saved_weights(whole.final_dir, "cpu"), read_saved_weights(resumed.final_dir, "cpu")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keep_checkpoints_keeps_the_newest(tiny_model_dir, tiny_data, tmp_path):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=1, keep_checkpoints=2)
    result = train(validate_tree(tree), show_progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-5", "step-6"] and result.steps == 6
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-6"
