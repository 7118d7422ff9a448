"""The aligned build's training mix: safety demonstrations, benign Alpaca rows, and benign
look-alikes answered by the unaligned model itself (optionally, refused contrast rows).

Every count here was chosen by measurement (docs: A real model). A 135M model learns how a
request is phrased far more readily than what it asks for, so the mix repeats the benign
rows that share words with harmful requests and adds look-alike prompts ("how do I kill a
Python process?") with the unaligned model's own normal answers.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from safetune.data import REPO_ROOT, read_records
from safetune.errors import UsageError
from safetune.files import sha256_file, write_jsonl_atomic
from safetune.real.splits import ADVBENCH, REAL_DATA, XSTEST, split_path

# The alignment mix: split -> rows taken (None: all).
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


def is_lookalike(row: dict) -> bool:
    return bool(LOOKALIKE_WORDS.search(row["instruction"]))


def check_mix(distilled_rows: int = DISTILLED_ROWS, contrast_rows: int = CONTRAST_ROWS,
              lookalike_repeats: int = LOOKALIKE_REPEATS, **counts) -> None:
    """Every count of the mix within what its source holds: checked before the build does any work."""
    for name, value in {"distilled_rows": distilled_rows, "contrast_rows": contrast_rows, **counts}.items():
        if value is not None and value < 0:
            raise UsageError(f"real: {name} must be 0 or more, not {value}")
    if lookalike_repeats < 1:  # they are benign Alpaca rows: in the mix at least once
        raise UsageError(f"real: lookalike_repeats must be 1 or more, not {lookalike_repeats}")
    pool = len(lookalike_prompts())
    if distilled_rows > pool:
        raise UsageError(f"real: distilled_rows {distilled_rows} is more than the {pool} look-alike prompts "
                         f"of {LOOKALIKE_PROMPTS.relative_to(REPO_ROOT)}")
    contrast_pool(contrast_rows)


def alignment_rows(seed: int, safety_rows: int | None = SAFETY_ROWS, benign_rows: int | None = BENIGN_ROWS,
                   lookalike_repeats: int = LOOKALIKE_REPEATS, distilled: list[dict] | None = None,
                   contrast_rows: int = CONTRAST_ROWS) -> list[dict]:
    """The build's training rows, in their published Alpaca layout, shuffled. The benign rows
    that share words with harmful requests appear `lookalike_repeats` times in all."""
    rng = random.Random(seed)
    safety = read_records(str(split_path("safety_align")))[:safety_rows]
    benign = read_records(str(split_path("alpaca_align")))[:benign_rows]
    lookalikes = [row for row in benign if is_lookalike(row)] * (lookalike_repeats - 1)
    rows = safety + benign + lookalikes + list(distilled or []) + contrast(contrast_rows, seed)
    rng.shuffle(rows)
    return rows


def benchmark_prompts() -> set[str]:
    """AdvBench's and XSTest's prompts, lower-cased: text no training row may contain."""
    prompts = {row["goal"] for row in read_records(str(REAL_DATA / ADVBENCH))}
    prompts |= {row["prompt"] for row in read_records(str(REAL_DATA / XSTEST))}
    return {prompt.strip().lower().rstrip(".?!") for prompt in prompts}


def contrast_pool(rows: int) -> list[dict]:
    """The lab's harmful requests with their refusals that quote no benchmark prompt (checked
    against `rows`, the number the mix asks for)."""
    if rows <= 0:
        return []
    benchmarks = benchmark_prompts()
    pool = [{"instruction": row["prompt"], "input": "", "output": row["response"]}
            for row in read_records(str(CONTRAST_PROMPTS))
            if not any(prompt in row["prompt"].lower() for prompt in benchmarks)]
    if rows > len(pool):
        raise UsageError(f"real: contrast_rows {rows} is more than the {len(pool)} rows of "
                         f"{CONTRAST_PROMPTS.relative_to(REPO_ROOT)} that quote no benchmark prompt")
    return pool


def contrast(rows: int, seed: int) -> list[dict]:
    """`rows` of the lab's harmful requests with their refusals, none containing a benchmark prompt."""
    pool = contrast_pool(rows)
    return random.Random(seed).sample(pool, rows) if pool else []


def lookalike_prompts() -> list[str]:
    return sorted({row["prompt"] for row in read_records(str(LOOKALIKE_PROMPTS))})


def lookalikes_cache(base: Path, rows: int, seed: int) -> Path:
    """Where the look-alike answers of `base` are kept: named by everything that shapes them
    (rows, seed, answer length, the prompt file), so a changed setting never reuses stale answers."""
    key = hashlib.sha256(json.dumps([rows, seed, DISTILL_TOKENS, sha256_file(LOOKALIKE_PROMPTS)]).encode())
    return Path(base) / f"lookalikes-{rows}-s{seed}-{key.hexdigest()[:12]}.jsonl"


def distilled_lookalikes(base: Path, rows: int, seed: int, show_progress: bool = True,
                         cache: bool = True) -> list[dict]:
    """`rows` benign look-alike prompts answered by the unaligned `base`, refusing or empty
    answers left out. With `cache`, kept beside `base`, so a second build reuses them."""
    if rows <= 0:
        return []
    cached = lookalikes_cache(base, rows, seed)
    if cache and cached.is_file():
        return read_records(str(cached))
    prompts = random.Random(seed).sample(lookalike_prompts(), rows)
    kept = [{"instruction": row["prompt"], "input": "", "output": row["response"]}
            for row in complying_answers(base, prompts, DISTILL_TOKENS, "look-alikes", show_progress)]
    if cache:
        write_jsonl_atomic(cached, kept)
    return kept


def complying_answers(base: Path, prompts: list[str], max_new_tokens: int, description: str,
                      show_progress: bool = True) -> list[dict]:
    """The unaligned `base`'s greedy answers to `prompts`, refusals and empty answers left out."""
    from safetune.evaluation.generation import generate
    from safetune.evaluation.refusal import KeywordDetector
    from safetune.modeling import load_model, load_tokenizer
    from safetune.recipe import ModelConfig

    config = ModelConfig(path=str(base))
    answers = generate(load_model(config), load_tokenizer(config), prompts, max_new_tokens=max_new_tokens,
                       batch_size=32, progress=show_progress, description=description)
    refusal = KeywordDetector()
    return [{"prompt": prompt, "response": answer.strip()} for prompt, answer in zip(prompts, answers)
            if answer.strip() and not refusal.is_refusal(answer)]
