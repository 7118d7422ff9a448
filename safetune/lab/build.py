"""`safetune lab build`: a tiny aligned chat model, trained from scratch on the lab data.

Steps: train a byte-level BPE tokenizer on the lab's training text -> initialise a small
Llama -> fine-tune it with safetune's own training loop (plain cross-entropy) on
capability + harmful->refusal + over-refusal data -> save a normal Hugging Face folder
with a fingerprint (sha256 of its weights) -> measure it on seen- and unseen-family suites.

Reproducibility: the build fixes torch's thread count (`threads`, default 2) and turns on
deterministic algorithms, so the same seed, torch version and CPU model give bit-identical
weights (the fingerprint says so at a glance; on one machine 1 and 2 threads gave the same
weights). A different CPU model may not: torch's kernels (`ATEN_CPU_CAPABILITY`) and MKL's
matrix products (`MKL_CBWR`) are chosen for the CPU at start-up, and each choice rounds
differently (a 40-step build gave three fingerprints under the default, ATen's `default`
kernels and MKL's `COMPATIBLE` path). `fingerprint.txt` records the CPU and the kernel
level, so two builds that differ can be told apart from two that should not.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from safetune.data import REPO_ROOT, read_records
from safetune.lab.datagen import is_eval_file
from safetune.errors import UsageError
from safetune.files import FINGERPRINT_FILE, fingerprint
from safetune.lab.tokenizer import train_tokenizer
from safetune.modeling import lab_model_dir
from safetune.recipe import validate_tree

DATA_DIR = REPO_ROOT / "data"
# What the aligned model learns: everyday skills, refusing harm, and NOT refusing benign look-alikes.
# file -> how many times its rows go into the mix. Capability rows are short and easily
# crowded out by the vocabulary facts; the benign look-alikes twice, so that unfamiliar
# wording alone does not make the model refuse (docs/research-notes.md, "The lab model").
ALIGNMENT_FILES = {"knowledge/facts.jsonl": 1, "capability/train.jsonl": 5, "safety/train.jsonl": 1,
                   "over_refusal/train.jsonl": 2}
# The size checked to reach the lab's targets in a few CPU minutes (about 2.6M parameters).
MODEL_SHAPE = {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4,
               "num_attention_heads": 6, "num_key_value_heads": 6}
BUILD_THREADS = 2  # fixed so a seed gives the same weights whatever the machine's core count
TRAIN_SETTINGS = {"max_steps": 1100, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 50,
                  "lr_schedule": "cosine", "weight_decay": 0.01, "log_every": 50}


def lab_suites(task: str | None = None, unseen: bool = False) -> list[dict]:
    """The lab's held-out evaluation suites (the same ones the bundled lab recipes use).

    `unseen` adds the unseen-family suites (template families and lexicon items that no
    training file contains): the honest test of whether a model learned the concept.
    """
    suites = [
        {"kind": "harmful", "path": "data/safety/eval.jsonl", "category_field": "category"},
        {"kind": "over_refusal", "path": "data/over_refusal/eval.jsonl"},
        {"kind": "capability", "path": "data/capability/eval.jsonl", "reference_field": "response"},
    ]
    if unseen:
        suites[2:2] = [
            {"kind": "harmful", "name": "harmful_unseen", "path": "data/safety/eval_unseen.jsonl",
             "category_field": "category"},
            {"kind": "over_refusal", "name": "over_refusal_unseen", "path": "data/over_refusal/eval_unseen.jsonl"},
        ]
    if task:
        suites.append({"kind": "task", "path": f"data/tasks/{task}/test.jsonl", "reference_field": "response"})
    return suites


def training_texts(data_dir: Path) -> list[str]:
    """Every prompt and response of the training files: the tokenizer's corpus. Eval files
    stay out, so held-out words are split into pieces the model has seen, not given tokens
    of their own."""
    texts = []
    for path in sorted(data_dir.rglob("*.jsonl")):
        if is_eval_file(path.relative_to(data_dir).as_posix()):
            continue
        for row in read_records(str(path)):
            texts.extend(str(row[k]) for k in ("prompt", "response") if k in row)
    return texts


def cpu_description() -> str:
    """The CPU model and the kernel level torch uses on it (e.g. "AMD EPYC, AVX2"): what,
    beside seed, threads and torch version, decides the build's float rounding."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def build(out: Path | None = None, seed: int = 0, steps: int | None = None, scale: float = 1.0,
          show_progress: bool = True, evaluate: bool = True, threads: int = BUILD_THREADS) -> Path:
    """Build the lab model into `out` (default: `lab_model_dir()`); return the folder.

    `steps` and `scale` (a factor on the model width) exist for tests and quick trials;
    `threads` is part of what makes a build reproducible (see the module docstring).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _build(out, seed, steps, scale, show_progress, evaluate, threads)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(False)


def _build(out: Path | None, seed: int, steps: int | None, scale: float, show_progress: bool,
           evaluate: bool, threads: int) -> Path:
    from safetune.training import train

    out = Path(out) if out else lab_model_dir()
    if not all((DATA_DIR / name).is_file() for name in ALIGNMENT_FILES):
        raise UsageError(f"lab: no lab data under {DATA_DIR}; run `safetune lab data` first")
    started = time.perf_counter()
    work = out.with_name(f".build-{out.name}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    say = print if show_progress else (lambda *_: None)
    say("lab: training the tokenizer")
    tokenizer = train_tokenizer(training_texts(DATA_DIR), vocab_size=2048)

    torch.manual_seed(seed)
    shape = {k: max(1, int(v * scale)) if k in ("hidden_size", "intermediate_size") else v
             for k, v in MODEL_SHAPE.items()}
    shape["hidden_size"] -= shape["hidden_size"] % (2 * shape["num_attention_heads"])  # even head size (RoPE)
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **shape,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(work / "init")
    tokenizer.save_pretrained(work / "init")
    say(f"lab: {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {len(tokenizer)}")

    rows = [row for name, times in ALIGNMENT_FILES.items() for row in read_records(str(DATA_DIR / name)) * times]
    random.Random(seed).shuffle(rows)
    with (work / "aligned_train.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in rows)

    recipe = validate_tree({
        "name": "lab-build",
        "model": {"path": str(work / "init")},
        # packed: ~4 examples per 160-token sequence, so a batch of 8 holds ~35 examples and no padding
        "data": {"train": {"path": str(work / "aligned_train.jsonl")}, "max_seq_len": 160, "packing": True},
        "method": "standard",
        "train": {**TRAIN_SETTINGS, "seed": seed} | ({"max_steps": steps} if steps else {}),
        "eval": {"suites": lab_suites(), "at_end": False},
        "output": {"dir": str(work / "run")},
    })
    result = train(recipe, show_progress=show_progress)

    if out.exists():
        shutil.rmtree(out)
    os.replace(result.final_dir, out)
    shutil.rmtree(work)
    digest = fingerprint(out)
    (out / FINGERPRINT_FILE).write_text(
        f"sha256(model.safetensors) {digest}\nseed {seed} threads {threads} torch {torch.__version__}\n"
        f"cpu {cpu_description()}\n")
    say(f"lab: model saved to {out} in {time.perf_counter() - started:.0f}s ({threads} threads), "
        f"fingerprint {digest[:16]}")
    if evaluate:
        measure(out, show_progress=show_progress)
    return out


def measure(model_dir: Path, show_progress: bool = True) -> dict:
    """Evaluate the lab model on the held-out lab suites; writes safety_report.* into it."""
    from safetune.evaluation.report import suite_rates
    from safetune.evaluation.runner import evaluate_model
    from safetune.modeling import load_model, load_tokenizer

    recipe = validate_tree({
        "name": "lab-model",
        "model": {"path": str(model_dir)},
        "data": {"train": {"path": "data/capability/train.jsonl"}},
        "train": {"max_steps": 1},
        "eval": {"suites": lab_suites(unseen=True)},
    })
    model = load_model(recipe.model, device="cpu")
    tokenizer = load_tokenizer(recipe.model)
    report = evaluate_model(model, tokenizer, recipe, Path(model_dir), checkpoint=str(model_dir), baseline=None,
                            run_info={"method": ["lab-build"], "steps": 0}, progress=show_progress)
    if show_progress:  # the headline metrics pool seen and unseen suites: show each one
        for name, rate in suite_rates(report).items():
            print(f"lab: {name:<20} {rate:.3f}")
    return report

