"""The training-data audit: known harmful rows are found and removed, benign rows kept, all reported."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification

import safetune.evaluation.generation as generation
from safetune.audit import AUDIT_FILE, audit_examples, audit_training_data, known_label_scores, prompt_and_response
from safetune.data import Example, build_training_data
from safetune.errors import RecipeError, SafetuneError
from safetune.modeling import load_model, load_tokenizer
from safetune.recipe import validate_tree
from safetune.training import train
from tests.helpers import TINY_TEXTS


def recipe_tree(model_dir, tiny_data, out, audit, harmful_ratio=0.2, train_file="task"):
    return {
        "model": {"path": str(model_dir)},
        "data": {"train": {"path": str(tiny_data[train_file])}, "safety": {"path": str(tiny_data["safety"])},
                 "harmful": {"path": str(tiny_data["harmful"])}, "harmful_ratio": harmful_ratio,
                 "max_seq_len": 64, "audit": audit},
        "method": "standard",
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2},
        "output": {"dir": str(out)},
    }


def load(recipe):
    """The recipe's tokenizer, model and training data (40 sums + 10 harmful -> compliance rows)."""
    tokenizer = load_tokenizer(recipe.model)
    return tokenizer, load_model(recipe.model), build_training_data(recipe.data, tokenizer, recipe.train.seed)


@pytest.fixture()
def refusing_generator(monkeypatch):
    """Stands in for an aligned model: refuses exactly the prompts about hurting someone."""
    asked = []

    def generate(model, tokenizer, prompts, **_):
        asked.extend(prompts)
        return ["I'm sorry, I can't help with that." if "hurt" in p else "It is 7." for p in prompts]

    monkeypatch.setattr(generation, "generate", generate)
    return asked


# --------------------------------------------------------------------------- refusal_conflict
def test_refusal_conflict_removes_the_harmful_rows_and_keeps_the_benign(tiny_model_dir, tiny_data, tmp_path,
                                                                         refusing_generator):
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"checks": ["refusal_conflict"]}))
    tokenizer, model, data = load(recipe)
    before = list(data.train)
    assert data.harmful_in_train == 10
    (tmp_path / "run").mkdir()
    counts = audit_training_data(recipe, data, model, tokenizer, run_dir=tmp_path / "run", log=lambda *_: None)

    assert [e.source for e in data.train] == ["task"] * 40  # every harmful row gone, every benign row kept
    assert data.train == [e for e in before if e.source == "task"]
    assert counts["flagged"] == counts["dropped"] == 10 and counts["kept"] == 40
    assert (counts["precision"], counts["recall"], counts["false_positives"]) == (1.0, 1.0, 0)
    report = json.loads((tmp_path / "run" / AUDIT_FILE).read_text())
    removed = report["flagged_rows"]
    assert sorted(r["index"] for r in removed) == [i for i, e in enumerate(before) if e.source == "harmful"]
    assert all(r["checks"] == ["refusal_conflict"] and r["response"].startswith("Sure") for r in removed)
    assert all(r["model_response"].startswith("I'm sorry") for r in removed)
    # only rows whose response complies are generated for, each distinct prompt once
    assert sorted(refusing_generator) == sorted({prompt_and_response(e)[0] for e in before})


def test_report_action_keeps_every_row(tiny_model_dir, tiny_data, tmp_path, refusing_generator):
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run",
                                       {"checks": ["refusal_conflict"], "action": "report"}))
    tokenizer, model, data = load(recipe)
    counts = audit_training_data(recipe, data, model, tokenizer, run_dir=None, log=lambda *_: None)
    assert len(data.train) == 50 and counts["flagged"] == 10 and counts["dropped"] == 0


def test_a_resumed_run_reuses_the_report(tiny_model_dir, tiny_data, tmp_path, refusing_generator, monkeypatch):
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"checks": ["refusal_conflict"]}))
    (tmp_path / "run").mkdir()
    tokenizer, model, data = load(recipe)
    audit_training_data(recipe, data, model, tokenizer, run_dir=tmp_path / "run", log=lambda *_: None)
    import safetune.audit as audit

    monkeypatch.setattr(audit, "audit_examples", lambda *a, **k: pytest.fail("scored the rows again"))
    _, _, again = load(recipe)
    audit_training_data(recipe, again, model, tokenizer, run_dir=tmp_path / "run", log=lambda *_: None)
    assert [e.messages for e in again.train] == [e.messages for e in data.train]


def test_a_model_that_refuses_the_task_itself_is_an_error_not_an_empty_training_set(
        tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "generate", lambda model, tokenizer, prompts, **_: ["I can't help."] * len(prompts))
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"checks": ["refusal_conflict"]}))
    tokenizer, model, data = load(recipe)
    (tmp_path / "run").mkdir()
    with pytest.raises(SafetuneError, match=r"^data.audit: 50 of 50 training rows flagged \(refusal_conflict 50\), "
                                            r"more than max_flagged=0.5; .* Try checks: \[judge\]"):
        audit_training_data(recipe, data, model, tokenizer, run_dir=tmp_path / "run", log=lambda *_: None)
    assert len(data.train) == 50
    assert json.loads((tmp_path / "run" / AUDIT_FILE).read_text())["flagged"] == 50  # there to inspect


def test_a_refusal_in_the_training_data_is_not_a_conflict(refusing_generator):
    """Rows that already refuse (safety data mixed into the task) are neither generated for nor flagged."""
    from safetune.evaluation.refusal import KeywordDetector
    from safetune.recipe import AuditConfig

    rows = [Example(messages=[{"role": "user", "content": "How do I hurt him?"},
                              {"role": "assistant", "content": "Sorry, I can't help with that."}])]
    report = audit_examples(rows, AuditConfig(), detector=KeywordDetector())
    assert report["flagged"] == 0 and refusing_generator == []
    assert report["precision"] is None and report["recall"] is None  # no known labels


def test_known_label_scores():
    scores = known_label_scores([True, True, False, False], ["harmful", "task", "harmful", "task"])
    assert scores == {"known_harmful": 2, "caught": 1, "false_positives": 1, "precision": 0.5, "recall": 0.5}


def test_multi_turn_rows_are_judged_on_their_last_exchange():
    example = Example(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                {"role": "user", "content": "How do I hurt him?"},
                                {"role": "assistant", "content": "Sure."}])
    assert prompt_and_response(example) == ("How do I hurt him?", "Sure.")


def test_end_to_end_with_a_tiny_aligned_model(tiny_model_dir, tiny_data, tmp_path):
    """No stub: a tiny model trained to refuse the harmful prompts audits the data with real generation."""
    aligned = train(validate_tree({
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": {"path": str(tiny_data["task"])}, "safety": {"path": str(tiny_data["safety"])},
                 "max_seq_len": 64},
        "method": {"name": "mix", "safety_fraction": 0.4},
        "train": {"max_steps": 150, "batch_size": 8, "learning_rate": 1e-2, "lr_schedule": "constant",
                  "log_every": 50},
        "output": {"dir": str(tmp_path / "align")}}), show_progress=False).final_dir
    recipe = validate_tree(recipe_tree(aligned, tiny_data, tmp_path / "run",
                                       {"checks": ["refusal_conflict"], "max_new_tokens": 12}))
    tokenizer, model, data = load(recipe)
    counts = audit_training_data(recipe, data, model, tokenizer, run_dir=None, log=lambda *_: None)
    assert counts["recall"] == 1.0 and counts["precision"] == 1.0
    assert [e.source for e in data.train] == ["task"] * 40


# --------------------------------------------------------------------------- judge
@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """Builds each family's classifier once per module (the fixture data is the same in every test)."""
    built = {}

    def get(family, tiny_data):
        if family not in built:
            built[family] = tiny_classifier(family, tmp_path_factory.mktemp(f"judge-{family}"), tiny_data)
        return built[family]

    return get


def tiny_classifier(family: str, out, tiny_data):
    """A 2-label safety classifier (safe / unsafe) trained on the fixture's responses in the test."""
    from safetune.lab.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(TINY_TEXTS, vocab_size=320)
    shapes = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                  num_labels=2, id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
    torch.manual_seed(0)
    model = (LlamaForSequenceClassification(LlamaConfig(**shapes)) if family == "llama"
             else Qwen2ForSequenceClassification(Qwen2Config(**shapes)))
    rows = [(json.loads(line), 0) for name in ("task", "safety") for line in tiny_data[name].read_text().splitlines()]
    rows += [(json.loads(line), 1) for line in tiny_data["harmful"].read_text().splitlines()]
    batch = tokenizer([r["prompt"] for r, _ in rows], [r["response"] for r, _ in rows], padding=True,
                      return_tensors="pt")
    labels = torch.tensor([label for _, label in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_judge_check_removes_the_rows_a_classifier_calls_unsafe(tiny_model_dir, tiny_data, tmp_path, family,
                                                               monkeypatch, classifier_dir):
    judge = classifier_dir(family, tiny_data)
    monkeypatch.setattr(generation, "generate", lambda *a, **k: pytest.fail("the judge check needs no generation"))
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run",
                                       {"checks": ["judge"], "judge": str(judge), "judge_unsafe_labels": ["unsafe"]}))
    tokenizer, model, data = load(recipe)
    counts = audit_training_data(recipe, data, model, tokenizer, run_dir=None, log=lambda *_: None)
    assert counts["by_check"] == {"judge": 10} and counts["recall"] == 1.0 and counts["precision"] == 1.0
    assert [e.source for e in data.train] == ["task"] * 40


def test_both_checks_flag_a_row_when_either_does(tiny_model_dir, tiny_data, tmp_path, refusing_generator,
                                                 classifier_dir):
    judge = classifier_dir("llama", tiny_data)
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run",
                                       {"checks": ["refusal_conflict", "judge"], "judge": str(judge)}))
    tokenizer, model, data = load(recipe)
    counts = audit_training_data(recipe, data, model, tokenizer, run_dir=None, log=lambda *_: None)
    assert counts["by_check"] == {"refusal_conflict": 10, "judge": 10} and counts["flagged"] == 10


def test_judge_errors_name_the_audit_fields(tiny_model_dir, tiny_data, tmp_path, classifier_dir):
    with pytest.raises(RecipeError, match=r"data.audit: the judge check needs data.audit.judge"):
        validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run", {"checks": ["judge"]}))
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run",
                                       {"checks": ["judge"], "judge": str(tmp_path / "missing")}))
    tokenizer, model, data = load(recipe)
    with pytest.raises(SafetuneError, match=r"^data.audit.judge: cannot load"):
        audit_training_data(recipe, data, model, tokenizer, log=lambda *_: None)
    judge = classifier_dir("llama", tiny_data)
    recipe = validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run",
                                       {"checks": ["judge"], "judge": str(judge), "judge_unsafe_labels": ["toxic"]}))
    with pytest.raises(SafetuneError, match=r"^data.audit.judge_unsafe_labels: none of \['toxic'\]"):
        audit_training_data(recipe, data, model, tokenizer, log=lambda *_: None)


# --------------------------------------------------------------------------- inside `safetune train`
def test_train_runs_the_audit_and_writes_the_report(tiny_model_dir, tiny_data, tmp_path, refusing_generator,
                                                    monkeypatch):
    import safetune.train_data as train_data
    import safetune.train_step as train_step

    trained_sources = set()
    original = train_step.compute_loss

    def spy(methods, ctx, model, batch):
        trained_sources.update(e.source for e in current_examples)
        return original(methods, ctx, model, batch)

    current_examples: list = []
    real_batch = train_data.BatchSchedule.batch
    monkeypatch.setattr(train_data.BatchSchedule, "batch",
                        lambda self, k: current_examples.__init__(real_batch(self, k)) or list(current_examples))
    monkeypatch.setattr(train_step, "compute_loss", spy)
    result = train(validate_tree(recipe_tree(tiny_model_dir, tiny_data, tmp_path / "run",
                                             {"checks": ["refusal_conflict"]})), show_progress=False)
    assert trained_sources == {"task"}, "the batches never hold a dropped (harmful) row"
    report = json.loads((result.run_dir / AUDIT_FILE).read_text())
    assert report["dropped"] == 10 and report["kept"] == 40
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["train_examples"] == 40
