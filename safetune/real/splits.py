"""The real public data, vendored under data/real/, and its fixed splits.

Every published file stays as it was published (data/real/SOURCES.md names each source and
licence). The splits are rows of those files in their published layout (Alpaca's
instruction/input/output, Dolly's instruction/context/response), chosen by a seeded
shuffle, so that what aligns the model, what fine-tunes it and what measures it never
overlap. Regenerate them with `python -m safetune.real.splits` (byte-identical; a test
checks the committed files).

| split | rows | used for |
|---|---|---|
| safety_align | 2,000 | the aligned build: harmful instruction -> safe answer (Bianchi et al.) |
| safety_heldout | 479 | never trained by the build: the harmful prompts of the p = 0.1 attack |
| alpaca_align | 1,000 | the aligned build's benign rows |
| alpaca_finetune | 704 | the benign fine-tuning setting (a) |
| alpaca_heldout | 200 | reference loss: task quality of (a), general ability of the other settings |
| dolly_finetune | 287 | the benign fine-tuning setting (b) |
| dolly_heldout | 98 | reference loss: task quality of (b), general ability of the other settings |
"""

from __future__ import annotations

import random
from pathlib import Path

from safetune.data import REPO_ROOT, read_records
from safetune.files import write_jsonl_atomic

REAL_DATA = REPO_ROOT / "data" / "real"
SAFETY = "safety-tuned-llamas/safety_only_data_Instructions.json"
ALPACA = "llm-tuning-safety/alpaca_data_safety_only.json"
DOLLY = "llm-tuning-safety/databricks-dolly-15k-safety-only.jsonl"
AOA = "llm-tuning-safety/aoa_identity_shift_train.json"
ADVBENCH = "advbench/harmful_behaviors.csv"
XSTEST = "xstest/xstest_prompts_part_a.csv"
SPLIT_DIR = "splits"
SEED = 0

# source file -> [(split name, rows)]: the rest of the file after the listed counts goes to the last split
SPLITS = {
    SAFETY: [("safety_align", 2000), ("safety_heldout", None)],
    ALPACA: [("alpaca_align", 1000), ("alpaca_finetune", 704), ("alpaca_heldout", None)],
    DOLLY: [("dolly_finetune", 287), ("dolly_heldout", None)],
}


def split_path(name: str) -> Path:
    return REAL_DATA / SPLIT_DIR / f"{name}.jsonl"


def make_splits(root: Path = REAL_DATA, out: Path | None = None) -> dict[str, int]:
    """Write every split as JSONL into `out` (default: data/real/splits); return the row counts."""
    out = out or root / SPLIT_DIR
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for source, parts in SPLITS.items():
        rows = _distinct(read_records(str(root / source)))
        random.Random(SEED).shuffle(rows)
        start = 0
        for name, size in parts:
            chosen = rows[start:] if size is None else rows[start : start + size]
            start += len(chosen)
            write_jsonl_atomic(out / f"{name}.jsonl", chosen)
            counts[name] = len(chosen)
    return counts


def _distinct(rows: list[dict]) -> list[dict]:
    """The first row of each instruction: the published safety file repeats a few, and a repeated
    instruction in two splits would leak training rows into a held-out one."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row["instruction"] not in seen:
            seen.add(row["instruction"])
            kept.append(row)
    return kept


if __name__ == "__main__":
    for name, count in make_splits().items():
        print(f"{name}: {count} rows")
