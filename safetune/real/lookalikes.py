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

import json
import sys
from pathlib import Path

from safetune.files import write_atomic
from safetune.real.build import DISTILLED_ROWS, distilled_lookalikes
from safetune.real.splits import REAL_DATA

LOOKALIKES_FILE = REAL_DATA / "generated" / "smollm2_lookalikes.jsonl"


def write_lookalikes(base: Path, out: Path = LOOKALIKES_FILE, rows: int = DISTILLED_ROWS, seed: int = 0,
                     progress: bool = True) -> int:
    """The build's look-alike rows (answered by the unaligned `base` if not cached yet) to `out`."""
    kept = distilled_lookalikes(base, rows, seed, show_progress=progress)
    write_atomic(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
    return len(kept)


def main() -> None:
    from safetune.errors import SafetuneError
    from safetune.real.build import base_model_dir, convert_base

    try:
        base = Path(sys.argv[1]) if len(sys.argv) > 1 else convert_base(base_model_dir())
        print(f"{write_lookalikes(base)} look-alike answers written to {LOOKALIKES_FILE}")
    except SafetuneError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
