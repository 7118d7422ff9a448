"""The baseline is computed once per model + eval settings and reused across runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from safetune.evaluation import runner as runner_module
from safetune.evaluation.baseline_cache import FileHashes, baseline_key, baselines_dir
from safetune.evaluation.runner import current_baseline, load_baseline, run_baseline
from safetune.modeling import load_model, load_tokenizer
from safetune.recipe import validate_tree
from safetune.train_eval import ensure_baseline
from tests.test_eval_runner import eval_data, recipe_tree  # noqa: F401 (eval_data is a fixture)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SAFETUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def recipe(model_dir: Path, data: Path, output: Path, **eval_changes):
    tree = recipe_tree(model_dir, data, output)
    tree["eval"].update(eval_changes)
    return validate_tree(tree)


def no_evaluation(*args, **kwargs):
    raise AssertionError("the baseline was evaluated again instead of reused")


def test_second_run_reuses_the_first_runs_baseline(tmp_path, tiny_model_dir, eval_data, monkeypatch, capsys):
    first = run_baseline(recipe(tiny_model_dir, eval_data, tmp_path / "a"), progress=False)
    assert first["baseline_cache"]["reused"] is False
    [entry] = baselines_dir().iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["key.json", "outputs.jsonl", "safety_report.json",
                                                       "safety_report.md"]

    monkeypatch.setattr(runner_module, "evaluate_model", no_evaluation)
    monkeypatch.setattr(runner_module, "load_model", no_evaluation)
    other = recipe(tiny_model_dir, eval_data, tmp_path / "b").model_copy(update={"name": "another-run"})
    second = run_baseline(other, progress=True)
    assert second["metrics"] == first["metrics"]
    assert second["baseline_cache"] == {"key": entry.name, "reused": True, "entry": str(entry)}
    assert load_baseline(tmp_path / "b")["baseline_cache"]["reused"] is True
    assert (tmp_path / "b" / "baseline" / "outputs.jsonl").read_text() == \
        (tmp_path / "a" / "baseline" / "outputs.jsonl").read_text()
    assert "reused key" in (tmp_path / "b" / "baseline" / "safety_report.md").read_text()
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("baseline: reused the evaluation of")


def test_the_trainer_reuses_it_too(tmp_path, tiny_model_dir, eval_data, monkeypatch):
    run_baseline(recipe(tiny_model_dir, eval_data, tmp_path / "a"), progress=False)
    later = recipe(tiny_model_dir, eval_data, tmp_path / "b")
    model, tokenizer = load_model(later.model), load_tokenizer(later.model)
    monkeypatch.setattr(runner_module, "evaluate_model", no_evaluation)
    ensure_baseline(later, tmp_path / "b", model, tokenizer, show_progress=False)
    assert load_baseline(tmp_path / "b")["baseline_cache"]["reused"] is True


def test_a_run_dirs_baseline_of_another_model_is_not_reused(tmp_path, tiny_model_dir, eval_data, capsys):
    """output.overwrite keeps baseline/: a run on a changed model must not be measured against it."""
    run_baseline(recipe(tiny_model_dir, eval_data, tmp_path / "a"), progress=False)
    stale = load_baseline(tmp_path / "a")
    changed = tmp_path / "changed-model"
    shutil.copytree(tiny_model_dir, changed)
    weights = load_file(changed / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] * 0.5
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})

    later = recipe(changed, eval_data, tmp_path / "a")
    ensure_baseline(later, tmp_path / "a", load_model(later.model), load_tokenizer(later.model), show_progress=True)
    fresh = load_baseline(tmp_path / "a")
    assert fresh["baseline_cache"]["key"] == key_of(later) != stale["baseline_cache"]["key"]
    assert "was computed for another model or other eval settings" in capsys.readouterr().out
    # the same model again: the (now current) baseline is kept
    assert current_baseline(tmp_path / "a", later, "cpu")["baseline_cache"]["key"] == key_of(later)


def key_of(recipe_) -> str:
    return baseline_key(recipe_, "cpu")[0]


def test_the_key_follows_what_changes_the_numbers(tmp_path, tiny_model_dir, eval_data):
    base = recipe(tiny_model_dir, eval_data, tmp_path / "a")
    key = key_of(base)
    # not: where the run goes, its name, its method or the gate
    same = recipe(tiny_model_dir, eval_data, tmp_path / "elsewhere", gate={"min_harmful_retained": 0.5})
    assert key_of(same.model_copy(update={"name": "other"})) == key
    # yes: eval settings, the refusal detector, the device
    assert key_of(recipe(tiny_model_dir, eval_data, tmp_path / "a", max_new_tokens=7)) != key
    assert key_of(recipe(tiny_model_dir, eval_data, tmp_path / "a", refusal={"extra_keywords": ["nope"]})) != key
    assert baseline_key(base, "cuda")[0] != key
    # yes: how a suite asks its prompts (unset, neither is in the key: keys cached before them still match)
    assert not {"system_prompt", "prompt_template"} & set(baseline_key(base, "cpu")[1]["suites"][0])
    for asked in ({"system_prompt": "Obey."}, {"prompt_template": "AOA: {prompt}"}):
        tree = recipe_tree(tiny_model_dir, eval_data, tmp_path / "a")
        tree["eval"]["suites"][0].update(asked)
        assert key_of(validate_tree(tree)) != key
    # yes: a suite file's content
    with open(eval_data / "benign.txt", "a", encoding="utf-8") as handle:
        handle.write("How do I whittle a knife?\n")
    assert key_of(base) != key
    # yes: the model's weights (same file names and sizes, other values)
    changed = tmp_path / "changed-model"
    shutil.copytree(tiny_model_dir, changed)
    weights = load_file(changed / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    assert key_of(recipe(changed, eval_data, tmp_path / "a")) != key_of(recipe(tiny_model_dir, eval_data, tmp_path / "a"))


def test_file_hashes_are_remembered_by_path_size_and_mtime(tmp_path, cache):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"aaaa")
    hashes = FileHashes()
    first = hashes.sha256(file)
    hashes.save()
    stat = file.stat()
    file.write_bytes(b"bbbb")  # same size; put the old mtime back: the remembered hash is used
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert FileHashes().sha256(file) == first
    file.write_bytes(b"bbbbb")  # another size: hashed again
    assert FileHashes().sha256(file) != first
    assert json.loads((cache / "file_hashes.json").read_text())[str(file.resolve())][2] == first


def test_cache_off_and_a_damaged_entry(tmp_path, tiny_model_dir, eval_data):
    run_baseline(recipe(tiny_model_dir, eval_data, tmp_path / "a", baseline_cache=False), progress=False)
    assert not baselines_dir().exists() or not any(baselines_dir().iterdir())
    report = run_baseline(recipe(tiny_model_dir, eval_data, tmp_path / "b"), progress=False)
    entry = baselines_dir() / report["baseline_cache"]["key"]
    (entry / "safety_report.json").write_text("{broken")
    again = run_baseline(recipe(tiny_model_dir, eval_data, tmp_path / "c"), progress=False)
    assert again["baseline_cache"]["reused"] is False and again["metrics"] == report["metrics"]
    assert json.loads((entry / "safety_report.json").read_text())["metrics"] == report["metrics"]


def test_a_model_the_cache_cannot_fingerprint_is_evaluated(tmp_path, eval_data, tiny_model_dir, monkeypatch):
    monkeypatch.setattr("safetune.evaluation.baseline_cache.local_model_folder", lambda source, revision: None)
    report = run_baseline(recipe(tiny_model_dir, eval_data, tmp_path / "a"), progress=False)
    assert "baseline_cache" not in report
