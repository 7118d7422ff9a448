"""Each safety method's defining property, checked on a tiny model."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safetune.data import load_examples, tokenize_all
from safetune.methods import MethodContext, build_methods
from safetune.methods import layers as detection
from safetune.methods.ewc import EWC
from safetune.methods.safegrad import SafeGrad, project_conflicting
from safetune.methods.safety_signal import (diagonal_fisher, kl_to_reference, safety_batch, task_pass_tokens,
                                           token_passes)
from safetune.modeling import load_model, load_tokenizer
from safetune.recipe import EWCMethod, ModelConfig, SafeGradMethod, SourceConfig, validate_tree
from safetune.training import train

# --------------------------------------------------------------------------- helpers


def context(tiny_model_dir, tiny_data, tmp_path, reference=False) -> MethodContext:
    config = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(config)
    model = load_model(config)
    safety = tokenize_all(load_examples(SourceConfig(path=str(tiny_data["safety"])), "data.safety", "safety"),
                          tokenizer, 64)
    ref = load_model(config).eval().requires_grad_(False) if reference else None
    return MethodContext(model=model, tokenizer=tokenizer, recipe=None, device=torch.device("cpu"),
                         run_dir=tmp_path, safety=safety, seed=0, reference_model=ref, log=lambda *_: None)


def recipe_tree(tiny_model_dir, tiny_data, out, method, **train):
    return {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": {"path": str(tiny_data["task"])}, "safety": {"path": str(tiny_data["safety"])},
                 "max_seq_len": 64},
        "method": method,
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "log_every": 1} | train,
        "output": {"dir": str(out)},
    }


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


# --------------------------------------------------------------------------- SafeGrad surgery


@pytest.mark.parametrize("seed", range(20))
def test_projection_removes_conflict_and_keeps_agreement(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (7,), (2, 2, 2)]
    g = [torch.randn(s, generator=gen) for s in shapes]
    s = [torch.randn(s, generator=gen) for s in shapes]
    if flat(g) @ flat(s) > 0:  # make it a conflict
        g = [-t for t in g]
    before = [t.clone() for t in g]
    stats = project_conflicting(g, s, "global")
    assert stats["projected"] == 1.0 and stats["cosine"] < 0
    assert flat(g) @ flat(s) >= -1e-6 * flat(before).norm() * flat(s).norm()
    # only the component along s was removed
    removed = flat(before) - flat(g)
    assert torch.allclose(removed, (removed @ flat(s)) / flat(s).norm() ** 2 * flat(s), atol=1e-5)

    agreeing = [-t for t in before]  # now g·s > 0: untouched, bit for bit
    kept = [t.clone() for t in agreeing]
    assert project_conflicting(agreeing, s, "global")["projected"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(agreeing, kept))


def test_global_and_per_tensor_differ_as_they_should():
    # tensor 0 conflicts, tensor 1 agrees strongly: globally no conflict
    s = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])]
    g_global = [torch.tensor([-1.0, 1.0]), torch.tensor([5.0, 1.0])]
    g_tensor = [t.clone() for t in g_global]
    assert project_conflicting(g_global, s, "global")["projected"] == 0.0
    assert torch.equal(g_global[0], torch.tensor([-1.0, 1.0]))
    assert project_conflicting(g_tensor, s, "per_tensor")["projected"] == 1.0
    assert torch.equal(g_tensor[0], torch.tensor([0.0, 1.0]))  # its own conflict removed
    assert torch.equal(g_tensor[1], torch.tensor([5.0, 1.0]))  # the agreeing tensor untouched


def test_optimizer_sees_the_projected_gradient(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """Inside the real loop, every gradient handed to AdamW has g·s >= 0 for that step's s."""
    seen = []
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append([p.grad.detach().clone() for p in params])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    calls = []
    real_safety = SafeGrad.safety_gradient

    def record(self, ctx, params):
        s = real_safety(self, ctx, params)
        calls.append(s)
        return s

    monkeypatch.setattr(SafeGrad, "safety_gradient", record)
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "safegrad"}, max_grad_norm=None,
                       learning_rate=0.05)
    result = train(validate_tree(tree), show_progress=False)
    assert len(seen) == len(calls) == 4
    for grads, s in zip(seen, calls):
        assert flat(grads) @ flat(s) >= -1e-6 * flat(grads).norm() * flat(s).norm()
    summary = (result.run_dir / "summary.json").read_text()
    assert '"conflict_rate"' in summary
    metrics = (result.run_dir / "metrics.jsonl").read_text()
    assert "safegrad/cosine" in metrics and "safegrad/removed_norm" in metrics


def test_cached_safety_gradient_reused_for_k_minus_1_steps(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    computed_at = []
    real_safety = SafeGrad.safety_gradient

    def record(self, ctx, params):
        computed_at.append(ctx.step)
        return real_safety(self, ctx, params)

    monkeypatch.setattr(SafeGrad, "safety_gradient", record)
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "safegrad", "safety_every": 3},
                       max_steps=7)
    train(validate_tree(tree), show_progress=False)
    assert computed_at == [0, 3, 6]


def test_kl_to_base_zero_at_start_and_pulls_back(tiny_model_dir, tiny_data, tmp_path):
    ctx = context(tiny_model_dir, tiny_data, tmp_path, reference=True)
    batch = ctx.batch_to_device(safety_batch(ctx, 4, draw=0))
    assert float(kl_to_reference(ctx.model, ctx.reference_model, batch).detach()) == pytest.approx(0.0, abs=1e-6)
    # drift away from the reference, then one gradient step on the KL must move back toward it
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    drifted = kl_to_reference(ctx.model, ctx.reference_model, batch)
    assert float(drifted.detach()) > 0
    params = list(ctx.model.parameters())
    grads = torch.autograd.grad(drifted, params)
    offset = flat([p.detach() - r for p, r in zip(params, ctx.reference_model.parameters())])
    assert flat(grads) @ offset > 0  # descent direction -grad points back toward the aligned weights
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(0.5 * g)
    assert float(kl_to_reference(ctx.model, ctx.reference_model, batch).detach()) < float(drifted.detach())


def test_safegrad_kl_to_base_trains(tiny_model_dir, tiny_data, tmp_path):
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "safegrad", "safety_loss": "kl_to_base"})
    assert train(validate_tree(tree), show_progress=False).steps == 4


# --------------------------------------------------------------------------- freezing


def test_frozen_layers_are_bit_identical(tiny_model_dir, tiny_data, tmp_path):
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "freeze", "layers": [1]})
    result = train(validate_tree(tree), show_progress=False)
    before, after = load_file(Path(tiny_model_dir) / "model.safetensors"), load_file(result.final_dir / "model.safetensors")
    layer1 = [k for k in before if ".layers.1." in k]
    others = [k for k in before if ".layers.1." not in k]
    assert layer1 and all(torch.equal(before[k], after[k]) for k in layer1)
    assert all(not torch.equal(before[k], after[k]) for k in others if "layers.0" in k and k.endswith("proj.weight"))


def test_fisher_detector_ranks_the_constructed_safety_layer_first(tiny_model_dir, tiny_data, tmp_path):
    ctx = context(tiny_model_dir, tiny_data, tmp_path)
    # Layer 0 is made inert (all its matrices zero): the refusal loss cannot depend on it,
    # so layer 1 carries all the safety-relevant Fisher mass.
    with torch.no_grad():
        for p in ctx.model.model.layers[0].parameters():
            if p.dim() == 2:
                p.zero_()
    scores = detection.fisher_scores(ctx, samples=16, batch_size=8)
    assert scores[1] > 0 and scores[0] < scores[1] * 1e-6
    assert detection.select_layers(scores, top_k=1, threshold=None) == [1]


def test_ablation_detector_ranks_the_layer_whose_perturbation_moves_refusal(tiny_model_dir, tiny_data, tmp_path):
    ctx = context(tiny_model_dir, tiny_data, tmp_path)
    original = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    watched = ctx.model.model.layers[1].mlp.down_proj.weight
    reference = watched.detach().clone()

    def measure(prompts):  # "refuses" only while layer 1 is intact
        return 0.9 if torch.equal(watched, reference) else 0.2

    scores = detection.ablation_scores(ctx, scale=0.0, harmful=["a", "b"], benign=[], measure=measure)
    assert scores == [0.0, pytest.approx(0.7)]
    assert all(torch.equal(v, original[k]) for k, v in ctx.model.state_dict().items()), "weights restored"


def test_select_layers_threshold():
    assert detection.select_layers([0.1, 1.0, 0.6, 0.3], top_k=None, threshold=0.5) == [1, 2]
    assert detection.select_layers([0.1, 1.0, 0.6, 0.3], top_k=2, threshold=None) == [1, 2]


def test_freeze_auto_writes_layer_table(tiny_model_dir, tiny_data, tmp_path):
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "freeze", "layers": "auto", "top_k": 1})
    result = train(validate_tree(tree), show_progress=False)
    table = (result.run_dir / "safety_layers.json").read_text()
    assert '"detector": "fisher"' in table and '"frozen": true' in table


def test_freeze_unknown_layer_is_an_error(tiny_model_dir, tiny_data, tmp_path):
    from safetune.errors import SafetuneError

    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "freeze", "layers": [5]})
    with pytest.raises(SafetuneError, match=r"method\[freeze\].layers: layer 5 does not exist"):
        train(validate_tree(tree), show_progress=False)


# --------------------------------------------------------------------------- EWC


def test_ewc_penalty_and_gradient(tiny_model_dir, tiny_data, tmp_path):
    ctx = context(tiny_model_dir, tiny_data, tmp_path)
    method = EWC(EWCMethod(name="ewc", strength=3.0, fisher_samples=16))
    method.setup(ctx)
    assert float(method.penalty().detach()) == 0.0  # at the aligned weights
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    params = dict(ctx.model.named_parameters())
    grads = torch.autograd.grad(method.penalty(), [params[n] for n in method.names])
    for name, grad in zip(method.names, grads):
        expected = 2 * 3.0 * method.fisher[name] * (params[name].detach() - method.anchor[name])
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-7)
    assert any(float(f.sum()) > 0 for f in method.fisher.values())
    # the loop gets that gradient from after_backward (foreach ops), added to the task gradient
    task = {n: torch.randn(params[n].shape, generator=gen) for n in method.names}
    for name in method.names:
        params[name].grad = task[name].clone()
    method.after_backward(ctx)
    for name, grad in zip(method.names, grads):
        assert torch.allclose(params[name].grad, task[name] + grad, rtol=1e-4, atol=1e-6)


def test_ewc_fisher_cached_and_reused(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    ctx = context(tiny_model_dir, tiny_data, tmp_path)
    first = EWC(EWCMethod(name="ewc", fisher_samples=16))
    first.setup(ctx)
    assert (tmp_path / "ewc_fisher.safetensors").is_file()
    import safetune.methods.ewc as ewc_module

    monkeypatch.setattr(ewc_module, "diagonal_fisher", lambda *a, **k: pytest.fail("recomputed the Fisher"))
    second = EWC(EWCMethod(name="ewc", fisher_samples=16))
    second.setup(ctx)
    assert all(torch.equal(first.fisher[k], second.fisher[k]) for k in first.fisher)


def test_fisher_in_passes_within_a_task_pass_is_the_fisher_of_whole_batches(tiny_model_dir, tiny_data, tmp_path):
    # short task rows (identity-shift chats beside long safety demonstrations): the Fisher's
    # batches of 8 are split into passes no larger than a task pass, with the same result
    from types import SimpleNamespace

    ctx = context(tiny_model_dir, tiny_data, tmp_path)
    whole = diagonal_fisher(ctx, 16, 8)  # no task data: one pass per batch
    ctx.recipe = SimpleNamespace(train=SimpleNamespace(batch_size=2))
    ctx.train_examples = [replace(example, input_ids=example.input_ids[:8], labels=example.labels[:8],
                                  position_ids=example.position_ids[:8], _trained=None) for example in ctx.safety[:4]]
    budget = task_pass_tokens(ctx)
    assert budget == 16
    batch = safety_batch(ctx, 8, -1)
    passes = token_passes(batch, budget)
    assert len(passes) > 1 and sorted(map(id, sum(passes, []))) == sorted(map(id, batch))
    assert all(len(chunk) == 1 or len(chunk) * max(len(e.input_ids) for e in chunk) <= budget for chunk in passes)
    split = diagonal_fisher(ctx, 16, 8)
    for name in whole:
        assert torch.allclose(split[name], whole[name], rtol=1e-4, atol=1e-10)


def test_ewc_borderline_fisher_adds_the_benign_answers_fisher(tiny_model_dir, tiny_data, tmp_path):
    # safety_data: refusals_and_borderline anchors F(refusals) + w * F(borderline), term by term
    ctx = context(tiny_model_dir, tiny_data, tmp_path)
    rows = [{"prompt": f"How do I kill process {i}?", "response": f"Run kill {i}."} for i in range(16)]
    path = tmp_path / "borderline.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx.borderline = tokenize_all(load_examples(SourceConfig(path=str(path)), "data.borderline", "borderline"),
                                  ctx.tokenizer, 64)
    refusals = diagonal_fisher(ctx, 16, 8)
    benign = diagonal_fisher(ctx, 16, 8, borderline=True)
    method = EWC(EWCMethod(name="ewc", fisher_samples=16, safety_data="refusals_and_borderline", borderline_weight=0.5))
    method.setup(ctx)
    for name in method.names:
        assert torch.allclose(method.fisher[name], refusals[name] + 0.5 * benign[name], rtol=1e-5, atol=1e-12)
    # the benign answers' Fisher is not the refusals' one: it anchors other weights as well
    assert not torch.allclose(flat(refusals.values()), flat(benign.values()))
    assert method.summary()["safety_data"] == "refusals_and_borderline"


def test_ewc_keeps_weights_closer_to_aligned(tiny_model_dir, tiny_data, tmp_path):
    base = load_file(Path(tiny_model_dir) / "model.safetensors")

    def distance(folder):
        after = load_file(folder / "model.safetensors")
        return sum(float((after[k] - base[k]).pow(2).sum()) for k in base)

    plain = train(validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "a", "standard")), show_progress=False)
    ewc = train(validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "b",
                                          {"name": "ewc", "strength": 1e6})), show_progress=False)
    assert distance(ewc.final_dir) < distance(plain.final_dir)


# --------------------------------------------------------------------------- combination


def test_freeze_plus_safegrad_applies_both(tiny_model_dir, tiny_data, tmp_path):
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run",
                       [{"name": "safegrad"}, {"name": "freeze", "layers": [0]}])
    methods = build_methods(validate_tree(tree).method)
    assert [m.name for m in methods] == ["freeze", "safegrad"]  # freezing is set up first
    result = train(validate_tree(tree), show_progress=False)
    before, after = load_file(Path(tiny_model_dir) / "model.safetensors"), load_file(result.final_dir / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if ".layers.0." in k)
    assert "safegrad/cosine" in (result.run_dir / "metrics.jsonl").read_text()
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["methods"]["freeze"]["frozen_layers"] == [0]
    assert summary["methods"]["safegrad"]["steps"] == 4


def test_safegrad_config_defaults():
    config = SafeGradMethod(name="safegrad")
    assert (config.projection, config.safety_loss, config.safety_every) == ("global", "refusal_ce", 1)
