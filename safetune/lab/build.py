"""`safetune lab build`: a tiny aligned chat model, trained from scratch on the lab data.

Steps: train a byte-level BPE tokenizer on the lab's text -> initialise a small Llama
-> fine-tune it with safetune's own training loop (plain cross-entropy) on capability +
harmful->refusal + over-refusal data -> save a normal Hugging Face folder -> measure it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from safetune.data import REPO_ROOT, read_records
from safetune.errors import UsageError
from safetune.lab.tokenizer import train_tokenizer
from safetune.modeling import lab_model_dir
from safetune.recipe import validate_tree

DATA_DIR = REPO_ROOT / "data"
# What the aligned model learns: everyday skills, refusing harm, and NOT refusing benign look-alikes.
ALIGNMENT_FILES = ["capability/train.jsonl", "safety/train.jsonl", "over_refusal/train.jsonl"]
# The size checked to reach the lab's targets in a few CPU minutes (about 2.6M parameters).
MODEL_SHAPE = {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4,
               "num_attention_heads": 6, "num_key_value_heads": 6}
TRAIN_SETTINGS = {"max_steps": 1400, "batch_size": 32, "learning_rate": 3e-3, "warmup_steps": 50,
                  "lr_schedule": "cosine", "weight_decay": 0.01, "log_every": 50}


def lab_suites(task: str | None = None) -> list[dict]:
    """The lab's held-out evaluation suites (the same ones the bundled lab recipes use)."""
    suites = [
        {"kind": "harmful", "path": "data/safety/eval.jsonl", "category_field": "category"},
        {"kind": "over_refusal", "path": "data/over_refusal/eval.jsonl"},
        {"kind": "capability", "path": "data/capability/eval.jsonl", "reference_field": "response"},
    ]
    if task:
        suites.append({"kind": "task", "path": f"data/tasks/{task}/test.jsonl", "reference_field": "response"})
    return suites


def all_texts(data_dir: Path) -> list[str]:
    """Every prompt and response in the lab data: the tokenizer's training corpus."""
    texts = []
    for path in sorted(data_dir.rglob("*.jsonl")):
        for row in read_records(str(path)):
            texts.extend(str(row[k]) for k in ("prompt", "response") if k in row)
    return texts


def build(out: Path | None = None, seed: int = 0, steps: int | None = None, scale: float = 1.0,
          show_progress: bool = True, evaluate: bool = True) -> Path:
    """Build the lab model into `out` (default: `lab_model_dir()`); return the folder.

    `steps` and `scale` (a factor on the model width) exist for tests and quick trials.
    """
    from safetune.training import train

    out = Path(out) if out else lab_model_dir()
    if not (DATA_DIR / ALIGNMENT_FILES[0]).is_file():
        raise UsageError(f"lab: no lab data under {DATA_DIR}; run `safetune lab data` first")
    started = time.perf_counter()
    work = out.with_name(f".build-{out.name}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    say = print if show_progress else (lambda *_: None)
    say("lab: training the tokenizer")
    tokenizer = train_tokenizer(all_texts(DATA_DIR), vocab_size=2048)

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

    rows = [row for name in ALIGNMENT_FILES for row in read_records(str(DATA_DIR / name))]
    random.Random(seed).shuffle(rows)
    with (work / "aligned_train.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in rows)

    recipe = validate_tree({
        "name": "lab-build",
        "model": {"path": str(work / "init")},
        "data": {"train": {"path": str(work / "aligned_train.jsonl")}, "max_seq_len": 160},
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
    say(f"lab: model saved to {out} in {time.perf_counter() - started:.0f}s")
    if evaluate:
        measure(out, show_progress=show_progress)
    return out


def measure(model_dir: Path, show_progress: bool = True) -> dict:
    """Evaluate the lab model on the held-out lab suites; writes safety_report.* into it."""
    from safetune.evaluation.runner import evaluate_model
    from safetune.modeling import load_model, load_tokenizer

    recipe = validate_tree({
        "name": "lab-model",
        "model": {"path": str(model_dir)},
        "data": {"train": {"path": "data/capability/train.jsonl"}},
        "train": {"max_steps": 1},
        "eval": {"suites": lab_suites()},
    })
    model = load_model(recipe.model, device="cpu")
    tokenizer = load_tokenizer(recipe.model)
    return evaluate_model(model, tokenizer, recipe, Path(model_dir), checkpoint=str(model_dir), baseline=None,
                          run_info={"method": ["lab-build"], "steps": 0}, progress=show_progress)
