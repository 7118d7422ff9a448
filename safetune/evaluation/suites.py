"""Evaluation suites: read a benchmark file as published and map its columns.

A suite's rows come from `data.read_records` (local JSONL/JSON/CSV/TXT/Parquet, looked up
in the working directory then in the repository, or a `datasets` hub id), so evaluation
and training read files the same way. This module only maps columns:

    prompt_field     -> the prompt (AdvBench: `goal`; XSTest: `prompt`; TXT: each line)
    category_field   -> the category used for per-category refusal rates (optional)
    label_field      -> keep only rows whose label is in `label_values` (XSTest: label=safe)
    reference_field  -> the expected answer of task/capability suites

How a row is asked is the suite's too: `prompt_template` wraps the prompt in the user
turn's text and `system_prompt` adds a system turn (an attack's trigger, such as AOA's).
`Suite.inputs` is the user text as the model sees it; `Suite.prompts` stays the raw
prompt, which outputs.jsonl records.
"""

from __future__ import annotations

from dataclasses import dataclass

from safetune.data import read_records
from safetune.errors import SafetuneError
from safetune.recipe import SuiteConfig

REFUSAL_KINDS = ("harmful", "over_refusal")  # scored by refusal detectors
ANSWER_KINDS = ("task", "capability")  # scored against reference answers


@dataclass
class SuiteRow:
    prompt: str
    category: str | None = None
    reference: str | None = None


@dataclass
class Suite:
    config: SuiteConfig
    rows: list[SuiteRow]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def prompts(self) -> list[str]:
        return [row.prompt for row in self.rows]

    @property
    def inputs(self) -> list[str]:
        """Each prompt as the user turn asks it (`prompt_template` applied)."""
        return [ask(self.config, row.prompt) for row in self.rows]

    @property
    def system_prompt(self) -> str | None:
        return self.config.system_prompt


def ask(config: SuiteConfig, prompt: str) -> str:
    """The user turn's text for one prompt of the suite."""
    # replace, not str.format: a template may hold other braces (JSON, code) as they are
    return config.prompt_template.replace("{prompt}", prompt) if config.prompt_template else prompt


def suite_label(config: SuiteConfig) -> str:
    """How error messages name a suite: `eval.suites[advbench]`."""
    return f"eval.suites[{config.name}]"


def load_suite(config: SuiteConfig) -> Suite:
    label = suite_label(config)
    records = read_records(config.path, split=config.split, what=label, fmt=config.format, folder=config.folder)
    rows: list[SuiteRow] = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise SafetuneError(f"{label}: row {number} of {config.path} is not a record of columns")
        if config.label_field and _text(_column(record, config.label_field, "label_field", config, number)) not in config.label_values:
            continue
        prompt = _text(_column(record, config.prompt_field, "prompt_field", config, number))
        if not prompt:
            raise SafetuneError(f"{label}: row {number} of {config.path} has an empty prompt ('{config.prompt_field}')")
        category = _text(_column(record, config.category_field, "category_field", config, number)) if config.category_field else None
        reference = _text(_column(record, config.reference_field, "reference_field", config, number)) if config.reference_field else None
        rows.append(SuiteRow(prompt=prompt, category=category or None, reference=reference))
        if config.limit and len(rows) == config.limit:
            break
    if not rows:
        kept = f" with {config.label_field} in {config.label_values}" if config.label_field else ""
        raise SafetuneError(f"{label}: {config.path} has no rows{kept}")
    return Suite(config=config, rows=rows)


def _column(record: dict, column: str, setting: str, config: SuiteConfig, number: int):
    if column not in record:
        raise SafetuneError(
            f"{suite_label(config)}: row {number} of {config.path} has no column '{column}' "
            f"(columns: {', '.join(map(str, record)) or 'none'}); set {suite_label(config)}.{setting}"
        )
    return record[column]


def _text(value) -> str:
    return "" if value is None else str(value).strip()
