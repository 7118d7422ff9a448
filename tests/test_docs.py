"""The documentation: the recipe reference is generated from the code and current, every recipe
field describes itself, `safetune explain` prints that text, and what users read speaks of the
product only (no work-log words)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safetune.cli import app
from safetune.docgen import REFERENCE_PAGE, explain, field_docs, find_field, render_reference
from safetune.errors import UsageError
from safetune.recipe import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_recipe_reference_is_current():
    assert REFERENCE_PAGE.read_text(encoding="utf-8") == render_reference(), (
        "docs/reference/recipe.md is stale: run python -m safetune.docgen")


def test_every_recipe_field_has_a_description():
    missing = [doc.path for doc in field_docs() if len(doc.description) < 10]
    assert not missing, f"fields without a description (Field(description=...) in safetune/recipe.py): {missing}"


def test_the_reference_lists_every_field_with_its_facts():
    page = render_reference()
    for doc in field_docs():
        if doc.path.startswith("method[") and doc.name == "name":
            continue
        assert f"### `{doc.path}`" in page
    assert "### `train.lr_schedule`\n\n**type** string · **default** `cosine` · **allowed** one of " \
           "`constant`, `linear`, `cosine`" in page
    assert "### `method[safegrad].margin`" in page and "method: {name: safegrad, margin: 0.2}" in page


def test_explain_prints_the_fields_own_description():
    text = explain("train.learning_rate")
    assert TrainConfig.model_fields["learning_rate"].description in text.replace("\n  ", " ")
    assert "default: 2.0e-05" in text and "allowed: 0 < value ≤ 1" in text
    assert "example: train: {learning_rate: 2.0e-05}" in text
    assert find_field("method.safegrad.margin").path == find_field("safegrad.margin").path == "method[safegrad].margin"
    assert find_field("eval.suites.kind").path == "eval.suites[].kind"
    assert "fields:" in explain("eval.gate") and "min_harmful_retained" in explain("eval.gate")
    assert "safety_every" in explain("safegrad")


def test_explain_suggests_the_field_meant():
    with pytest.raises(UsageError, match=r"did you mean train\.learning_rate\?"):
        find_field("train.lerning_rate")
    result = CliRunner().invoke(app, ["explain", "train.lerning_rate"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["explain", "data.packing"])
    assert result.exit_code == 0 and "data.packing" in result.output and "default: false" in result.output


# --------------------------------------------------------------------------- process words
# What a user reads talks about the product, never about how its work was organised.
PROCESS_WORDS = re.compile(r"\bsessions?\b|(?<![\w&])#\d+\b|\bissues?\b", re.IGNORECASE)
# Genuine uses: the lab's synthetic everyday prompts (changing them would change the lab data
# and every lab model built from it).
ALLOWED = {
    "safetune/lab/benign.py": ("an old terminal session", "Three short sessions a week"),
}


def user_facing_files() -> list[Path]:
    files = [ROOT / "README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted((ROOT / "recipes").rglob("*.yaml"))
    files += sorted((ROOT / "safetune").rglob("*.py"))
    return files


def test_user_facing_text_has_no_process_words():
    hits = []
    for path in user_facing_files():
        relative = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if PROCESS_WORDS.search(line) and not any(ok in line for ok in ALLOWED.get(relative, ())):
                hits.append(f"{relative}:{number}: {line.strip()[:120]}")
    assert not hits, "work-log words in user-facing files:\n" + "\n".join(hits)
