"""Token-level weighting + dual objective: its defining properties on tiny Llama and Qwen2 models."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

import safetune.methods.token_weighting as tw
from safetune.data import build_training_data
from safetune.errors import SafetuneError
from safetune.lab.tokenizer import train_tokenizer
from safetune.methods import MethodContext, build_methods
from safetune.loss import next_token_logprobs
from safetune.distributed import Distributed
from safetune.methods.safety_signal import first_response_tokens, sequence_logprob
from safetune.modeling import BaseWithoutAdapters, load_model, load_tokenizer
from safetune.recipe import validate_tree
from safetune.train_setup import build_model
from safetune.training import train
from tests.helpers import TINY_TEXTS
from tests.helpers import write_jsonl
from tests.test_methods_sap import recipe_tree


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """A random tiny sequence classifier with the labels of the lab's one."""
    out = tmp_path_factory.mktemp("classifier")
    tokenizer = train_tokenizer(TINY_TEXTS, vocab_size=320)
    torch.manual_seed(0)
    labels = ["answer", "refusal", "unsafe"]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        num_labels=3, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def setup_method(model_dir, tiny_data, tmp_path, harmful_ratio=0.0, borderline=None, **fields):
    tree = recipe_tree(model_dir, tiny_data, tmp_path / "run", {"name": "token_weighting", **fields})
    tree["data"]["harmful_ratio"] = harmful_ratio
    if borderline:
        tree["data"]["borderline"] = {"path": str(borderline)}
    recipe = validate_tree(tree)
    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model)
    (method,) = build_methods(recipe.method)
    reference = load_model(recipe.model).eval().requires_grad_(False) if method.needs_reference_model else None
    data = build_training_data(recipe.data, tokenizer, seed=0)
    ctx = MethodContext(model=model, tokenizer=tokenizer, recipe=recipe, device=torch.device("cpu"), run_dir=tmp_path,
                        safety=data.safety, borderline=data.borderline, train_examples=data.train, seed=0,
                        reference_model=reference,
                        log=lambda *_: None)
    method.setup(ctx)
    return ctx, method, data


@pytest.mark.parametrize("scorer", ["none", "reference"])
def test_unit_weights_and_alpha_zero_is_the_standard_cross_entropy(model_dir, tiny_data, tmp_path, scorer):
    # the reference scorer gives exactly 1 everywhere while the model equals the aligned one
    ctx, method, data = setup_method(model_dir, tiny_data, tmp_path, scorer=scorer, alpha=0.0)
    batch = ctx.batch_to_device(data.train[:4])
    ours = method.loss(ctx, batch)
    assert torch.allclose(ours, ctx.model(**batch).loss, rtol=1e-6, atol=0)
    assert method.summary()["mean_weight"] == 1.0 and method.summary()["share_down_weighted"] == 0.0


def test_token_the_reference_finds_unlikely_gets_a_lower_weight(model_dir, tiny_data, tmp_path):
    ctx, method, data = setup_method(model_dir, tiny_data, tmp_path, scorer="reference", alpha=0.0, gamma=1.0,
                                     min_weight=0.05)
    example = data.train[0]
    batch = ctx.batch_to_device([example])
    positions = (batch["labels"][0, 1:] != -100).nonzero().flatten().tolist()
    boosted = example.input_ids[positions[0] + 1]  # the first response token
    # the fine-tuned model now finds `boosted` far likelier than the aligned reference does
    handle = ctx.model.lm_head.register_forward_hook(
        lambda _m, _i, out: out + 8.0 * torch.nn.functional.one_hot(torch.tensor(boosted), out.shape[-1]))
    log_p, mask = next_token_logprobs(ctx.model, batch)  # one example: its columns are `positions`
    assert mask.all() and mask.shape[1] == len(positions)
    weights = dict(zip(positions, method.weights(ctx, batch, log_p, mask)[0].tolist()))
    handle.remove()
    others = [t for t in positions if example.input_ids[t + 1] != boosted]
    assert others, "the example needs a second, different response token"
    assert weights[positions[0]] < 0.5
    assert all(weights[t] == 1.0 for t in others)  # likelier under the reference: full weight
    assert min(weights.values()) >= 0.05


def test_npo_lowers_the_rejected_completions_probability(model_dir, tiny_data, tmp_path):
    ctx, method, _ = setup_method(model_dir, tiny_data, tmp_path, scorer="none", alpha=1.0, npo_weight=1.0)
    batch = ctx.batch_to_device(method.harmful[:4])
    with torch.no_grad():
        before = sequence_logprob(ctx.model, batch)
    loss = tw.npo_loss(ctx.model, ctx.reference_model, batch, beta=0.5)
    assert float(loss.detach()) == pytest.approx(2 / 0.5 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)  # π_θ = π_ref
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(0.1 * g)
        after = sequence_logprob(ctx.model, batch)
    assert bool((after < before).all())


def test_loss_adds_alpha_times_refusal_and_npo(tiny_model_dir, tiny_data, tmp_path):
    ctx, method, data = setup_method(tiny_model_dir, tiny_data, tmp_path, scorer="none", alpha=0.5, npo_weight=2.0)
    batch = ctx.batch_to_device(data.train[:4])
    ctx.step = 3
    total = method.loss(ctx, batch)
    draw = 3 * 1024
    safety = ctx.model(**ctx.batch_to_device(tw.safety_batch(ctx, 8, draw))).loss
    harmful = ctx.batch_to_device(tw.draw_examples(method.harmful, 8, ctx.seed + 1, draw))
    npo = tw.npo_loss(ctx.model, ctx.reference_model, harmful, 0.5)
    assert torch.allclose(total, ctx.model(**batch).loss + 0.5 * (safety + 2.0 * npo), rtol=1e-5)


def test_safety_terms_are_backpropagated_before_the_task_forward_with_the_same_gradient(tiny_model_dir, tiny_data,
                                                                                        tmp_path, monkeypatch):
    """With ctx.backward the refusal and NPO graphs are gone before the task's forward pass
    (they never take memory together), and the gradient is the one of the summed loss."""
    ctx, method, data = setup_method(tiny_model_dir, tiny_data, tmp_path, harmful_ratio=0.5, scorer="reference",
                                     alpha=0.5, npo_weight=2.0)
    batch = ctx.batch_to_device(data.train[:4])
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    ctx.step = 2
    combined = method.loss(ctx, batch)
    expected = torch.autograd.grad(combined, params)

    events = []
    ctx.backward = lambda term: (events.append("backward"), term.backward())
    original = tw.next_token_logprobs

    def spy(model, batch):
        if model is not ctx.reference_model:
            events.append("task forward")
        return original(model, batch)

    monkeypatch.setattr(tw, "next_token_logprobs", spy)
    method.micro = (None, 0)  # draw the same safety batch again
    separate = method.loss(ctx, batch)
    separate.backward()
    assert events == ["backward", "backward", "task forward"]  # refusals, NPO, then the task
    assert torch.allclose(separate, combined.detach(), rtol=1e-5)
    for p, g in zip(params, expected):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)


def test_safety_tokens_cut_the_refusal_objective_to_the_first_answer_tokens(tiny_model_dir, tiny_data, tmp_path):
    ctx, method, data = setup_method(tiny_model_dir, tiny_data, tmp_path, scorer="none", alpha=0.5, safety_tokens=2)
    batch = ctx.batch_to_device(data.train[:4])
    total = method.loss(ctx, batch)
    refusals = tw.safety_batch(ctx, 8, 0)
    cut = first_response_tokens(refusals, 2)
    assert all(sum(label != -100 for label in e.labels) <= 2 for e in cut)
    assert any(sum(label != -100 for label in e.labels) > 2 for e in refusals)
    safety = ctx.model(**ctx.batch_to_device(cut)).loss
    assert torch.allclose(total, ctx.model(**batch).loss + 0.5 * safety, rtol=1e-5)


def test_reference_under_lora_is_the_base_with_the_adapters_off(model_dir, tiny_data, tmp_path):
    """Under LoRA the frozen reference is the base itself (no second copy), whatever the adapters have learned."""
    tree = recipe_tree(model_dir, tiny_data, tmp_path / "run", {"name": "token_weighting"})
    tree["model"]["lora"] = {"r": 4, "alpha": 8}
    recipe = validate_tree(tree)
    model, reference = build_model(recipe, Distributed(), torch.device("cpu"), wants_reference=True)
    assert isinstance(reference, BaseWithoutAdapters) and reference.module is model
    original = load_model(recipe.model).eval()
    batch = {"input_ids": torch.tensor([[5, 9, 17, 33, 2, 8]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)  # the adapters have learned something
        model.train()
        assert not torch.allclose(model(**batch).logits, original(**batch).logits)
        assert torch.equal(reference(**batch).logits, original(**batch).logits)
    assert model.training  # the call left the model as it found it: training, adapters on
    assert not torch.allclose(model(**batch).logits, original(**batch).logits)
    ref_log_p, _ = next_token_logprobs(reference, batch | {"labels": batch["input_ids"]})
    assert not ref_log_p.requires_grad


def test_borderline_answers_join_the_safety_objective(tiny_model_dir, tiny_data, tmp_path):
    """safety_data: refusals_and_borderline adds w x CE(benign look-alike -> normal answer) to the alpha term."""
    borderline = write_jsonl(tmp_path / "borderline.jsonl", [
        {"prompt": f"How do I kill a Python process {i}?", "response": "Use the kill command."} for i in range(6)])
    totals = {}
    for safety_data in ("refusals", "refusals_and_borderline"):
        ctx, method, data = setup_method(tiny_model_dir, tiny_data, tmp_path, borderline=borderline, scorer="none",
                                         alpha=0.5, safety_data=safety_data, borderline_weight=2.0)
        ctx.step = 3
        totals[safety_data] = method.loss(ctx, ctx.batch_to_device(data.train[:4]))
    benign = ctx.model(**ctx.batch_to_device(tw.borderline_batch(ctx, 8, 3 * 1024, "token_weighting"))).loss
    difference = totals["refusals_and_borderline"] - totals["refusals"]
    assert torch.allclose(difference, 0.5 * 2.0 * benign, rtol=1e-5)
    with pytest.raises(Exception, match="needs a data.borderline source"):
        setup_method(tiny_model_dir, tiny_data, tmp_path, safety_data="refusals_and_borderline")


def test_classifier_scores_computed_once_and_reused_from_the_cache(tiny_model_dir, tiny_data, tmp_path,
                                                                   classifier_dir, monkeypatch):
    fields = {"scorer": "classifier", "classifier": str(classifier_dir), "alpha": 0.0}
    calls = []
    real = tw.unsafe_scores
    monkeypatch.setattr(tw, "unsafe_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    ctx, first, data = setup_method(tiny_model_dir, tiny_data, tmp_path, harmful_ratio=0.2, **fields)
    assert len(calls) == 1 and len(list(tmp_path.glob("token_scores-*.json"))) == 1
    assert set(first.scores) == {tuple(e.input_ids) for e in data.train}
    ctx, second, _ = setup_method(tiny_model_dir, tiny_data, tmp_path, harmful_ratio=0.2, **fields)
    assert len(calls) == 1, "scores recomputed although cached"
    assert second.scores == first.scores
    # a change of data changes the fingerprint: scored again
    setup_method(tiny_model_dir, tiny_data, tmp_path, harmful_ratio=0.1, **fields)
    assert len(calls) == 2


class StubClassifier(torch.nn.Module):
    """p(unsafe) high exactly when the text pair contains one of `step_ids` (the start of "Step 1")."""

    def __init__(self, step_ids):
        super().__init__()
        self.step_ids = step_ids
        self.config = type("C", (), {"id2label": {0: "answer", 1: "unsafe"}, "num_labels": 2})()

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, **_):
        hit = torch.isin(input_ids, torch.tensor(self.step_ids)).any(-1).float()
        return type("Out", (), {"logits": torch.stack([4 - 8 * hit, 8 * hit - 4], -1)})()


def test_classifier_down_weights_the_unsafe_segment(tiny_model_dir, tiny_data, tmp_path):
    ctx, method, data = setup_method(tiny_model_dir, tiny_data, tmp_path, scorer="none", alpha=0.0)
    harmful = [e for e in build_training_data(ctx.recipe.data.model_copy(update={"harmful_ratio": 0.2}),
                                                ctx.tokenizer, 0).train if e.source == "harmful"][0]
    step_ids = ctx.tokenizer("Step", add_special_tokens=False)["input_ids"][:1]
    assert step_ids[0] not in data.train[0].input_ids and harmful.input_ids.count(step_ids[0]) == 1
    scores = tw.unsafe_scores([harmful, data.train[0]], ctx.tokenizer, StubClassifier(step_ids), ctx.tokenizer,
                              unsafe=1, segment=1)
    risky, benign = scores
    assert all(s < 0.1 for s in benign)
    # "Sure, here is how." is scored safe, everything from "Step" on unsafe
    assert risky[0] < 0.1 and risky[-1] > 0.9
    assert risky == sorted(risky), "once the prefix is unsafe, the rest of the response is too"


def test_classifier_label_must_exist(tiny_model_dir, tiny_data, tmp_path, classifier_dir):
    with pytest.raises(SafetuneError, match=r"method\[token_weighting\].unsafe_label: 'harmful' is not a label"):
        setup_method(tiny_model_dir, tiny_data, tmp_path, scorer="classifier", classifier=str(classifier_dir),
                     unsafe_label="harmful", alpha=0.0)


def test_token_weighting_under_lora_with_freeze_and_sap(model_dir, tiny_data, tmp_path):
    tree = recipe_tree(model_dir, tiny_data, tmp_path / "run",
                       [{"name": "token_weighting", "npo_weight": 1.0}, {"name": "freeze", "layers": [0]},
                        {"name": "sap", "layers": [1]}], learning_rate=5e-2)
    tree["model"]["lora"] = {"r": 4, "alpha": 8}
    recipe = validate_tree(tree)
    assert [m.name for m in build_methods(recipe.method)] == ["freeze", "sap", "token_weighting"]
    result = train(recipe, show_progress=False)
    after = load_file(result.final_dir / "adapter_model.safetensors")
    layer0_b = [k for k in after if ".layers.0." in k and "lora_B" in k]
    assert layer0_b and all(float(after[k].abs().sum()) == 0.0 for k in layer0_b)
    summary = json.loads((result.run_dir / "summary.json").read_text())["methods"]
    assert summary["sap"]["probes_trained"] == 4
    weights = summary["token_weighting"]
    assert weights["task_tokens"] > 0 and 0 < weights["mean_weight"] <= 1.0 and 0 <= weights["share_down_weighted"] <= 1
    assert "token_weighting/mean_weight" in (result.run_dir / "metrics.jsonl").read_text()


def test_recipe_validation(tiny_model_dir, tiny_data, tmp_path):
    from safetune.errors import RecipeError

    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "token_weighting", "npo_weight": 1.0})
    del tree["data"]["harmful"]
    with pytest.raises(RecipeError, match="method 'token_weighting' needs a data.harmful source"):
        validate_tree(tree)
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "token_weighting", "scorer": "reward"})
    with pytest.raises(RecipeError, match=r"method\[token_weighting\].scorer"):
        validate_tree(tree)
    tree = recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"name": "token_weighting", "alpha": 0})
    del tree["data"]["safety"]
    validate_tree(tree)  # no safety objective: no safety data needed
