"""Scale-out on CPU (gloo): 2 processes under torchrun equal 1 process with the same
global batch; one error line per process; mixed precision and gradient checkpointing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from safetune.recipe import validate_tree
from safetune.training import Trainer, train
from tests.test_training import make_recipe

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ROOT = Path(__file__).resolve().parents[1]


def run_torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def recipe_file(tmp_path, tiny_model_dir, tiny_data, method) -> tuple[dict, Path]:
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "one", max_steps=3, batch_size=4)
    tree["method"] = method
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return tree, path


@pytest.mark.parametrize("method", [
    "safegrad",
    pytest.param("standard", marks=pytest.mark.slow),
    pytest.param({"name": "ewc", "strength": 100.0, "fisher_samples": 8}, marks=pytest.mark.slow),
    # mix adds its share to the global batch before it is sharded: 4 safety rows on 4 task rows either way
    pytest.param({"name": "mix", "safety_fraction": 0.5}, marks=pytest.mark.slow),
])
def test_two_processes_equal_one_with_the_same_global_batch(tiny_model_dir, tiny_data, tmp_path, method):
    tree, path = recipe_file(tmp_path, tiny_model_dir, tiny_data, method)
    one = train(validate_tree(tree), show_progress=False)
    two = run_torchrun(["-m", "safetune", "train", str(path), "train.batch_size=2",
                        f"output.dir={tmp_path / 'two'}", "--quiet"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(one.final_dir / "model.safetensors"), load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 3], "rank 0 alone writes the metrics"
    assert json.loads((tmp_path / "two" / "env.json").read_text())["processes"] == 2


def test_an_error_on_one_rank_ends_the_run_with_one_line_each(tiny_model_dir, tiny_data, tmp_path):
    _, path = recipe_file(tmp_path, tiny_model_dir, tiny_data, "standard")
    script = tmp_path / "fail_rank1.py"
    script.write_text(
        "import os, sys\n"
        "import safetune.training as training\n"
        "from safetune.errors import SafetuneError\n"
        "original = training.compute_loss\n"
        "def failing(*args):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise SafetuneError('data.train: injected failure')\n"
        "    return original(*args)\n"
        "training.compute_loss = failing\n"
        "from safetune.cli import main\n"
        "sys.argv = ['safetune', *sys.argv[1:]]\n"
        "main()\n"
    )
    out = run_torchrun([str(script), "train", str(path), "train.batch_size=2", "--quiet"], tmp_path)
    assert out.returncode != 0
    assert "error: [rank 1] data.train: injected failure" in out.stderr
    assert "]: Traceback" not in out.stderr, "no traceback from safetune's own processes"


def test_bf16_autocast_trains_close_to_fp32(tiny_model_dir, tiny_data, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / precision, max_steps=4, log_every=1,
                           precision=precision)
        train(validate_tree(tree), show_progress=False)
        rows = [json.loads(line) for line in (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = [row["loss"] for row in rows]
    assert all(torch.isfinite(torch.tensor(losses["bf16"])))
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)
    weights = load_file(tmp_path / "bf16" / "final" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values()), "master weights stay fp32"


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, tiny_data, tmp_path):
    grads = {}
    for checkpointing in (False, True):
        tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / str(checkpointing),
                           gradient_checkpointing=checkpointing)
        trainer = Trainer(validate_tree(tree), show_progress=False)
        trainer.setup(dry_run=True)
        batch = trainer.ctx.batch_to_device(trainer.schedule.batch(0))
        trainer.model.train()  # Hugging Face checkpoints activations in training mode only
        assert trainer.model.is_gradient_checkpointing == checkpointing
        trainer.model(**batch).loss.backward()
        grads[checkpointing] = [p.grad.clone() for p in trainer.trainable]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[False], grads[True]))
