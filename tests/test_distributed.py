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


def fsdp_full_and_resumed(recipe: Path, tmp_path: Path) -> None:
    """Under FSDP on 2 processes: the whole run into full/, and into half/ 2 steps, then --resume."""
    fsdp = ["-m", "safetune", "train", str(recipe), "train.batch_size=2", "train.distributed.strategy=fsdp", "--quiet"]
    for args in ([f"output.dir={tmp_path / 'full'}"], [f"output.dir={tmp_path / 'half'}", "train.max_steps=2"],
                 [f"output.dir={tmp_path / 'half'}", "--resume"]):
        done = run_torchrun([*fsdp, *args], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]


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
    # its refusal term is backpropagated apart, before the task's forward: DDP syncs it with the task's
    pytest.param({"name": "token_weighting", "scorer": "none", "alpha": 0.5, "safety_batch_size": 2},
                 marks=pytest.mark.slow),
])
def test_two_processes_equal_one_with_the_same_global_batch(tiny_model_dir, tiny_data, tmp_path, method):
    tree, path = recipe_file(tmp_path, tiny_model_dir, tiny_data, method)
    one = train(validate_tree(tree), show_progress=False)
    # the DDP wrapper's reducer holds the process group: it must be freed before the group is
    # destroyed, else gloo's destructor can deadlock a rank at exit. Count the wrappers then.
    script = tmp_path / "count_ddp_at_exit.py"
    script.write_text(
        "import gc, sys\n"
        "import torch.distributed\n"
        "from torch.nn.parallel import DistributedDataParallel\n"
        "destroy = torch.distributed.destroy_process_group\n"
        "def counted(*args, **kwargs):\n"
        "    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())\n"
        "    print(f'DDP wrappers alive when the group is destroyed: {alive}', file=sys.stderr)\n"
        "    return destroy(*args, **kwargs)\n"
        "torch.distributed.destroy_process_group = counted\n"
        "from safetune.cli import main\n"
        "sys.argv = ['safetune', *sys.argv[1:]]\n"
        "main()\n"
    )
    two = run_torchrun([str(script), "train", str(path), "train.batch_size=2",
                        f"output.dir={tmp_path / 'two'}", "--quiet"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("DDP wrappers alive when the group is destroyed: 0") == 2, two.stderr[-3000:]
    a, b = load_file(one.final_dir / "model.safetensors"), load_file(tmp_path / "two" / "final" / "model.safetensors")
    # rounding only (two shards of 2 rows against one batch of 4), lifted by AdamW to ~2e-5
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 5e-5
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 3], "rank 0 alone writes the metrics"
    assert json.loads((tmp_path / "two" / "env.json").read_text())["processes"] == 2


@pytest.mark.slow
def test_ddp_ranks_share_the_final_evaluation(tiny_model_dir, tiny_data, tmp_path):
    """Under DDP every rank holds the whole model: each answers its share of the evaluation's
    prompts and rank 0 writes every answer, in the suite's order (`sharded_across`)."""
    tree, path = recipe_file(tmp_path, tiny_model_dir, tiny_data, "standard")
    tree["eval"] = {"max_new_tokens": 4, "batch_size": 8, "baseline_cache": False,
                    "suites": [{"kind": "harmful", "path": str(tiny_data["safety"]), "limit": 7}]}
    path.write_text(yaml.safe_dump(tree))
    one = train(validate_tree(tree), show_progress=False)
    two = run_torchrun(["-m", "safetune", "train", str(path), "train.batch_size=2", f"output.dir={tmp_path / 'two'}",
                        "--quiet"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = {run: [json.loads(line) for line in (folder / "final" / "outputs.jsonl").read_text().splitlines()]
            for run, folder in (("one", one.run_dir), ("two", tmp_path / "two"))}
    assert [r["prompt"] for r in rows["two"]] == [r["prompt"] for r in rows["one"]] and len(rows["one"]) == 7
    report = json.loads((tmp_path / "two" / "final" / "safety_report.json").read_text())
    assert report["suites"][0]["name"] == "harmful"


def test_an_error_on_one_rank_ends_the_run_with_one_line_each(tiny_model_dir, tiny_data, tmp_path):
    _, path = recipe_file(tmp_path, tiny_model_dir, tiny_data, "standard")
    script = tmp_path / "fail_rank1.py"
    script.write_text(
        "import os, sys\n"
        "import safetune.train_step as train_step\n"
        "from safetune.errors import SafetuneError\n"
        "original = train_step.compute_loss\n"
        "def failing(*args):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise SafetuneError('data.train: injected failure')\n"
        "    return original(*args)\n"
        "train_step.compute_loss = failing\n"
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


# FSDP2 shards every parameter across the 2 ranks (DTensors): SafeGrad's dot products and
# norms are per-shard sums added up across ranks, EWC's Fisher and SAP's direction come
# through FSDP's reduce-scattered gradients. The result must still be the 1-process run's.
@pytest.mark.parametrize("method", [
    "safegrad",
    pytest.param({"name": "ewc", "strength": 100.0, "fisher_samples": 8}, marks=pytest.mark.slow),
    pytest.param("standard", marks=pytest.mark.slow),
    pytest.param({"name": "safegrad", "space": "update", "projection": "per_layer", "margin": 0.1},
                 marks=pytest.mark.slow),
    pytest.param([{"name": "freeze", "layers": [0]}, "safegrad"], marks=pytest.mark.slow),
    # two constraints: the Gram statistics of the cached pair, summed over shards once per refresh
    pytest.param({"name": "safegrad", "safety_data": "refusals_and_borderline", "constraints": "separate",
                  "margin": 0.1, "safety_every": 2}, marks=pytest.mark.slow),
])
def test_fsdp_two_processes_equal_one(tiny_model_dir, tiny_data, tmp_path, method):
    tree, path = recipe_file(tmp_path, tiny_model_dir, tiny_data, method)
    if isinstance(method, dict) and method.get("safety_data") == "refusals_and_borderline":
        tree["data"]["borderline"] = {"path": str(tiny_data["task"])}  # any prompt -> answer rows will do
        path.write_text(yaml.safe_dump(tree))
    one = train(validate_tree(tree), show_progress=False)
    two = run_torchrun(["-m", "safetune", "train", str(path), "train.batch_size=2", "train.distributed.strategy=fsdp",
                        f"output.dir={tmp_path / 'two'}", "--quiet"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    final = tmp_path / "two" / "final"
    a, b = load_file(one.final_dir / "model.safetensors"), load_file(final / "model.safetensors")
    assert set(a) <= set(b)
    # FSDP's reduce-scatter adds the ranks' gradients in another order than one process does,
    # and SafeGrad's projection of Adam's update carries that rounding a little further
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 5e-5
    config = json.loads((final / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"], "the saved model names its own class, not FSDP's"
    resolved = yaml.safe_load((tmp_path / "two" / "recipe.resolved.yaml").read_text())
    assert resolved["train"]["distributed"]["strategy"] == "fsdp"


@pytest.mark.slow
def test_fsdp_resume_probes_and_final_evaluation(tiny_model_dir, tiny_data, tmp_path):
    """Under FSDP no rank can run the model alone: probes and the final evaluation run on
    both ranks, rank 0 alone writes, and a resumed run (whole tensors in the checkpoint,
    sharded again on load) ends where the uninterrupted one does."""
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "full", max_steps=4, batch_size=4, save_every=2,
                       lr_schedule="constant")
    tree["method"] = [{"name": "safegrad", "safety_every": 2}, {"name": "ewc", "strength": 10.0, "fisher_samples": 8}]
    tree["monitor"] = {"every": 2, "samples": 4, "on_breach": "warn"}
    tree["eval"] = {"max_new_tokens": 4, "batch_size": 8,
                    "suites": [{"kind": "harmful", "path": str(tiny_data["safety"]), "limit": 6}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    fsdp_full_and_resumed(path, tmp_path)
    report = json.loads((tmp_path / "full" / "final" / "safety_report.json").read_text())
    assert report["suites"][0]["name"] == "harmful"
    probes = [json.loads(row) for row in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in probes if "probe/harmful_refusal_rate" in row] == [0, 2, 4]
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "half" / "final" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    {"name": "sap", "pairs_per_step": 2},  # each rank trains its probe on its own micro-batch: no 1-process twin
    {"name": "token_weighting", "scorer": "reference", "alpha": 0.5, "npo_weight": 0.5, "safety_batch_size": 2},
])
def test_fsdp_runs_the_other_gradient_methods(tiny_model_dir, tiny_data, tmp_path, method):
    tree, path = recipe_file(tmp_path, tiny_model_dir, tiny_data, method)
    tree["data"]["harmful"] = {"path": str(tiny_data["harmful"])}
    path.write_text(yaml.safe_dump(tree))
    two = run_torchrun(["-m", "safetune", "train", str(path), "train.batch_size=2", "train.distributed.strategy=fsdp",
                        f"output.dir={tmp_path / 'two'}", "--quiet"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    trained, base = load_file(tmp_path / "two" / "final" / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in trained.values())
    assert any(not torch.equal(trained[k], base[k]) for k in base if k in trained)


@pytest.mark.slow
def test_fsdp_lora_equals_one_process(tiny_model_dir, tiny_data, tmp_path):
    tree, path = recipe_file(tmp_path, tiny_model_dir, tiny_data, "safegrad")
    tree["model"]["lora"] = {"r": 4}
    path.write_text(yaml.safe_dump(tree))
    one = train(validate_tree(tree), show_progress=False)
    two = run_torchrun(["-m", "safetune", "train", str(path), "train.batch_size=2", "train.distributed.strategy=fsdp",
                        f"output.dir={tmp_path / 'two'}", "--quiet"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(one.final_dir / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "adapter_model.safetensors")
    assert set(a) == set(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 5e-5


@pytest.mark.slow
def test_fsdp_lora_resume_ends_where_the_uninterrupted_run_does(tiny_model_dir, tiny_data, tmp_path):
    """The adapter checkpoint (peft's names, whole tensors) is sharded again on resume."""
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "full", max_steps=4, batch_size=4, save_every=2,
                       lr_schedule="constant")
    tree["model"]["lora"] = {"r": 4}
    tree["method"] = "safegrad"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    fsdp_full_and_resumed(path, tmp_path)
    a = load_file(tmp_path / "full" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "half" / "final" / "adapter_model.safetensors")
    assert set(a) == set(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    stepped = load_file(tmp_path / "half" / "checkpoints" / "step-2" / "adapter_model.safetensors")
    assert max(float((a[k] - stepped[k]).abs().max()) for k in a) > 1e-4, "the resumed run trained on"


def test_compile_trains_to_the_same_weights(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """train.compile wraps the task forward in torch.compile: same parameters, same steps.
    The aot_eager backend traces forward and backward like inductor does but skips C++
    code generation, so the check takes seconds (bench/bench_trainer.py --compile times
    the real backend)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    compiled, counter = [], CompileCounterWithBackend("aot_eager")

    def compile_with_aot_eager(model, **kwargs):
        compiled.append(model)
        return real_compile(model, backend=counter, **kwargs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    finals = {}
    for on in (False, True):
        tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / str(on), max_steps=3, compile=on)
        finals[on] = load_file(train(validate_tree(tree), show_progress=False).final_dir / "model.safetensors")
    assert len(compiled) == 1, "compiled once, for the compile=True run"
    assert counter.frame_count >= 1, "the training forward ran through the compiled graph"
    # float rounding only (the compiled forward computes the full logits, the eager one only the
    # trained rows), which AdamW's normalisation lifts to ~3e-5 after 3 steps; a wrong step is ~1e-2
    assert all(torch.allclose(finals[False][k], finals[True][k], atol=5e-5) for k in finals[False])


def _train_on_rank(rank: int, tree: dict, port: int) -> None:
    """One rank of a 2-process FSDP run (spawned by the test below); only rank 0 may read the weights."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import safetune.train_setup as train_setup
    import safetune.training as training

    read = train_setup.load_model

    def load_model_on_rank_0_only(*args, **kwargs):
        assert rank == 0, "rank 1 read the model's weights"
        return read(*args, **kwargs)

    train_setup.load_model = load_model_on_rank_0_only
    training.train(validate_tree(tree), show_progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("family, lora", [("qwen2", False), ("qwen2", True), ("gpt-neox", False)])
def test_fsdp_reads_the_weights_on_rank_0_only(tiny_qwen2_dir, tiny_data, tmp_path, family, lora):
    """FSDP is for models no process can hold whole: rank 0 alone reads the weights (into CPU
    memory), the others build the model on the meta device and receive only their shards. The
    audit and the baseline evaluation then run sharded on both ranks. The run still ends at
    the 1-process weights (with LoRA, rank 0's adapter init is everyone's; GPT-NeoX's saved
    names differ from its modules')."""
    import socket

    import torch.multiprocessing as mp

    from tests.helpers import make_tiny_neox_dir

    model_dir = tiny_qwen2_dir if family == "qwen2" else make_tiny_neox_dir(tmp_path / "neox")
    tree = make_recipe(model_dir, tiny_data, tmp_path / "one", max_steps=3, batch_size=4)
    tree["method"] = "safegrad"
    tree["data"]["audit"] = {"checks": ["refusal_conflict"], "action": "report", "max_flagged": 1.0,
                             "max_new_tokens": 4}
    tree["eval"] = {"max_new_tokens": 4, "batch_size": 8, "baseline_cache": False,
                    "suites": [{"kind": "harmful", "path": str(tiny_data["safety"]), "limit": 4}]}
    if lora:
        tree["model"]["lora"] = {"r": 4}
    one = train(validate_tree(tree), show_progress=False)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    two = tree | {"output": {"dir": str(tmp_path / "two")}}
    two["train"] = tree["train"] | {"batch_size": 2, "distributed": {"strategy": "fsdp"}}
    mp.spawn(_train_on_rank, args=(two, port), nprocs=2)
    final = tmp_path / "two" / "final"
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    a, b = load_file(one.final_dir / name), load_file(final / name)
    assert set(a) == set(b), "saved under the names one process saves (GPT-NeoX: embed_out)"
    # rounding: on GPT-NeoX, DDP's 2 + 2 rows end 7e-5 from one process's 4 rows too
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    baseline = json.loads((tmp_path / "two" / "baseline" / "safety_report.json").read_text())
    assert baseline["suites"][0]["name"] == "harmful"
    assert json.loads((tmp_path / "two" / "data_audit.json").read_text())["rows"] == 40
