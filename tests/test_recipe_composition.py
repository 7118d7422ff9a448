"""Recipe composition (`base:`) and the bundled recipes' resolved values.

The snapshot holds what each bundled recipe sets, validated (defaults left out, so a new
field with a default does not touch it). A change to a recipe, to a base or to how bases
merge shows up here as the recipes whose values moved. After a deliberate change:

    .venv/bin/python -m tests.test_recipe_composition    # rewrites the snapshot; review its diff
"""

import json
from pathlib import Path

import pytest
import yaml

from safetune.cli import bundled_recipes
from safetune.errors import RecipeError, UsageError
from safetune.recipe import load_recipe, resolved_tree

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "resolved_recipes.json"


def resolved_values() -> dict[str, dict]:
    return {name: load_recipe(path).model_dump(mode="json", exclude_unset=True)
            for name, path in bundled_recipes().items()}


def test_bundled_recipes_resolve_to_the_snapshot():
    """Every recipe in the snapshot still resolves to its values (a recipe added since is not
    checked until the snapshot is rewritten; one removed or renamed fails here)."""
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    actual = resolved_values()
    missing = [name for name in expected if name not in actual]
    assert not missing, f"bundled recipes gone: {missing}"
    changed = [name for name in expected if actual[name] != expected[name]]
    assert not changed, f"resolved values changed: {changed}"


# --------------------------------------------------------------------------- how bases merge
LAB = {"model": {"path": "some/model", "dtype": "float32"},
       "data": {"train": {"path": "task.jsonl"}, "safety": {"path": "safety.jsonl"}, "max_seq_len": 64},
       "method": {"name": "safegrad", "margin": 0.2},
       "train": {"max_steps": 10, "learning_rate": 1.0e-3},
       "eval": {"suites": [{"kind": "harmful", "path": "harmful.jsonl"}]}}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def lab(tmp_path) -> Path:
    """A base in _base/ and a base of that base, as recipes/lab is laid out."""
    write(tmp_path, "_base/shared.yaml", yaml.safe_dump({**LAB, "name": "shared"}, sort_keys=False))
    write(tmp_path, "_base/task.yaml", "base: shared.yaml\ndata:\n  max_seq_len: 128\n")
    return tmp_path


def test_the_recipe_wins_mappings_merge_lists_and_values_replace(lab):
    path = write(lab, "run.yaml", "base: _base/task.yaml\n"
                                  "train: {max_steps: 20}\n"
                                  "method: {safety_every: 4}\n"
                                  "eval: {suites: []}\n")
    recipe = load_recipe(path)
    assert recipe.name == "run"  # a base's name is not inherited: each recipe names its own run
    assert (recipe.train.max_steps, recipe.train.learning_rate) == (20, 1.0e-3)
    assert recipe.data.max_seq_len == 128 and recipe.data.train.path == "task.jsonl"  # base of a base
    assert (recipe.method[0].margin, recipe.method[0].safety_every) == (0.2, 4)
    assert recipe.eval.suites == []


def test_a_list_of_bases_applies_in_order_and_another_method_replaces(lab):
    write(lab, "_base/short.yaml", "train: {max_steps: 5}\nmethod: {name: mix}\n")
    recipe = load_recipe(write(lab, "run.yaml", "base: [_base/task.yaml, _base/short.yaml]\n"))
    assert recipe.train.max_steps == 5 and recipe.data.max_seq_len == 128
    assert recipe.method_names == ["mix"]  # not mix with safegrad's margin


def test_overrides_apply_after_merging(lab):
    path = write(lab, "run.yaml", "base: _base/task.yaml\n")
    recipe = load_recipe(path, ["data.max_seq_len=32", "method.margin=0.5"])
    assert (recipe.data.max_seq_len, recipe.method[0].margin) == (32, 0.5)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, ["data.max_seq_lenn=32"])
    assert caught.value.problems == ["data.max_seq_lenn: unknown key (did you mean max_seq_len?)"]


def test_a_problem_names_the_file_and_line_that_set_it(lab):
    thin = write(lab, "run.yaml", "base: _base/task.yaml\ntrain:\n  lerning_rate: 0.1\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(thin)
    assert caught.value.source == str(thin)
    assert caught.value.problems == ["train.lerning_rate: unknown key (did you mean learning_rate?)"]

    write(lab, "_base/task.yaml", "base: shared.yaml\ndata:\n  max_seq_len: 128\n  shufle: false\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(lab, "run.yaml", "base: _base/task.yaml\n"))
    base = lab / "_base" / "task.yaml"
    assert caught.value.problems == [f"data.shufle: unknown key (did you mean shuffle?) (set in {base}:4)"]


def test_missing_bases_circles_and_bad_yaml_are_one_line_naming_the_file(lab):
    def error(path: Path) -> str:
        with pytest.raises(UsageError) as caught:
            load_recipe(path)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    thin = write(lab, "run.yaml", "base: _base/nope.yaml\n")
    assert error(thin) == f"{thin}: base '_base/nope.yaml': recipe file not found ({lab / '_base' / 'nope.yaml'})"
    write(lab, "_base/shared.yaml", "base: task.yaml\n")
    assert "recipes that are each other's base" in error(write(lab, "run.yaml", "base: _base/task.yaml\n"))
    assert error(write(lab, "self.yaml", "base: self.yaml\n")).startswith(f"{lab / 'self.yaml'}: base:")
    broken = write(lab, "_base/shared.yaml", "model:\n  path: [unclosed\n")
    assert error(write(lab, "run.yaml", "base: _base/shared.yaml\n")).startswith(f"{broken}:3:1: invalid YAML")
    assert "give a recipe file" in error(write(lab, "run.yaml", "base: {path: x}\n"))


# --------------------------------------------------------------------------- the commands
def test_init_writes_one_file_that_stands_alone(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from safetune.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", "lab/count-defended", "mine.yaml"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "mine.yaml").read_text(encoding="utf-8")
    assert "base" not in yaml.safe_load(text) and "# The data audit drops" in text
    bundled = load_recipe(bundled_recipes()["lab/count-defended"], ["name=mine"])
    assert load_recipe(tmp_path / "mine.yaml") == bundled


def test_recipes_lists_every_recipe_but_not_the_bases():
    names = list(bundled_recipes())
    assert "lab/sentiment-standard" in names and "examples/llama3-8b-lora" in names
    assert not [name for name in names if "_base" in name]
    assert resolved_tree(bundled_recipes()["lab/count-ewc"])["model"] == {"path": "lab"}  # from the bases


if __name__ == "__main__":
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(resolved_values(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}")
