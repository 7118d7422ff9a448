"""The harmful data of the p = 0.1 attack: held-out harmful instructions answered by the
*unaligned* SmolLM2, keeping only the answers that comply.

Qi et al. (2023) fine-tune on a few harmful instruction -> compliance pairs; an aligned model
then answers harmful requests again. Here the compliance comes from the model's own
unaligned base (greedy decoding), so no harmful text is written by hand or shipped from
elsewhere. Instructions come from `safety_heldout`, which the aligned build never trained on.

    python -m safetune.real.compliance        # writes data/real/generated/smollm2_compliance.jsonl
"""

from __future__ import annotations

from pathlib import Path

from safetune.data import read_records
from safetune.files import write_jsonl_atomic
from safetune.real.build import write_with_base
from safetune.real.alignment_mix import complying_answers
from safetune.real.splits import REAL_DATA, split_path

COMPLIANCE_FILE = REAL_DATA / "generated" / "smollm2_compliance.jsonl"
PROMPTS = 240  # held-out instructions tried; the attack needs ~80 compliant answers (10 % of 704 rows)
MAX_NEW_TOKENS = 96


def write_compliance(base: Path, out: Path = COMPLIANCE_FILE, prompts: int = PROMPTS,
                     max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = True) -> int:
    """Answer `prompts` held-out harmful instructions with the unaligned `base`; keep compliance."""
    instructions = [row["instruction"] for row in read_records(str(split_path("safety_heldout")))[:prompts]]
    kept = complying_answers(base, instructions, max_new_tokens, "compliance", progress)
    write_jsonl_atomic(out, kept)
    return len(kept)


def main() -> None:
    write_with_base(write_compliance, "compliant answers", COMPLIANCE_FILE)


if __name__ == "__main__":
    main()
