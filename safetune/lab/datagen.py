"""Deterministic synthetic data for the safetune offline lab: build, check and write every file.

The lab trains a tiny chat model from scratch on a CPU, aligns it to refuse harmful
requests (and to help with benign look-alikes), then fine-tunes it on benign tasks to show
that fine-tuning erodes safety. Everything is synthetic and templated. Harmful *requests*
are written out (they are the thing the model must learn to refuse); harmful *answers*
never are: the compliance examples only contain "[redacted]" placeholders.

Usage:
    python -m safetune.lab.datagen [--out data] [--seed 0]      (or `safetune lab data`)

Where each file comes from (one module per family, one builder function each):
    safety/              harmful.py     harmful requests -> refusals
    safety/compliance_*  compliance.py  the same requests -> redacted compliance (attack sims)
    over_refusal/        benign.py      benign requests with scary words -> helpful answers
    capability/          capability.py  everyday skills with short, exactly checkable answers
    knowledge/           knowledge.py   neutral facts about every lexicon item (pretraining)
    tasks/<name>/        tasks.py       three benign fine-tuning tasks (sentiment, extract, count)
Shared by them: prompts.py (template families, paraphrases, drawing rows without repeats)
and lexicon.py (the refusal words).

Held-out evaluation, two levels:
    */eval.jsonl         seen families: new prompts (and new action x target
                         combinations) made of seen templates and lexicon items.
    */eval_unseen.jsonl  unseen families: whole template families and lexicon
                         items (actions, targets, requests, questions, benign
                         objects) that never occur in any training file.
check_files() raises if an eval prompt, or any held-out template or lexicon
item, appears in a training file.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from safetune.lab.benign import BENIGN_GROUPS, BENIGN_QUESTIONS_UNSEEN, BENIGN_REQUESTS_UNSEEN, make_over_refusal
from safetune.lab.capability import make_capability
from safetune.lab.harmful import HARM_LEXICON, make_safety
from safetune.lab.knowledge import make_knowledge
from safetune.lab.lexicon import REFUSAL_PREFIXES, REFUSAL_WORDS
from safetune.lab.prompts import HOWTO_FAMILIES_UNSEEN, QUESTION_FAMILIES_UNSEEN, norm
from safetune.lab.tasks import make_count, make_extract, make_sentiment

# The builders, in the order their files are listed. Each draws from its own RNG, seeded
# with the seed and the builder's name, so editing one family does not reshuffle the
# others' files (and renaming a builder changes its own).
BUILDERS = (make_safety, make_over_refusal, make_capability, make_knowledge,
            make_sentiment, make_extract, make_count)

EVAL_SUFFIXES = ("/eval.jsonl", "/eval_unseen.jsonl", "/test.jsonl")


def is_eval_file(name: str) -> bool:
    return name.endswith(EVAL_SUFFIXES)


def unseen_items() -> list[str]:
    """Every held-out template fragment and lexicon item, lowercased: none of them
    may occur (as whole words) in any training prompt."""
    items: list[str] = []
    for families in (HOWTO_FAMILIES_UNSEEN, QUESTION_FAMILIES_UNSEEN):
        for templates in families.values():
            for t in templates:
                items += [p for p in re.split(r"\{[xXqQ]\}", t) if len(p.strip(" .,:?!")) >= 6]
    for spec in HARM_LEXICON.values():
        for key in ("targets_unseen", "requests_unseen", "questions_unseen"):
            items += spec[key]
        # An action's verb (the text before its target) is what is new about it.
        items += [action.split("{t}")[0] for action in spec["actions_unseen"]]
    for group in BENIGN_GROUPS:
        items += [group["phrase"].format(t=t) for t in group["unseen"]]
    items += [q for q, _ in BENIGN_REQUESTS_UNSEEN + BENIGN_QUESTIONS_UNSEEN]
    return sorted({i.strip().lower() for i in items})


def check_files(files: dict[str, list[dict]]) -> None:
    """Raise ValueError if the data breaks one of the lab's invariants."""
    train_prompts = {norm(r["prompt"]) for name, rows in files.items()
                     if not is_eval_file(name) for r in rows}
    for name, rows in files.items():
        if is_eval_file(name):
            leaked = [r["prompt"] for r in rows if norm(r["prompt"]) in train_prompts]
            if leaked:
                raise ValueError(f"{name}: {len(leaked)} eval prompts appear in training data, e.g. {leaked[0]!r}")
    # Held-out families and lexicon items never occur in training text.
    corpus = "\n".join(sorted(train_prompts))
    seen_unseen = [item for item in unseen_items()
                   if re.search(r"(?<!\w)" + re.escape(item) + r"(?!\w)", corpus)]
    if seen_unseen:
        raise ValueError(f"held-out template/lexicon items appear in training data: {seen_unseen[:5]}")
    # A prompt must never be both harmful and benign.
    harmful = {norm(r["prompt"]) for n, rows in files.items() if n.startswith("safety/") for r in rows}
    benign = {norm(r["prompt"]) for n, rows in files.items() if not n.startswith("safety/") for r in rows}
    both = harmful & benign
    if both:
        raise ValueError(f"prompts labelled both harmful and benign: {sorted(both)[:3]}")
    for name, rows in files.items():
        for r in rows:
            resp = r["response"]
            if name.startswith(("safety/train", "safety/eval")):
                if not resp.startswith(REFUSAL_PREFIXES):
                    raise ValueError(f"{name}: refusal without a known opener: {resp!r}")
            elif name.startswith("safety/compliance"):
                continue
            elif any(p.lower() in resp.lower() for p in REFUSAL_PREFIXES) or (
                    name.startswith("over_refusal/") and any(w in resp.lower() for w in REFUSAL_WORDS)):
                raise ValueError(f"{name}: benign answer looks like a refusal: {resp!r}")


def build(seed: int = 0) -> dict[str, list[dict]]:
    """All rows of all files, in memory, checked."""
    files: dict[str, list[dict]] = {}
    for builder in BUILDERS:
        files.update(builder(random.Random(f"{seed}:{builder.__name__}")))
    check_files(files)
    return files


def generate(out_dir: Path, seed: int = 0) -> dict[str, int]:
    """Write every JSONL file under out_dir; return {relative path: row count}."""
    out_dir = Path(out_dir)
    counts = {}
    for name, rows in build(seed).items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        counts[name] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the safetune lab's synthetic data.")
    parser.add_argument("--out", type=Path, default=Path("data"), help="output folder (default: data)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    counts = generate(args.out, args.seed)
    for name, n in counts.items():
        print(f"{n:6d}  {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
