"""Recipe validation: strict keys, one-line errors, overrides, every bundled recipe valid."""

from pathlib import Path

import pytest
import yaml

from safetune.cli import bundled_recipes
from safetune.errors import RecipeError, UsageError
from safetune.recipe import METHOD_CLASSES, load_recipe

RECIPES = list(bundled_recipes().values())  # recipes/**/*.yaml but the bases in recipes/lab/_base/

BASE = {
    "model": {"path": "some/model"},
    "data": {"train": {"path": "task.jsonl"}, "safety": {"path": "safety.jsonl"}},
    "method": "standard",
    "train": {"max_steps": 10},
}


def write(tmp_path, tree, name="r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def problems(tmp_path, tree, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, tree), list(overrides))
    return caught.value.problems


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_bundled_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.description, "every bundled recipe says what it is for"


def test_bundled_recipes_exist():
    assert RECIPES, "recipes/ ships at least one recipe"


def test_defaults_and_name_from_file(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE, "my-run.yaml"))
    assert recipe.name == "my-run"
    assert recipe.method_names == ["standard"]
    assert recipe.model.trust_remote_code is False
    assert recipe.output_dir() == Path("runs/my-run")


def test_typo_gets_did_you_mean(tmp_path):
    tree = {**BASE, "train": {"max_steps": 10, "lerning_rate": 1e-4}}
    assert problems(tmp_path, tree) == ["train.lerning_rate: unknown key (did you mean learning_rate?)"]


def test_all_errors_at_once(tmp_path):
    tree = {**BASE, "train": {"max_steps": 0, "batch_size": "big"}, "extra_section": 1}
    found = problems(tmp_path, tree)
    assert len(found) == 3
    assert any(p.startswith("train.max_steps: ") for p in found)
    assert any(p.startswith("train.batch_size: ") and "'big'" in p for p in found)
    assert any(p.startswith("extra_section: unknown key") for p in found)
    assert not any("pydantic" in p or "http" in p for p in found)


def test_missing_required_and_length(tmp_path):
    found = problems(tmp_path, {"model": {"path": "m"}, "data": {"train": {"path": "t"}}, "train": {}})
    assert "train: set exactly one of train.max_steps and train.epochs" in found


def test_method_forms_and_unknown_method(tmp_path):
    path = write(tmp_path, {**BASE, "method": {"name": "mix", "safety_fraction": 0.25}})
    assert load_recipe(path).method[0].safety_fraction == 0.25
    assert load_recipe(path, ["method=[mix]"]).method[0].safety_fraction == 0.1
    found = problems(tmp_path, {**BASE, "method": ["magic"]})
    assert found == [f"method[0]: unknown method 'magic' (known: {', '.join(METHOD_CLASSES)})"]
    found = problems(tmp_path, {**BASE, "method": {"name": "mix", "safety_fractoin": 0.2}})
    assert found == ["method[mix].safety_fractoin: unknown key (did you mean safety_fraction?)"]


def test_overrides_use_yaml_scalars_and_same_validation(tmp_path):
    path = write(tmp_path, BASE)
    recipe = load_recipe(path, ["train.learning_rate=1e-3", "train.lr_schedule=linear", "data.max_seq_len=64",
                                "method.name=mix", "method.safety_fraction=0.3"])
    assert recipe.train.learning_rate == pytest.approx(1e-3)
    assert recipe.train.lr_schedule == "linear"
    assert recipe.data.max_seq_len == 64
    assert recipe.method[0].safety_fraction == pytest.approx(0.3)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, ["train.lr_schedule=wavy"])
    assert caught.value.problems[0].startswith("train.lr_schedule: ")
    with pytest.raises(UsageError, match="expected key.sub=value"):
        load_recipe(path, ["train.learning_rate"])


def test_harmful_ratio_needs_source(tmp_path):
    found = problems(tmp_path, {**BASE, "data": {**BASE["data"], "harmful_ratio": 0.1}})
    assert found == ["data: harmful_ratio > 0 needs a data.harmful source"]


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  path: [unclosed\n")
    with pytest.raises(UsageError, match=r"bad.yaml:\d+:\d+: invalid YAML"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UsageError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_bundled_recipe_round_trips_through_its_resolved_form():
    """`eval` and `--resume` re-read recipe.resolved.yaml, which spells out every default."""
    from safetune.recipe import validate_tree

    assert RECIPES
    for path in RECIPES:
        resolved = load_recipe(path)
        assert validate_tree(yaml.safe_load(resolved.to_yaml())) == resolved, path
