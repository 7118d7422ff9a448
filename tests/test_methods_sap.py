"""SAP (safety-aware probing): its defining properties on tiny Llama and GPT-NeoX models."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safetune.errors import RecipeError, SafetuneError
from safetune.methods import MethodContext, build_methods
from safetune.methods.safety_signal import preference_pairs, sequence_logprob
from safetune.methods.sap import SAP, default_layers, mlp_output
from safetune.modeling import load_model, load_tokenizer
from safetune.recipe import validate_tree
from safetune.data import build_training_data
from safetune.training import train
from tests.helpers import make_tiny_neox_dir


@pytest.fixture(scope="module")
def neox_dir(tmp_path_factory) -> Path:
    return make_tiny_neox_dir(tmp_path_factory.mktemp("tiny-neox"))


def recipe_tree(model_dir, tiny_data, out, method, **train_settings):
    return {
        "model": {"path": str(model_dir)},
        "data": {"train": {"path": str(tiny_data["task"])}, "safety": {"path": str(tiny_data["safety"])},
                 "harmful": {"path": str(tiny_data["harmful"])}, "max_seq_len": 64},
        "method": method,
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "log_every": 1} | train_settings,
        "output": {"dir": str(out)},
    }


def setup_sap(model_dir, tiny_data, tmp_path, **fields):
    """A model, its context and a set-up SAP method, plus the first task batch."""
    recipe = validate_tree(recipe_tree(model_dir, tiny_data, tmp_path / "run", {"name": "sap", **fields}))
    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model)
    data = build_training_data(recipe.data, tokenizer, seed=0)
    ctx = MethodContext(model=model, tokenizer=tokenizer, recipe=recipe, device=torch.device("cpu"), run_dir=tmp_path,
                        safety=data.safety, seed=0, log=lambda *_: None)
    (method,) = build_methods(recipe.method)
    method.setup(ctx)
    ctx.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = ctx.batch_to_device(data.train[:4])
    return ctx, method, batch


def one_step(ctx, method, batch):
    """What the loop does for one optimizer step with SAP as the only method."""
    assert method.loss(ctx, batch) is None  # SAP trains its probe and leaves the task loss to the loop
    loss = ctx.model(**batch).loss
    loss.backward()
    method.after_backward(ctx)
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- finding the layers


def test_default_layers_are_the_middle_two():
    assert default_layers(32) == [15, 16] and default_layers(4) == [1, 2]
    assert default_layers(2) == [0, 1] and default_layers(1) == [0]


@pytest.mark.parametrize("family", ["llama", "qwen2", "neox"])
def test_mlp_output_found_on_llama_qwen2_neox_and_under_lora(family, tiny_model_dir, tiny_qwen2_dir, neox_dir, tiny_data,
                                                              tmp_path):
    model_dir = {"llama": tiny_model_dir, "qwen2": tiny_qwen2_dir, "neox": neox_dir}[family]
    ctx, method, _ = setup_sap(model_dir, tiny_data, tmp_path)
    assert method.layers == [0, 1] and len(method.probes) == 2
    from safetune.modeling import add_lora
    from safetune.recipe import ModelConfig

    config = ModelConfig(path=str(model_dir), lora={"r": 2})
    lora = add_lora(load_model(config), config)
    from safetune.model_layers import decoder_layers

    _, blocks = decoder_layers(lora)
    module = mlp_output(blocks[1])
    assert module is not None and type(module).__module__.startswith("peft")  # the LoRA wrapper, adapter included


def test_unknown_layer_is_a_one_line_error(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(SafetuneError, match=r"method\[sap\].layers: layer 7 does not exist"):
        setup_sap(tiny_model_dir, tiny_data, tmp_path, layers=[7])


def test_recipe_needs_harmful_and_safety_data(tiny_model_dir, tiny_data, tmp_path):
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "sap"})
    del tree["data"]["harmful"]
    with pytest.raises(RecipeError, match="method 'sap' needs a data.harmful source"):
        validate_tree(tree)
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "sap", "epsilon": 0})
    with pytest.raises(RecipeError, match=r"method\[sap\].epsilon"):
        validate_tree(tree)


# --------------------------------------------------------------------------- the defining properties


def test_preference_pairs_share_the_prompt(tiny_model_dir, tiny_data, tmp_path):
    ctx, method, _ = setup_sap(tiny_model_dir, tiny_data, tmp_path)
    chosen, rejected = method.pairs[0]
    assert chosen.messages[0] == rejected.messages[0]
    assert chosen.messages[-1]["content"].startswith("I'm sorry") and rejected.messages[-1]["content"].startswith("Sure")
    assert len(preference_pairs(ctx.safety, [rejected], ctx.tokenizer, 64)) == 1


def test_probe_is_zero_before_and_after_every_step_and_active_during_it(model_dir, tiny_data, tmp_path, monkeypatch):
    seen = {"before": [], "during": [], "after": [], "at_step": []}
    real_loss, real_after, real_step = SAP.loss, SAP.after_backward, torch.optim.AdamW.step
    state = {}

    def norms(method):
        return sum(float(p.abs().sum()) for p in method.probes)

    def loss(self, ctx, batch):
        state["method"] = self
        seen["before"].append(norms(self))
        return real_loss(self, ctx, batch)

    def step(self, *args, **kwargs):  # the optimizer step comes after the probe's reset
        seen["at_step"].append(norms(state["method"]))
        return real_step(self, *args, **kwargs)

    def after(self, ctx):  # right after the task backward, which ran with the probe in place
        seen["during"].append(norms(self))
        logs = real_after(self, ctx)
        seen["after"].append(norms(self))
        return logs

    monkeypatch.setattr(SAP, "loss", loss)
    monkeypatch.setattr(SAP, "after_backward", after)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    result = train(validate_tree(recipe_tree(model_dir, tiny_data, tmp_path / "run", {"name": "sap"})),
                   show_progress=False)
    assert seen["before"] == [0.0] * 4 and seen["after"] == [0.0] * 4 and seen["at_step"] == [0.0] * 4
    assert all(n > 0 for n in seen["during"]) and len(seen["during"]) == 4
    summary = json.loads((result.run_dir / "summary.json").read_text())["methods"]["sap"]
    assert summary["probes_trained"] == 4 and summary["mean_probe_norm"] > 0
    assert "sap/shifted_loss" in (result.run_dir / "metrics.jsonl").read_text()


def test_weight_shift_is_undone_bit_for_bit(model_dir, tiny_data, tmp_path):
    ctx, method, batch = setup_sap(model_dir, tiny_data, tmp_path, epsilon=0.05)
    before = weights(ctx.model)
    method.loss(ctx, batch)
    assert method.last["shift_norm"] > 0
    after = weights(ctx.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in ctx.model.parameters())  # nothing leaked into the task gradient


def test_only_the_task_update_remains(model_dir, tiny_data, tmp_path):
    """SAP's step == a plain step taken with the same probe in place and no shift at all."""
    ctx_a, sap_a, batch = setup_sap(model_dir, tiny_data, tmp_path / "a", epsilon=0.05, every=2)
    ctx_b, sap_b, _ = setup_sap(model_dir, tiny_data, tmp_path / "b", epsilon=0.05, every=2)
    one_step(ctx_a, sap_a, batch)
    sap_b.cached = [c.clone() for c in sap_a.cached]  # B reuses A's probe: it never shifts its weights
    ctx_b.step = 1
    one_step(ctx_b, sap_b, batch)
    a, b = weights(ctx_a.model), weights(ctx_b.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_probe_step_raises_the_task_loss_at_the_shifted_point(model_dir, tiny_data, tmp_path):
    ctx, method, batch = setup_sap(model_dir, tiny_data, tmp_path, epsilon=0.05, probe_lr=0.05, probe_steps=3)
    params = [p for _, p in ctx.trainable_parameters()]
    direction = method.harmful_direction(ctx, params)  # what loss() will compute (same draw, probe zero)
    method.loss(ctx, batch)
    trained = [p.clone() for p in method.probes]
    shift = method.last["shift_norm"]
    with torch.no_grad():
        pairs = ctx.batch_to_device([c for c, _ in method.pairs[:4]] + [r for _, r in method.pairs[:4]])
        margin_before = sequence_logprob(ctx.model, pairs)
        torch._foreach_add_(params, direction, alpha=shift)
        # the direction is harmful: the compliance gains on the refusal
        margin_after = sequence_logprob(ctx.model, pairs)
        assert float((margin_after[4:] - margin_after[:4]).mean()) > float((margin_before[4:] - margin_before[:4]).mean())
        for probe in method.probes:
            probe.zero_()
        without = float(ctx.model(**batch).loss)
        for probe, value in zip(method.probes, trained):
            probe.copy_(value)
        with_probe = float(ctx.model(**batch).loss)
    assert without == pytest.approx(method.last["shifted_loss"], rel=1e-5)
    assert with_probe > without


def test_harmful_direction_pass_by_pass_is_the_one_of_all_pairs_at_once(model_dir, tiny_data, tmp_path):
    ctx, method, _ = setup_sap(model_dir, tiny_data, tmp_path, pairs_per_step=5, pairs_per_pass=5)
    params = [p for _, p in ctx.trainable_parameters()]
    whole = method.harmful_direction(ctx, params)
    method.config.pairs_per_pass = 2  # passes of 2, 2 and 1 pairs
    parts = method.harmful_direction(ctx, params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, parts))
    assert float(sum((a * a).sum() for a in whole)) == pytest.approx(1.0, rel=1e-5)


def test_resume_mid_cycle_is_bit_identical(model_dir, tiny_data, tmp_path):
    # every=3: step 2 reuses the probe trained at step 0, so the cached probe must survive the checkpoint
    method = {"name": "sap", "every": 3, "epsilon": 0.05}
    whole = train(validate_tree(recipe_tree(model_dir, tiny_data, tmp_path / "a", method, lr_schedule="constant")),
                  show_progress=False)
    split = recipe_tree(model_dir, tiny_data, tmp_path / "b", method, lr_schedule="constant", max_steps=2, save_every=2)
    train(validate_tree(split), show_progress=False)
    split["train"]["max_steps"] = 4
    resumed = train(validate_tree(split), resume=True, show_progress=False)
    a, b = load_file(whole.final_dir / "model.safetensors"), load_file(resumed.final_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((resumed.run_dir / "summary.json").read_text())["methods"]["sap"]
    assert summary["probes_trained"] == 2  # steps 0 and 3


def test_sap_under_lora_with_freeze(model_dir, tiny_data, tmp_path):
    tree = recipe_tree(model_dir, tiny_data, tmp_path / "run",
                       [{"name": "freeze", "layers": [0]}, {"name": "sap", "layers": [1], "epsilon": 0.05}],
                       learning_rate=5e-2)
    tree["model"]["lora"] = {"r": 4, "alpha": 8}
    result = train(validate_tree(tree), show_progress=False)
    after = load_file(result.final_dir / "adapter_model.safetensors")
    layer0_b = [k for k in after if ".layers.0." in k and "lora_B" in k]
    assert layer0_b and all(float(after[k].abs().sum()) == 0.0 for k in layer0_b)
    summary = json.loads((result.run_dir / "summary.json").read_text())["methods"]
    assert summary["freeze"]["frozen_layers"] == [0]
    assert summary["sap"]["probes_trained"] == 4 and summary["sap"]["mean_probe_norm"] > 0
