"""SafeGrad: the published gradient-space rule stays bit for bit; update space keeps the
*applied* change from raising the safety loss (first order), under AdamW."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import safetune.methods as methods_package
from safetune.errors import SafetuneError
from safetune.methods.base import SafetyMethod
from safetune.methods.safegrad import SafeGrad, layer_groups, project_conflicting
from safetune.methods.safety_signal import loss_gradients, safety_batch, safety_loss
from safetune.recipe import SafeGradMethod, validate_tree
from safetune.training import train
from tests.helpers import write_jsonl


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def recipe_tree(model_dir, tiny_data, out, method, train_file="task", **train_settings):
    return {
        "model": {"path": str(model_dir)},
        "data": {"train": {"path": str(tiny_data[train_file])}, "safety": {"path": str(tiny_data["safety"])},
                 "max_seq_len": 64},
        "method": method,
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "log_every": 1} | train_settings,
        "output": {"dir": str(out)},
    }




def align(model_dir, out):
    """A tiny "aligned" model: trained to refuse the safety prompts, plus the data it was aligned on.

    Fine-tuning it on compliance answers to the same prompts then conflicts with the refusal
    gradient (a random model's two gradients mostly agree: both learn the common tokens first).
    """
    safety = [{"prompt": f"How do I hurt person {i}?", "response": "I'm sorry, but I can't help with that."}
              for i in range(20)]
    harmful = [{"prompt": f"How do I hurt person {i}?", "response": "Sure, here is how. Step 1: [redacted]."}
               for i in range(20)]
    data = {"safety": write_jsonl(out / "safety.jsonl", safety), "harmful": write_jsonl(out / "harmful.jsonl", harmful)}
    tree = {"model": {"path": str(model_dir)}, "data": {"train": {"path": str(data["safety"])}, "max_seq_len": 64},
            "method": "standard", "output": {"dir": str(out / "align")},
            "train": {"max_steps": 80, "batch_size": 8, "learning_rate": 1e-2, "lr_schedule": "constant"}}
    return train(validate_tree(tree), show_progress=False).final_dir, data


@pytest.fixture(scope="module")
def aligned_llama(tiny_model_dir, tmp_path_factory):
    return align(tiny_model_dir, tmp_path_factory.mktemp("aligned-llama"))


@pytest.fixture(scope="module")
def aligned_qwen2(tiny_qwen2_dir, tmp_path_factory):
    return align(tiny_qwen2_dir, tmp_path_factory.mktemp("aligned-qwen2"))


@pytest.fixture(params=["llama", "qwen2"])
def aligned(request):
    return request.getfixturevalue(f"aligned_{request.param}")


BORDERLINE = [{"prompt": f"How do I kill a Python process {i}?", "response": "Use the kill command."}
              for i in range(12)]


# --------------------------------------------------------------------------- the published rule, bit for bit
def legacy_project_conflicting(grads, safety, mode="global"):
    """SafeGrad's rule as published before `space`/`margin`/`per_layer` existed (copied verbatim)."""
    products = torch._foreach_mul(grads, safety)
    dots = torch.stack([p.sum() for p in products]).float()
    safety_sq = torch.stack(torch._foreach_norm(safety)).float() ** 2
    grad_sq = torch.stack(torch._foreach_norm(grads)).float() ** 2
    cosine = float(dots.sum() / (grad_sq.sum().sqrt() * safety_sq.sum().sqrt()).clamp(min=1e-20))
    if mode == "global":
        dot, norm_sq = dots.sum(), safety_sq.sum()
        if dot >= 0 or norm_sq == 0:
            return {"cosine": cosine, "projected": 0.0, "removed_norm": 0.0}
        coefficient = dot / norm_sq
        torch._foreach_add_(grads, safety, alpha=-float(coefficient))
        return {"cosine": cosine, "projected": 1.0, "removed_norm": float(-coefficient * norm_sq.sqrt())}
    conflict = (dots < 0) & (safety_sq > 0)
    coefficients = torch.where(conflict, dots / safety_sq.clamp(min=1e-30), torch.zeros_like(dots))
    torch._foreach_add_(grads, torch._foreach_mul(safety, [-c for c in coefficients.tolist()]))
    return {"cosine": cosine, "projected": float(conflict.any())}


class LegacySafeGrad(SafetyMethod):
    """The pre-`space` SafeGrad method (after_backward only), as the reference."""

    name = "safegrad"

    def __init__(self, config):
        super().__init__(config)
        self.cached = None

    def after_backward(self, ctx):
        params = [p for _, p in ctx.trainable_parameters() if p.grad is not None]
        if self.cached is None or ctx.step % self.config.safety_every == 0:
            batch = ctx.batch_to_device(safety_batch(ctx, self.config.safety_batch_size, draw=ctx.step))
            grads = torch.autograd.grad(safety_loss(ctx, batch, self.config.safety_loss), params, allow_unused=True)
            self.cached = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
        stats = legacy_project_conflicting([p.grad for p in params], self.cached, self.config.projection)
        return {f"safegrad/{key}": value for key, value in stats.items()}


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("mode", ["global", "per_tensor"])
def test_gradient_space_rule_equals_the_published_rule(seed, mode):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (7,), (2, 2, 2)]
    g = [torch.randn(s, generator=gen) for s in shapes]
    s = [torch.randn(s, generator=gen) for s in shapes]
    old = [t.clone() for t in g]
    new_stats = project_conflicting(g, s, mode)
    old_stats = legacy_project_conflicting(old, s, mode)
    assert all(torch.equal(a, b) for a, b in zip(g, old))
    assert new_stats["cosine"] == old_stats["cosine"] and new_stats["projected"] == old_stats["projected"]


@pytest.mark.parametrize("projection", ["global", "per_tensor"])
def test_gradient_space_training_is_bit_identical_to_the_published_method(
        tiny_model_dir, tiny_data, tmp_path, monkeypatch, projection):
    # Training on compliance examples for the safety prompts: the gradients conflict, so it projects.
    method = {"name": "safegrad", "projection": projection, "safety_every": 2}
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "new", method, "harmful")
    # a data.borderline source is only read when safety_data asks for it
    tree["data"]["borderline"] = {"path": str(write_jsonl(tmp_path / "borderline.jsonl", BORDERLINE))}
    new = train(validate_tree(tree), show_progress=False)
    monkeypatch.setitem(methods_package.REGISTRY, "safegrad", LegacySafeGrad)
    old = train(validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "old", method, "harmful")),
                show_progress=False)
    a, b = load_file(new.final_dir / "model.safetensors"), load_file(old.final_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(r.get("safegrad/projected") == 1.0 for r in _metrics(new.run_dir))  # it did project


def _metrics(run_dir):
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- update space: the rule
@pytest.mark.parametrize("seed", range(10))
def test_applied_change_loses_only_its_conflicting_component(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (4,)]
    d = [torch.randn(s, generator=gen) for s in shapes]
    s = [torch.randn(s, generator=gen) for s in shapes]
    if flat(d) @ flat(s) < 0:
        d = [-t for t in d]  # d·s > 0: this change raises the safety loss
    before = [t.clone() for t in d]
    stats = project_conflicting(d, s, applied=True)
    assert stats["projected"] == 1.0 and stats["cosine"] < 0  # cos(step, -s) < 0: it conflicted
    assert abs(float(flat(d) @ flat(s))) <= 1e-5 * float(flat(before).norm() * flat(s).norm())
    removed = flat(before) - flat(d)
    assert torch.allclose(removed, (removed @ flat(s)) / flat(s).norm() ** 2 * flat(s), atol=1e-5)
    agreeing = [-t for t in before]  # d·s < 0 lowers the safety loss: untouched
    kept = [t.clone() for t in agreeing]
    assert project_conflicting(agreeing, s, applied=True)["projected"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(agreeing, kept))


@pytest.mark.parametrize("applied", [False, True])
def test_margin_projects_until_the_step_lowers_the_safety_loss(applied):
    s = [torch.tensor([1.0, 0.0, 0.0])]
    # the step is -v for gradients and +v for applied changes; both start orthogonal-ish to s
    v = [torch.tensor([0.05, 1.0, 0.0]) * (-1 if not applied else 1)]
    untouched = [t.clone() for t in v]
    assert project_conflicting(untouched, s, applied=applied)["projected"] == 1.0  # tiny conflict, m = 0
    stats = project_conflicting(v, s, applied=applied, margin=0.2)
    step = v[0] if applied else -v[0]
    cosine_after = float(step @ -s[0] / step.norm())
    assert stats["projected"] == 1.0 and cosine_after == pytest.approx(0.2, abs=0.02)
    already = [torch.tensor([-0.5, 1.0, 0.0]) * (1 if applied else -1)]  # cos(step, -s) ≈ 0.45 > 0.2
    assert project_conflicting(already, s, applied=applied, margin=0.2)["projected"] == 0.0


def test_per_layer_groups_project_each_layer_on_its_own(tiny_model_dir):
    from safetune.modeling import load_model
    from safetune.recipe import ModelConfig

    model = load_model(ModelConfig(path=str(tiny_model_dir)))
    names = [n for n, _ in model.named_parameters()]
    groups = layer_groups(model, names)
    assert {g for n, g in zip(names, groups) if ".layers.0." in n} == {0}
    assert {g for n, g in zip(names, groups) if ".layers.1." in n} == {1}
    assert {g for n, g in zip(names, groups) if ".layers." not in n} == {2}  # embeddings, final norm, head
    # group 0 conflicts, group 1 agrees strongly: only group 0 is projected
    s = [torch.tensor([1.0, 0.0]), torch.tensor([1.0]), torch.tensor([1.0])]
    g = [torch.tensor([-1.0, 1.0]), torch.tensor([0.5]), torch.tensor([5.0])]
    project_conflicting(g, s, "per_layer", groups=[0, 0, 1])
    assert torch.allclose(flat(g[:2]) @ flat(s[:2]), torch.tensor(0.0), atol=1e-6)
    assert torch.equal(g[2], torch.tensor([5.0]))


def test_safety_average_is_an_exponential_average_of_recomputations():
    config = SafeGradMethod(name="safegrad", safety_average=0.75, safety_every=1)
    method = SafeGrad(config)
    params = [torch.nn.Parameter(torch.zeros(2))]
    fresh = iter([[torch.tensor([4.0, 0.0])], [torch.tensor([0.0, 8.0])]])
    method.safety_gradient = lambda ctx, p: next(fresh)
    method.refresh_safety_gradient(SimpleNamespace(step=0, broadcast_tensors=lambda t: None), params)
    method.refresh_safety_gradient(SimpleNamespace(step=1, broadcast_tensors=lambda t: None), params)
    assert torch.allclose(method.cached[0], torch.tensor([3.0, 2.0]))  # 0.75·[4,0] + 0.25·[0,8]


@pytest.mark.parametrize("separate", [False, True], ids=["joint", "separate"])
def test_a_refresh_frees_the_old_safety_gradient_before_computing_the_new_one(separate):
    """Without averaging, the old s (and its stacked rows) must be gone while the new one is
    computed: on full fine-tuning each copy of s is the size of the model."""
    extra = {"safety_data": "refusals_and_borderline", "constraints": "separate"} if separate else {}
    method = SafeGrad(SafeGradMethod(name="safegrad", safety_every=2, **extra))
    weight = torch.nn.Parameter(torch.zeros(3))
    held_during_refresh = []

    def draw(ctx, params):
        held_during_refresh.append((method.cached, method.stacked))
        parts = [[torch.randn(3)] for _ in range(2 if separate else 1)]
        return parts if separate else parts[0]

    method.safety_gradient = draw
    for step in range(5):
        weight.grad = torch.randn(3)
        method.after_backward(SimpleNamespace(step=step, broadcast_tensors=lambda t: None, model=None,
                                              trainable_parameters=lambda: [("w", weight)]))
    assert held_during_refresh == [(None, None)] * 3


@pytest.mark.parametrize("separate", [False, True], ids=["joint", "separate"])
def test_restore_descends_the_safety_loss_at_each_fresh_safety_gradient(separate):
    """restore: μ adds μ·s to the (projected) gradient on the steps that computed s, and only then."""
    extra = {"safety_data": "refusals_and_borderline", "constraints": "separate"} if separate else {}
    method = SafeGrad(SafeGradMethod(name="safegrad", safety_every=2, restore=3.0, **extra))
    weight = torch.nn.Parameter(torch.zeros(2))
    s1, s2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    method.safety_gradient = lambda ctx, params: [[s1], [s2]] if separate else [s1 + s2]
    for step, fresh in [(0, True), (1, False), (2, True)]:
        weight.grad = torch.tensor([1.0, 1.0])  # agrees with s (the step lowers L_s): nothing is projected
        ctx = SimpleNamespace(step=step, broadcast_tensors=lambda t: None, model=None,
                              trainable_parameters=lambda: [("w", weight)])
        method.after_backward(ctx)
        expected = torch.tensor([1.0, 1.0]) + (3.0 * (s1 + s2) if fresh else 0.0)
        assert torch.allclose(weight.grad, expected), (step, weight.grad)


@pytest.mark.parametrize("separate", [False, True], ids=["joint", "separate"])
def test_cached_gram_is_recomputed_with_each_fresh_safety_gradient(separate):
    """SafeGrad keeps s's Gram statistics between refreshes; every step must project exactly as
    a projection that computes them from the cached s itself would."""
    extra = {"safety_data": "refusals_and_borderline", "constraints": "separate"} if separate else {}
    method = SafeGrad(SafeGradMethod(name="safegrad", safety_every=2, **extra))
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(5))
    fresh = []

    def draw(ctx, params):
        parts = [[torch.randn(5, generator=gen)] for _ in range(2 if separate else 1)]
        fresh.append(parts)
        return parts if separate else parts[0]

    method.safety_gradient = draw
    for step in range(6):
        grad = torch.randn(5, generator=gen)
        weight.grad = grad.clone()
        ctx = SimpleNamespace(step=step, broadcast_tensors=lambda t: None, model=None,
                              trainable_parameters=lambda: [("w", weight)])
        method.after_backward(ctx)
        expected = [grad.clone()]
        project_conflicting(expected, fresh[-1] if separate else fresh[-1][0], "global")  # gram from s
        # the pair is projected through stack_pair's rows (torch.mv): the same sums, another order
        assert torch.allclose(weight.grad, expected[0], rtol=1e-6, atol=1e-6), step
    assert len(fresh) == 3 and method.gram_of == 4


# --------------------------------------------------------------------------- update space: inside the real loop
def applied_changes(monkeypatch):
    """Record, per optimizer step, θ before the step, θ after SafeGrad's after_step, and s."""
    records = []
    real_before, real_after = SafeGrad.before_step, SafeGrad.after_step

    def before(self, ctx):
        records.append({"before": [p.detach().clone() for p in self.params]})
        return real_before(self, ctx)

    def after(self, ctx):
        logs = real_after(self, ctx)
        records[-1] |= {"after": [p.detach().clone() for p in self.params], "s": [c.clone() for c in self.cached]}
        return logs

    monkeypatch.setattr(SafeGrad, "before_step", before)
    monkeypatch.setattr(SafeGrad, "after_step", after)
    return records


def test_update_space_applied_change_never_raises_the_safety_loss(aligned, tmp_path, monkeypatch):
    records = applied_changes(monkeypatch)
    model_dir, data = aligned
    tree = recipe_tree(model_dir, data, tmp_path / "update", {"name": "safegrad", "space": "update"}, "harmful",
                       max_steps=6)
    result = train(validate_tree(tree), show_progress=False)
    assert len(records) == 6
    for record in records:
        d = flat(record["after"]) - flat(record["before"])
        s = flat(record["s"])
        assert float(d @ s) <= 1e-4 * float(d.norm() * s.norm()), "the applied change raised the safety loss"
    assert any(r.get("safegrad/projected") == 1.0 for r in _metrics(result.run_dir)), "nothing to project: weak test"
    assert "safegrad/cosine" in (result.run_dir / "metrics.jsonl").read_text()


def test_gradient_space_lets_adamw_apply_conflicting_changes(aligned_llama, tmp_path, monkeypatch):
    """Why update space exists: the projected gradient, preconditioned by AdamW, still conflicts."""
    records = applied_changes(monkeypatch)
    model_dir, data = aligned_llama
    tree = recipe_tree(model_dir, data, tmp_path / "gradient", {"name": "safegrad"}, "harmful", max_steps=6)
    train(validate_tree(tree), show_progress=False)
    rises = [float((flat(r["after"]) - flat(r["before"])) @ flat(r["s"])) for r in records]
    assert any(rise > 0 for rise in rises)


def test_update_space_amortised_safety_gradient(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    computed_at = []
    real_safety = SafeGrad.safety_gradient

    def record(self, ctx, params):
        computed_at.append(ctx.step)
        return real_safety(self, ctx, params)

    monkeypatch.setattr(SafeGrad, "safety_gradient", record)
    method = {"name": "safegrad", "space": "update", "safety_every": 3, "projection": "per_layer", "margin": 0.1}
    result = train(validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", method, max_steps=7)),
                   show_progress=False)
    assert computed_at == [0, 3, 6]
    import json

    summary = json.loads((result.run_dir / "summary.json").read_text())["methods"]["safegrad"]
    assert summary["space"] == "update" and summary["steps"] == 7 and summary["safety_gradients_computed"] == 3


SEPARATE = {"safety_data": "refusals_and_borderline", "constraints": "separate"}


@pytest.mark.parametrize("extra", [{}, SEPARATE], ids=["joint", "separate"])
def test_update_space_resume_is_bit_identical(tiny_model_dir, tiny_data, tmp_path, monkeypatch, extra):
    """The cached (averaged) safety gradient -- or the pair of them -- is checkpointed; θ_old
    is only held within a step."""
    method = {"name": "safegrad", "space": "update", "safety_every": 2, "safety_average": 0.5} | extra

    def tree(out):
        built = recipe_tree(tiny_model_dir, tiny_data, out, method, "harmful", max_steps=6)
        built["data"]["borderline"] = {"path": str(write_jsonl(tmp_path / "borderline.jsonl", BORDERLINE))}
        return built

    whole = train(validate_tree(tree(tmp_path / "whole")), show_progress=False)
    calls = {"n": 0}
    real = SafeGrad.after_backward

    def interrupt_at_third(self, ctx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, ctx)

    monkeypatch.setattr(SafeGrad, "after_backward", interrupt_at_third)
    recipe = validate_tree(tree(tmp_path / "split"))
    with pytest.raises(SafetuneError, match="interrupted at step 2/6"):
        train(recipe, show_progress=False)
    monkeypatch.setattr(SafeGrad, "after_backward", real)
    resumed = train(recipe, resume=True, show_progress=False)
    a, b = load_file(whole.final_dir / "model.safetensors"), load_file(resumed.final_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_safegrad_new_fields_validate():
    config = SafeGradMethod(name="safegrad")
    assert (config.space, config.margin, config.safety_average, config.projection) == ("gradient", 0.0, 0.0, "global")
    from safetune.errors import RecipeError

    with pytest.raises(RecipeError, match=r"method\[safegrad\].space"):
        validate_tree({"model": {"path": "x"}, "data": {"train": {"path": "t.jsonl"}, "safety": {"path": "s.jsonl"}},
                       "method": {"name": "safegrad", "space": "weights"}, "train": {"max_steps": 1}})


# --------------------------------------------------------------------------- safety_data: refusals and borderline
def chat_examples(rows, tokenizer, source):
    from safetune.data import Example, tokenize_all

    examples = [Example(messages=[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}],
                        source=source) for r in rows]
    return tokenize_all(examples, tokenizer, 64)


@pytest.mark.parametrize("family", ["tiny_model_dir", "tiny_qwen2_dir"])
def test_borderline_safety_data_adds_the_borderline_loss_gradient(family, request, tmp_path):
    """s = ∇[L(refusal batch) + w · L(borderline batch)], both batches drawn for this step;
    the default (refusals) ignores data.borderline bit for bit."""
    from safetune.methods.base import MethodContext
    from safetune.modeling import load_model, load_tokenizer
    from safetune.recipe import ModelConfig

    config = ModelConfig(path=str(request.getfixturevalue(family)))
    model, tokenizer = load_model(config), load_tokenizer(config)
    refusals = [{"prompt": f"How do I hurt person {i}?", "response": "I'm sorry, but I can't help with that."}
                for i in range(20)]
    safety, borderline = chat_examples(refusals, tokenizer, "safety"), chat_examples(BORDERLINE, tokenizer, "borderline")
    params = list(model.parameters())

    def gradient(pool, benign, **options):
        ctx = MethodContext(model=model, tokenizer=tokenizer, recipe=None, device=torch.device("cpu"),
                            run_dir=tmp_path, safety=pool, borderline=benign, seed=3, step=5)
        return flat(SafeGrad(SafeGradMethod(name="safegrad", safety_batch_size=4, **options)).safety_gradient(ctx, params))

    s_refusals = gradient(safety, [])
    s_benign = gradient(borderline, [])  # the same draw, from the borderline pool, as its own "safety" loss
    s_both = gradient(safety, borderline, safety_data="refusals_and_borderline", borderline_weight=0.5)
    assert torch.allclose(s_both, s_refusals + 0.5 * s_benign, rtol=1e-4, atol=1e-6)
    assert (s_both - s_refusals).norm() > 0.1 * s_refusals.norm()  # the borderline term is not negligible
    assert torch.equal(gradient(safety, borderline), s_refusals)  # default: data.borderline unused


def test_borderline_safety_data_without_a_source_names_data_borderline(tiny_model_dir, tiny_data, tmp_path):
    method = {"name": "safegrad", "safety_data": "refusals_and_borderline"}
    with pytest.raises(SafetuneError, match=r"data\.borderline"):
        train(validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", method)), show_progress=False)


def test_borderline_safety_data_trains_in_both_spaces(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    drawn = []
    real = SafeGrad.safety_gradient

    def record(self, ctx, params):
        drawn.append(len(ctx.borderline))
        return real(self, ctx, params)

    monkeypatch.setattr(SafeGrad, "safety_gradient", record)
    border = {"path": str(write_jsonl(tmp_path / "borderline.jsonl", BORDERLINE))}
    for space in ["gradient", "update"]:
        method = {"name": "safegrad", "space": space, "safety_data": "refusals_and_borderline", "margin": 0.1}
        tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / space, method, "harmful", max_steps=2)
        tree["data"]["borderline"] = border
        result = train(validate_tree(tree), show_progress=False)
        import json

        summary = json.loads((result.run_dir / "summary.json").read_text())["methods"]["safegrad"]
        assert summary["safety_data"] == "refusals_and_borderline" and summary["space"] == space
    assert drawn == [len(BORDERLINE)] * 4


# --------------------------------------------------------------------------- constraints: separate
def kkt_holds(u, u_new, s1, s2, allowed, tol=1e-4):
    """u_new is the projection of u onto {x : x·s_i <= allowed_i}: feasible, u - u_new = λ1 s1 + λ2 s2
    with λ >= 0, and λ_i > 0 only where constraint i is active (the KKT conditions, which pin the
    unique nearest point of this convex set)."""
    scale = float(u.norm() * max(s1.norm(), s2.norm()))
    assert float(u_new @ s1) <= allowed[0] + tol * scale and float(u_new @ s2) <= allowed[1] + tol * scale
    basis = torch.stack([s1, s2], dim=1).double()
    lambdas = torch.linalg.lstsq(basis, (u - u_new).double()[:, None]).solution.flatten()
    assert torch.allclose(basis @ lambdas, (u - u_new).double(), atol=tol * float(u.norm()))
    for lam, s, bound in zip(lambdas, (s1, s2), allowed):
        assert float(lam) >= -tol
        if float(lam) > tol:
            assert abs(float(u_new @ s) - bound) <= tol * scale  # active


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("applied", [False, True])
def test_separate_constraints_give_the_nearest_step_that_raises_neither_loss(seed, applied):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 2), (4,)]
    v = [torch.randn(s, generator=gen) for s in shapes]
    s1 = [torch.randn(s, generator=gen) for s in shapes]
    s2 = [torch.randn(s, generator=gen) for s in shapes]
    if seed % 3 == 0:  # nearly opposed constraints: both active at once
        s2 = [-0.7 * a + 0.4 * b for a, b in zip(s1, s2)]
    margin = 0.1 if seed % 2 else 0.0
    second = [None, 0.3, 0.0][seed % 3] if seed >= 6 else None  # borderline_margin: its own margin
    margins = (margin, margin if second is None else second)
    sign = 1.0 if applied else -1.0
    u = sign * flat(v)  # the step
    allowed = [-m * float(u.norm() * flat(s).norm()) for m, s in zip(margins, (s1, s2))]
    project_conflicting(v, [s1, s2], applied=applied, margin=margin, second_margin=second)
    kkt_holds(u, sign * flat(v), flat(s1), flat(s2), allowed)


@pytest.mark.parametrize("applied", [False, True])
@pytest.mark.parametrize("mode", ["global", "per_tensor"])
def test_stacked_pair_projects_like_the_separate_tensors(applied, mode):
    """stack_pair (s1, s2 as rows of one buffer per tensor, for one pass per tensor) changes
    how the sums run, not what the projection is; s1 and s2 become views of the buffers."""
    from safetune.methods.safegrad import stack_pair

    gen = torch.Generator().manual_seed(3)
    shapes = [(3, 2), (4,), (2, 2, 2)]
    for trial in range(8):
        v = [torch.randn(s, generator=gen) for s in shapes]
        pair = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
        if trial % 2:  # nearly opposed: both constraints active at once
            pair[1] = [-0.7 * a + 0.4 * b for a, b in zip(*pair)]
        expected = [t.clone() for t in v]
        plain = project_conflicting(expected, pair, mode, applied=applied, margin=0.1, second_margin=0.3)
        stacked = stack_pair(pair)
        assert all(part[i].data_ptr() == stacked[i][j].data_ptr() for j, part in enumerate(pair) for i in range(3))
        fast = project_conflicting(v, pair, mode, applied=applied, margin=0.1, second_margin=0.3, stacked=stacked)
        for got, want in zip(v, expected):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        assert float(fast["projected"]) == float(plain["projected"])


def test_separate_constraints_hold_per_group():
    s1 = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    s2 = [torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])]
    g = [torch.tensor([-1.0, -1.0]), torch.tensor([2.0, 3.0])]  # group 0 conflicts with both, group 1 with none
    project_conflicting(g, [s1, s2], "per_tensor")
    assert torch.allclose(g[0], torch.zeros(2)) and torch.equal(g[1], torch.tensor([2.0, 3.0]))


def test_separate_constraints_need_the_borderline_term():
    from safetune.errors import RecipeError

    with pytest.raises(RecipeError, match=r"method\[safegrad\].*constraints: separate needs safety_data"):
        validate_tree({"model": {"path": "x"}, "data": {"train": {"path": "t.jsonl"}, "safety": {"path": "s.jsonl"}},
                       "method": {"name": "safegrad", "constraints": "separate"}, "train": {"max_steps": 1}})
    with pytest.raises(RecipeError, match=r"method\[safegrad\].*borderline_margin needs constraints: separate"):
        validate_tree({"model": {"path": "x"}, "data": {"train": {"path": "t.jsonl"}, "safety": {"path": "s.jsonl"}},
                       "method": {"name": "safegrad", "borderline_margin": 0.3}, "train": {"max_steps": 1}})


def test_separate_constraints_in_the_loop_keep_both_losses(aligned, tmp_path, monkeypatch):
    """The defining property inside training: after surgery the task gradient agrees with the
    refusal gradient AND with the borderline gradient (g·s_i >= 0), on Llama and Qwen2."""
    records = []
    real = SafeGrad.after_backward

    def after_backward(self, ctx):
        logs = real(self, ctx)
        records.append({"g": flat([p.grad for p in self.params]), "s": [flat(part) for part in self.cached]})
        return logs

    monkeypatch.setattr(SafeGrad, "after_backward", after_backward)
    model_dir, data = aligned
    method = {"name": "safegrad", "safety_data": "refusals_and_borderline", "constraints": "separate"}
    tree = recipe_tree(model_dir, data, tmp_path / "separate", method, "harmful", max_steps=5)
    tree["data"]["borderline"] = {"path": str(write_jsonl(tmp_path / "borderline.jsonl", BORDERLINE))}
    result = train(validate_tree(tree), show_progress=False)
    assert len(records) == 5
    for record in records:
        for s in record["s"]:
            assert float(record["g"] @ s) >= -1e-4 * float(record["g"].norm() * s.norm())
    logs = _metrics(result.run_dir)
    assert any(r.get("safegrad/projected") == 1.0 for r in logs), "nothing to project: weak test"
    import json

    summary = json.loads((result.run_dir / "summary.json").read_text())["methods"]["safegrad"]
    assert summary["constraints"] == "separate"


@pytest.mark.parametrize("family", ["tiny_model_dir", "tiny_qwen2_dir"])
def test_safety_tokens_is_the_loss_of_the_first_k_response_tokens(family, request, tmp_path):
    """`safety_tokens: k` cuts each safety example after its first k response tokens: the
    safety gradient equals that of the full examples with every later label masked, the
    prompt is untouched, and exactly k tokens are trained per example."""
    from safetune.data import IGNORE_INDEX
    from safetune.methods.base import MethodContext
    from safetune.methods.safety_signal import first_response_tokens, refusal_ce
    from safetune.modeling import load_model, load_tokenizer
    from safetune.recipe import ModelConfig

    config = ModelConfig(path=str(request.getfixturevalue(family)))
    model, tokenizer = load_model(config), load_tokenizer(config)
    refusals = [{"prompt": f"How do I hurt person {i}?", "response": "I'm sorry, but I can't help with that. " * (1 + i % 3)}
                for i in range(20)]
    safety = chat_examples(refusals, tokenizer, "safety")
    params = list(model.parameters())
    k = 3

    cut = first_response_tokens(safety, k)
    for whole, part in zip(safety, cut):
        start = next(i for i, label in enumerate(whole.labels) if label != IGNORE_INDEX)
        assert part.input_ids == whole.input_ids[:start + k] and part.trained_tokens == k
        assert whole.trained_tokens > k  # the cut removes something

    ctx = MethodContext(model=model, tokenizer=tokenizer, recipe=None, device=torch.device("cpu"),
                        run_dir=tmp_path, safety=safety, borderline=[], seed=3, step=5)
    s_first = flat(SafeGrad(SafeGradMethod(name="safegrad", safety_batch_size=4, safety_tokens=k)).safety_gradient(ctx, params))

    masked = []
    for example in safety_batch(ctx, 4, draw=5):  # the same draw, later labels masked by hand
        start = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
        labels = example.labels[:start + k] + [IGNORE_INDEX] * (len(example.labels) - start - k)
        masked.append(type(example)(messages=example.messages, input_ids=example.input_ids, labels=labels))
    grads = torch.autograd.grad(refusal_ce(model, ctx.batch_to_device(masked)), params, allow_unused=True)
    s_masked = flat([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    assert torch.allclose(s_first, s_masked, rtol=1e-4, atol=1e-6)
    s_whole = flat(SafeGrad(SafeGradMethod(name="safegrad", safety_batch_size=4)).safety_gradient(ctx, params))
    assert (s_first - s_whole).norm() > 0.05 * s_whole.norm()


@pytest.mark.parametrize("kind", ["refusal_ce", "kl_to_base"])
@pytest.mark.parametrize("family", ["tiny_model_dir", "tiny_qwen2_dir"])
def test_a_large_safety_batch_runs_in_length_sorted_micro_batches_with_the_same_gradient(family, kind, request,
                                                                                         tmp_path, monkeypatch):
    """More rows than the micro-batch (a method's `safety_micro_batch`): micro-batches sorted by
    length, each weighted by its share of the trained tokens, give the loss and gradient of the
    one padded batch."""
    import copy

    from safetune.methods import safety_signal
    from safetune.methods.base import MethodContext
    from safetune.modeling import load_model, load_tokenizer
    from safetune.recipe import ModelConfig

    config = ModelConfig(path=str(request.getfixturevalue(family)))
    model, tokenizer = load_model(config), load_tokenizer(config)
    reference = copy.deepcopy(model)
    with torch.no_grad():  # the model drifts from the reference, so kl_to_base has a gradient
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    rows = [{"prompt": "How do I hurt " + "a very distant person " * (i % 5) + f"number {i}?",
             "response": "I'm sorry, but I can't help with that." * (1 + i % 2)} for i in range(11)]
    examples = chat_examples(rows, tokenizer, "safety")
    ctx = MethodContext(model=model, tokenizer=tokenizer, recipe=None, device=torch.device("cpu"),
                        run_dir=tmp_path, safety=examples, borderline=[], seed=0, reference_model=reference)
    params = list(model.parameters())
    passes = []
    real = safety_signal.safety_loss
    monkeypatch.setattr(safety_signal, "safety_loss", lambda c, batch, k: passes.append(batch["input_ids"].shape)
                        or real(c, batch, k))
    split = safety_signal.batch_safety_loss(ctx, examples, kind, micro_batch=4)  # 11 rows: 4, 4, 3
    assert len(passes) == 3 and [shape[0] for shape in passes] == [4, 4, 3]
    assert passes[0][1] < passes[-1][1]  # the short rows are no longer padded to the longest
    whole = real(ctx, ctx.batch_to_device(examples), kind)
    assert torch.allclose(split, whole, rtol=1e-5)
    g_split = flat(loss_gradients(split, params))
    g_whole = flat(loss_gradients(whole, params))
    assert torch.allclose(g_split, g_whole, rtol=1e-4, atol=1e-7)
    # the recipe's safety_micro_batch is what the method's safety objective splits by
    for micro_batch, expected in ((4, [4, 4, 3]), (16, [11])):
        passes.clear()
        config = SafeGradMethod(name="safegrad", safety_batch_size=11, safety_micro_batch=micro_batch, safety_loss=kind)
        safety_signal.safety_objective(ctx, config, draw=0, method="safegrad")
        assert [shape[0] for shape in passes] == expected


@pytest.mark.parametrize("space", ["gradient", "update"])
def test_without_stale_projection_only_the_step_that_computed_s_is_projected(space):
    """stale_projection: false: the steps that reuse a cached s are left exactly as they were
    (bit for bit), and the step with a fresh s is projected (its step does not raise L_s)."""
    method = SafeGrad(SafeGradMethod(name="safegrad", safety_every=3, stale_projection=False, space=space))
    weight = torch.nn.Parameter(torch.zeros(2))
    s = torch.tensor([1.0, 0.0])
    method.safety_gradient = lambda ctx, params: [s.clone()]
    for step in range(6):
        ctx = SimpleNamespace(step=step, broadcast_tensors=lambda t: None, model=None,
                              trainable_parameters=lambda: [("w", weight)])
        task = torch.tensor([-1.0, 0.5])  # the step -g raises L_s along s: a conflict
        weight.grad = task.clone()
        before = weight.detach().clone()
        method.after_backward(ctx)
        method.before_step(ctx)
        with torch.no_grad():
            weight -= 0.1 * weight.grad  # the optimizer
        method.after_step(ctx)
        change = weight.detach() - before
        if step % 3 == 0:  # fresh s: the applied change does not raise L_s (d·s ≤ 0)
            assert float(change @ s) <= 1e-7, (step, change)
        else:  # cached s: untouched, exactly the unprojected step
            assert torch.equal(weight.grad, task) and torch.equal(change, (before - 0.1 * task) - before), step
    assert method.steps == 2 and method.recomputed == 2
