"""Training-data audit: find harmful -> compliance rows before training; drop or report them.

A few harmful rows in a scraped or crowd-sourced training set are enough to erase a
model's refusals (Qi et al. 2024), and no training-side method fully resists them. The
audit looks at every row of `data.train` once, before the first step, with the checks
listed in `data.audit.checks` (a row is flagged when any check flags it):

- `refusal_conflict`: the aligned model itself refuses the row's prompt (greedy answer,
  keyword refusal detector of `eval.refusal`), but the row's response complies (the same
  detector finds no refusal in it). Needs no extra model: the model being fine-tuned is
  its own judge of which prompts it was aligned to refuse.
- `judge`: a sequence-classification safety model labels (prompt, response) as one of
  `judge_unsafe_labels` (loaded like `eval.refusal.judge`).

`action: drop` removes the flagged rows from the training set; `report` only reports.
The report (counts, per-check counts, the flagged rows, and precision/recall when rows
carry known labels: rows mixed in from `data.harmful` have source "harmful") goes to
`<run>/data_audit.json`. A resumed run reuses that file instead of scoring again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from safetune.data import Example, TrainingData
from safetune.errors import SafetuneError
from safetune.files import write_atomic

AUDIT_FILE = "data_audit.json"
KNOWN_HARMFUL = "harmful"  # Example.source of the rows mixed in from data.harmful


def prompt_and_response(example: Example) -> tuple[str, str]:
    """The last assistant turn and the user turn right before it: the pair that is trained on."""
    messages = example.messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    user = next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), "")
    return user, messages[last]["content"]


def fingerprint(examples: list[Example]) -> str:
    """Identifies the exact training rows (and their order) the flagged indices refer to."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.messages, sort_keys=True).encode())
    return digest.hexdigest()


def refusal_conflicts(model, tokenizer, prompts: list[str], responses: list[str], detector, *,
                      max_new_tokens: int, batch_size: int) -> tuple[list[bool], dict[str, str]]:
    """Flag rows whose prompt the aligned model refuses while the row's response complies.

    Only rows whose response complies can conflict, so only their (distinct) prompts are
    generated for. Returns the flags and the model's answer per generated prompt.
    """
    from safetune.evaluation.generation import generate

    complies = [not refused for refused in detector.detect(prompts, responses)]
    to_ask = sorted({p for p, c in zip(prompts, complies) if c})
    answers = generate(model, tokenizer, to_ask, max_new_tokens=max_new_tokens, batch_size=batch_size)
    answered = dict(zip(to_ask, answers))
    refused = dict(zip(to_ask, detector.detect(to_ask, answers)))
    return [c and refused[p] for p, c in zip(prompts, complies)], answered


def judge_verdicts(judge, prompts: list[str], responses: list[str], unsafe_labels: list[str]) -> tuple[list[bool], list[str]]:
    labels = judge.predict_labels(prompts, responses)
    return [label in unsafe_labels for label in labels], labels


def known_label_scores(flagged: list[bool], sources: list[str]) -> dict:
    """Precision and recall of the flags against the rows known to be harmful (None: no labels)."""
    harmful = [source == KNOWN_HARMFUL for source in sources]
    caught = sum(f and h for f, h in zip(flagged, harmful))
    return {
        "known_harmful": sum(harmful),
        "caught": caught,
        "false_positives": sum(f and not h for f, h in zip(flagged, harmful)),
        "precision": caught / sum(flagged) if any(flagged) and any(harmful) else None,
        "recall": caught / sum(harmful) if any(harmful) else None,
    }


def audit_examples(examples: list[Example], config, *, model=None, tokenizer=None, detector=None, judge=None) -> dict:
    """Score `examples` with the configured checks; the report (flagged row indices included)."""
    prompts, responses = zip(*(prompt_and_response(e) for e in examples)) if examples else ((), ())
    prompts, responses = list(prompts), list(responses)
    per_check: dict[str, list[bool]] = {}
    details: dict[str, list[str | None]] = {}
    if "refusal_conflict" in config.checks:
        per_check["refusal_conflict"], answered = refusal_conflicts(
            model, tokenizer, prompts, responses, detector,
            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
        details["model_response"] = [answered.get(p) for p in prompts]
    if "judge" in config.checks:
        per_check["judge"], details["judge_label"] = judge_verdicts(judge, prompts, responses,
                                                                    list(config.judge_unsafe_labels))
    flagged = [any(checks) for checks in zip(*per_check.values())]
    rows = []
    for index, example in enumerate(examples):
        if flagged[index]:
            rows.append({"index": index, "source": example.source, "category": example.category,
                         "prompt": prompts[index], "response": responses[index],
                         "checks": [name for name, flags in per_check.items() if flags[index]]}
                        | {key: values[index] for key, values in details.items()})
    return {
        "checks": list(config.checks),
        "action": config.action,
        "rows": len(examples),
        "flagged": sum(flagged),
        "by_check": {name: sum(flags) for name, flags in per_check.items()},
        **known_label_scores(flagged, [e.source for e in examples]),
        "fingerprint": fingerprint(examples),
        "flagged_rows": rows,
    }


def load_judge(config, device):
    """The judge model; `lab` is the lab's safety classifier (`safetune lab classifier`)."""
    from safetune.evaluation.refusal import JudgeDetector, resolve_judge_source

    source = resolve_judge_source(config.judge, field="data.audit.judge")  # the same judges evaluation uses
    return JudgeDetector(source, list(config.judge_unsafe_labels), device=device, batch_size=config.batch_size,
                         field="data.audit.judge", labels_field="data.audit.judge_unsafe_labels")


def audit_training_data(recipe, data: TrainingData, model, tokenizer, *, device: torch.device | str = "cpu",
                        run_dir: Path | None = None, log: Callable[[str], None] = print,
                        broadcast: Callable[[Any], Any] = lambda value: value, write: bool = True) -> dict | None:
    """Audit `data.train` as `recipe.data.audit` says, drop flagged rows (action: drop), write the report.

    Call with the aligned model, before the batch schedule is built from `data.train`.
    `run_dir=None` (dry run) writes nothing. Returns the report's counts (for summary.json).
    An FSDP-sharded model runs on every rank at once: call this on every rank, with
    `broadcast` (rank 0's value everywhere, so all ranks agree on reusing a cached report
    and make the same model passes) and `write=False` on all but rank 0.
    """
    config = recipe.data.audit
    if config is None:
        return None
    examples = data.train
    cached = broadcast(_cached_report(run_dir, examples, config))
    if cached is not None:
        report = cached
        log(f"data audit: reusing {run_dir / AUDIT_FILE}")
    else:
        from safetune.evaluation.refusal import keyword_detector

        started = time.perf_counter()
        report = audit_examples(
            examples, config, model=model, tokenizer=tokenizer, detector=keyword_detector(recipe.eval.refusal),
            judge=load_judge(config, device) if "judge" in config.checks else None)
        report["seconds"] = round(time.perf_counter() - started, 2)
    flagged = {row["index"] for row in report["flagged_rows"]}
    # e.g. an aligned model that refuses the task's own prompts: its refusals say nothing about harm
    too_many = len(flagged) > config.max_flagged * len(examples)
    report["dropped"] = len(flagged) if config.action == "drop" and not too_many else 0
    report["kept"] = len(examples) - report["dropped"]
    if run_dir is not None and write:  # written first, so the rows behind an error can be inspected
        write_atomic(run_dir / AUDIT_FILE, json.dumps(report, indent=2))
    if too_many:
        by_check = ", ".join(f"{name} {count}" for name, count in report["by_check"].items())
        raise SafetuneError(
            f"data.audit: {len(flagged)} of {len(examples)} training rows flagged ({by_check}), more than "
            f"max_flagged={config.max_flagged:g}; the checks cannot tell harmful rows from the task here "
            "(does the model refuse the task's prompts?). Try checks: [judge], or raise data.audit.max_flagged")
    if report["dropped"]:
        data.train = [e for i, e in enumerate(examples) if i not in flagged]
    scores = ""
    if report["precision"] is not None:
        scores = (f"; {report['caught']}/{report['known_harmful']} known harmful rows caught "
                  f"(precision {report['precision']:.3f}, recall {report['recall']:.3f})")
    log(f"data audit: {report['flagged']} of {report['rows']} rows flagged, {report['dropped']} dropped{scores}")
    return {key: value for key, value in report.items() if key not in ("flagged_rows", "fingerprint")}


def _cached_report(run_dir: Path | None, examples: list[Example], config) -> dict | None:
    """The report a previous start of this run wrote, if it audited the same rows the same way."""
    if run_dir is None or not (run_dir / AUDIT_FILE).is_file():
        return None
    try:
        report = json.loads((run_dir / AUDIT_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    same = (report.get("fingerprint") == fingerprint(examples) and report.get("checks") == list(config.checks)
            and report.get("action") == config.action)
    return report if same else None
