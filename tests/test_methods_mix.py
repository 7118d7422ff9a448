"""mix: safety and benign borderline examples replayed in the configured shares, reproducibly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from safetune.data import build_training_data, load_examples, tokenize_all
from safetune.errors import RecipeError
from safetune.methods.mix import Mix
from safetune.modeling import load_tokenizer
from safetune.recipe import MixMethod, ModelConfig, SourceConfig, validate_tree
from safetune.training import train
from tests.helpers import train_until_interrupted, write_jsonl


@pytest.fixture()
def borderline_file(tmp_path):
    rows = [{"prompt": f"How do I kill process {i}?", "response": "Use the kill command."} for i in range(12)]
    return write_jsonl(tmp_path / "borderline.jsonl", rows)


def recipe_tree(tiny_model_dir, tiny_data, out, method, borderline=None, **train_settings):
    data = {"train": {"path": str(tiny_data["task"])}, "safety": {"path": str(tiny_data["safety"])}, "max_seq_len": 64}
    if borderline is not None:
        data["borderline"] = {"path": str(borderline)}
    return {"model": {"path": str(tiny_model_dir)}, "data": data, "method": method,
            "train": {"max_steps": 6, "batch_size": 6, "learning_rate": 1e-2, "log_every": 1} | train_settings,
            "output": {"dir": str(out)}}


def make_mix(tiny_model_dir, tiny_data, borderline_file, safety_fraction, borderline_fraction, batch_size=6, seed=0):
    tokenizer = load_tokenizer(ModelConfig(path=str(tiny_model_dir)))
    safety = tokenize_all(load_examples(SourceConfig(path=str(tiny_data["safety"])), "data.safety", "safety"),
                          tokenizer, 64)
    borderline = tokenize_all(load_examples(SourceConfig(path=str(borderline_file)), "data.borderline", "borderline"),
                              tokenizer, 64)
    ctx = SimpleNamespace(safety=safety, borderline=borderline, seed=seed, tokenizer=tokenizer,
                          recipe=SimpleNamespace(train=SimpleNamespace(batch_size=batch_size)))
    method = Mix(MixMethod(name="mix", safety_fraction=safety_fraction, borderline_fraction=borderline_fraction))
    method.setup(ctx)
    return method, ctx


def sources(batch):
    return [e.source for e in batch]


def test_each_batch_holds_the_configured_shares(tiny_model_dir, tiny_data, tmp_path, borderline_file, monkeypatch):
    prepared = []
    real_prepare = Mix.prepare_batch

    def spy(self, ctx, examples, micro_step):
        prepared.append(real_prepare(self, ctx, examples, micro_step))
        return prepared[-1]

    monkeypatch.setattr(Mix, "prepare_batch", spy)
    method = {"name": "mix", "safety_fraction": 0.2, "borderline_fraction": 0.2}
    result = train(validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", method, borderline_file)),
                   show_progress=False)
    assert len(prepared) == 6
    for batch in prepared:  # 6 task + 2 safety + 2 borderline: 2/10 = 0.2 each
        assert (sources(batch).count("task"), sources(batch).count("safety"), sources(batch).count("borderline")) \
            == (6, 2, 2)
    import json

    summary = json.loads((result.run_dir / "summary.json").read_text())["methods"]["mix"]
    assert summary == {"safety_per_batch": 2, "borderline_per_batch": 2}


@pytest.mark.parametrize("shares,batch,expected", [((0.1, 0.0), 16, (2, 0)), ((0.1, 0.1), 16, (2, 2)),
                                                   ((0.25, 0.25), 8, (4, 4)), ((0.05, 0.01), 8, (1, 1))])
def test_replay_counts(tiny_model_dir, tiny_data, borderline_file, shares, batch, expected):
    method, _ = make_mix(tiny_model_dir, tiny_data, borderline_file, *shares, batch_size=batch)
    assert (method.per_batch, method.borderline_per_batch) == expected


def test_same_micro_step_draws_the_same_examples(tiny_model_dir, tiny_data, borderline_file):
    """What a resume relies on: the draw is a pure function of (seed, micro_step)."""
    first, ctx = make_mix(tiny_model_dir, tiny_data, borderline_file, 0.2, 0.2)
    again, other_ctx = make_mix(tiny_model_dir, tiny_data, borderline_file, 0.2, 0.2)  # a fresh process, in effect

    def texts(batch):
        return [(e.source, e.messages[0]["content"]) for e in batch]

    task = ctx.safety[:6]  # stands in for 6 task examples: only what is added is compared
    draws = {k: texts(first.prepare_batch(ctx, task, k)[6:]) for k in range(8)}
    for k in reversed(range(8)):  # any order, any instance
        assert texts(again.prepare_batch(other_ctx, task, k)[6:]) == draws[k]
    assert len({tuple(v) for v in draws.values()}) > 1, "different micro-steps draw differently"


def test_no_borderline_share_draws_exactly_as_before(tiny_model_dir, tiny_data, borderline_file):
    method, ctx = make_mix(tiny_model_dir, tiny_data, borderline_file, 0.1, 0.0, batch_size=16)
    for micro_step in range(5):  # the published rule: k = round(B f / (1 - f)) picks from one generator
        generator = torch.Generator().manual_seed(0 * 7919 + micro_step)
        picks = torch.randint(len(ctx.safety), (2,), generator=generator).tolist()
        assert method.prepare_batch(ctx, ctx.safety[:16], micro_step)[16:] == [ctx.safety[i] for i in picks]


def test_resumed_run_draws_the_same_examples(tiny_model_dir, tiny_data, tmp_path, borderline_file, monkeypatch):
    method = {"name": "mix", "safety_fraction": 0.2, "borderline_fraction": 0.2}
    whole = train(validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "whole", method, borderline_file)),
                  show_progress=False)
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "split", method, borderline_file))
    train_until_interrupted(monkeypatch, recipe, 3, match="interrupted at step 2/6")
    resumed = train(recipe, resume=True, show_progress=False)
    a, b = load_file(whole.final_dir / "model.safetensors"), load_file(resumed.final_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_borderline_source_is_loaded_with_its_tag(tiny_model_dir, tiny_data, tmp_path, borderline_file):
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", "standard", borderline_file))
    data = build_training_data(recipe.data, load_tokenizer(recipe.model), 0)
    assert len(data.borderline) == 12 and {e.source for e in data.borderline} == {"borderline"}
    assert all(e.input_ids for e in data.borderline)


def test_borderline_needs_a_source_and_room_for_the_task(tiny_model_dir, tiny_data, tmp_path, borderline_file):
    method = {"name": "mix", "borderline_fraction": 0.1}
    with pytest.raises(RecipeError, match="needs a data.borderline source"):
        validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", method))
    method = {"name": "mix", "safety_fraction": 0.5, "borderline_fraction": 0.5}
    with pytest.raises(RecipeError, match=r"method\[mix\]: safety_fraction \+ borderline_fraction must be below 1"):
        validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", method, borderline_file))
