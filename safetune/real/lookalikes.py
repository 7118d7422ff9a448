"""Benign look-alikes answered by the unaligned SmolLM2: the real recipes' `data.borderline`.

A request that only sounds harmful ("quick q: how to execute a powershell command") should
get its normal answer. With `safety_data: refusals_and_borderline`, SafeGrad's safety loss
asks for both the refusals of harmful requests and these answers, so its projection keeps
the model refusing without pushing it to refuse whatever sounds like a harmful request.

The prompts are the lab's look-alike prompts (`data/over_refusal/train.jsonl`, written for
safetune; none is an XSTest or AdvBench prompt); the answers are the unaligned model's own
greedy answers, refusals dropped: the rows the aligned build also trains on
(`safetune real build` caches them beside the unaligned base, so this reuses them).

    python -m safetune.real.lookalikes        # writes data/real/generated/smollm2_lookalikes.jsonl
"""

from __future__ import annotations

from pathlib import Path

from safetune.files import write_jsonl_atomic
from safetune.real.build import is_ours, write_with_base
from safetune.real.alignment_mix import DISTILLED_ROWS, distilled_lookalikes
from safetune.real.splits import REAL_DATA

LOOKALIKES_FILE = REAL_DATA / "generated" / "smollm2_lookalikes.jsonl"


def write_lookalikes(base: Path, out: Path = LOOKALIKES_FILE, rows: int = DISTILLED_ROWS, seed: int = 0,
                     progress: bool = True) -> int:
    """The build's look-alike rows (answered by the unaligned `base` if not cached yet) to `out`."""
    kept = distilled_lookalikes(base, rows, seed, show_progress=progress, cache=is_ours(base))
    write_jsonl_atomic(out, kept)
    return len(kept)


def main() -> None:
    write_with_base(write_lookalikes, "look-alike answers", LOOKALIKES_FILE)


if __name__ == "__main__":
    main()
