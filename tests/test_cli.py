"""The CLI end to end: one-line errors with exit 2, a real train that leaves a loadable checkpoint."""

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from safetune.cli import app

runner = CliRunner()


def recipe_file(tmp_path, tiny_model_dir, tiny_data, **sections):
    tree = {
        "description": "cli test",
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": {"path": str(tiny_data["task"])}, "safety": {"path": str(tiny_data["safety"])},
                 "max_seq_len": 64},
        "method": "mix",
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "log_every": 2},
        "output": {"dir": str(tmp_path / "run")},
    }
    for key, value in sections.items():
        tree[key] = {**tree[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_help_lists_verbs():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("train", "validate", "init", "recipes", "env"):
        assert verb in result.output


def test_train_end_to_end_writes_loadable_checkpoint(tmp_path, tiny_model_dir, tiny_data):
    path = recipe_file(tmp_path, tiny_model_dir, tiny_data)
    result = runner.invoke(app, ["train", str(path), "train.max_steps=4"])
    assert result.exit_code == 0, result.output
    assert "step 4/4" in result.output  # plain progress lines when not on a terminal
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = tmp_path / "run" / "final"
    AutoModelForCausalLM.from_pretrained(final)
    assert AutoTokenizer.from_pretrained(final).chat_template


@pytest.mark.parametrize("section, overrides, expected", [
    ({"train": {"lerning_rate": 1e-3}}, [], "train.lerning_rate: unknown key (did you mean learning_rate?)"),
    ({}, ["train.batch_size=lots"], "train.batch_size: Input should be a valid integer"),
    ({}, ["data.train.path=/nope/missing.jsonl"], "data.train.path: file not found: /nope/missing.jsonl"),
    ({}, ["model.path=/nope/model"], "model.path: '/nope/model' is not available locally"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_model_dir, tiny_data, section, overrides, expected):
    path = recipe_file(tmp_path, tiny_model_dir, tiny_data, **section)
    result = runner.invoke(app, ["train", str(path), *overrides])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_validate_prints_resolved_recipe(tmp_path, tiny_model_dir, tiny_data):
    path = recipe_file(tmp_path, tiny_model_dir, tiny_data)
    result = runner.invoke(app, ["validate", str(path), "train.learning_rate=0.5"])
    assert result.exit_code == 0
    assert "learning_rate: 0.5" in result.output and "is valid" in result.output


def test_stray_flag_rejected(tmp_path, tiny_model_dir, tiny_data):
    result = runner.invoke(app, ["train", str(recipe_file(tmp_path, tiny_model_dir, tiny_data)), "--lr", "3"])
    assert result.exit_code == 2


def test_env_and_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "safetune", "env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "torch:" in result.stdout and "transformers:" in result.stdout and "torch_threads:" in result.stdout


def test_init_names_the_run_after_the_new_file(tmp_path, monkeypatch):
    """`safetune init lab/sentiment-standard my.yaml` then `train my.yaml` writes runs/my/,
    the folder the README's `safetune eval runs/my/final` reads."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init", "lab/sentiment-standard", "my.yaml"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "my.yaml").read_text()
    assert yaml.safe_load(text)["name"] == "my"
    assert "# " in text  # the bundled recipe's comments are kept
    from safetune.recipe import load_recipe

    assert str(load_recipe(tmp_path / "my.yaml").output_dir()) == "runs/my"
    missing = runner.invoke(app, ["init", "lab/sentiment-standard", "configs/my.yaml"])
    assert missing.exit_code == 2 and "init: no folder configs; create it first" in missing.output
    again = runner.invoke(app, ["init", "lab/sentiment-standard", "my.yaml"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_the_resume_hint_repeats_the_flags_and_the_launcher(tmp_path, tiny_model_dir, tiny_data, monkeypatch):
    """Ctrl-C prints a command that resumes the same run: same flags (so the exit code does not
    change), and under torchrun the same number of processes (a resume needs as many)."""
    from safetune.cli import launcher_prefix
    from tests.helpers import interrupt_at_step

    path = recipe_file(tmp_path, tiny_model_dir, tiny_data)
    interrupt_at_step(monkeypatch, 2)
    result = runner.invoke(app, ["train", str(path), "train.max_steps=4", "--quiet", "--allow-gate-failure"])
    assert result.exit_code == 130
    assert f"Resume with: safetune train {path} train.max_steps=4 --allow-gate-failure --quiet --resume" in \
        " ".join(result.output.split())
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert launcher_prefix() == ["torchrun", "--nnodes", "2", "--nproc_per_node", "4", "-m", "safetune"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launcher_prefix() == ["safetune"]


def test_out_of_memory_is_one_line_with_what_to_change(tmp_path, tiny_model_dir, tiny_data, monkeypatch):
    import torch

    from safetune.training import Trainer

    def no_memory(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 39.4 GiB total)")

    monkeypatch.setattr(Trainer, "train_step", no_memory)
    result = runner.invoke(app, ["train", str(recipe_file(tmp_path, tiny_model_dir, tiny_data))])
    assert result.exit_code == 1
    [line] = [line for line in result.output.splitlines() if line.strip()][-1:]
    assert line.startswith("error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "train.batch_size" in line and "Traceback" not in result.output
