"""Training data: read sources, map columns, tokenise with loss masks, mix, batch.

An *example* is a chat (`messages`: list of {role, content}) plus an optional category.
Tokenisation trains only on assistant turns: every other token gets label -100.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from safetune.errors import SafetuneError, UsageError
from safetune.recipe import DataConfig, SourceConfig

IGNORE_INDEX = -100
REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "txt"}


@dataclass
class Example:
    messages: list[dict[str, str]]
    category: str | None = None
    source: str = "task"  # task | safety | harmful: lets tests and logs see what a batch holds
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- reading
def resolve_local_path(path: str) -> Path | None:
    """A relative path is looked up in the working directory, then in the repository."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    for base in (Path.cwd(), REPO_ROOT):
        if (base / candidate).exists():
            return base / candidate
    return None


def looks_like_file(path: str) -> bool:
    return Path(path).suffix.lower() in LOCAL_FORMATS or path.startswith((".", "/", "~"))


def read_records(path: str, *, split: str = "train", what: str = "data", fmt: str = "auto") -> list[dict[str, Any]]:
    """Rows of a local JSONL/JSON/CSV/Parquet/TXT file, or of a `datasets` hub id."""
    local = resolve_local_path(path)
    if local is None and (fmt not in ("auto", "hub") or looks_like_file(path)):
        raise UsageError(f"{what}.path: file not found: {path}")
    if local is None or fmt == "hub":
        return _read_hub(path, split, what)
    fmt = LOCAL_FORMATS.get(local.suffix.lower(), "jsonl") if fmt == "auto" else fmt
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(local.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SafetuneError(f"{local}:{number}: invalid JSON ({err.msg})") from None
        return rows
    if fmt == "json":
        try:
            loaded = json.loads(local.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SafetuneError(f"{local}:{err.lineno}: invalid JSON ({err.msg})") from None
        return loaded if isinstance(loaded, list) else loaded.get(split, loaded.get("data", []))
    if fmt == "csv":
        with local.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if fmt == "txt":
        return [{"prompt": line.strip()} for line in local.read_text(encoding="utf-8").splitlines() if line.strip()]
    from datasets import Dataset  # parquet: let `datasets` (pyarrow) do it

    return Dataset.from_parquet(str(local)).to_list()


def _read_hub(path: str, split: str, what: str) -> list[dict[str, Any]]:
    import datasets

    try:
        return datasets.load_dataset(path, split=split).to_list()
    except Exception as err:  # datasets raises many types; all mean "not available"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SafetuneError(f"{what}.path: cannot load dataset '{path}' (split {split}): {first}") from None


def load_examples(source: SourceConfig, what: str, kind: str = "task") -> list[Example]:
    rows = read_records(source.path, split=source.split, what=what)
    if source.limit:
        rows = rows[: source.limit]
    if not rows:
        raise SafetuneError(f"{what}.path: {source.path} has no rows")
    examples = []
    for number, row in enumerate(rows, start=1):
        if source.messages_field:
            messages = row.get(source.messages_field)
            if not isinstance(messages, list) or not any(m.get("role") == "assistant" for m in messages):
                raise SafetuneError(
                    f"{what}: row {number} of {source.path}: '{source.messages_field}' must be a list "
                    "of {role, content} with at least one assistant turn"
                )
        else:
            for column in (source.prompt_field, source.response_field):
                if column not in row:
                    raise SafetuneError(
                        f"{what}: row {number} of {source.path} has no column '{column}' "
                        f"(columns: {', '.join(row)}); set {what}.{'prompt_field' if column == source.prompt_field else 'response_field'}"
                    )
            messages = [
                {"role": "user", "content": str(row[source.prompt_field])},
                {"role": "assistant", "content": str(row[source.response_field])},
            ]
        category = row.get(source.category_field) if source.category_field else None
        examples.append(Example(messages=messages, category=category, source=kind))
    return examples


# --------------------------------------------------------------------------- tokenising
def tokenize_example(example: Example, tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> Example:
    """Fill input_ids/labels: assistant turns are trained on, everything else is -100.

    Each segment is rendered with the chat template as a prefix difference and tokenised
    on its own, so the mask boundary falls exactly between prompt and response tokens.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for turn in range(len(example.messages)):
        is_assistant = example.messages[turn]["role"] == "assistant"
        if is_assistant:  # the generation prompt ("<|assistant|>\n") belongs to the prompt side
            before = _render(tokenizer, example.messages[:turn], generation_prompt=True)
            _append(tokenizer, before[len(rendered):], input_ids, labels, train=False)
            rendered = before
        after = _render(tokenizer, example.messages[: turn + 1], generation_prompt=False)
        if not after.startswith(rendered):
            raise SafetuneError("model.chat_template: rendering is not prefix-stable; loss masking needs it")
        segment = after[len(rendered):]
        if is_assistant and tokenizer.eos_token in segment:
            # train up to and including EOS; what the template adds after it (a newline) is not an answer
            answer, eos, rest = segment.partition(tokenizer.eos_token)
            _append(tokenizer, answer + eos, input_ids, labels, train=True)
            _append(tokenizer, rest, input_ids, labels, train=False)
        else:
            _append(tokenizer, segment, input_ids, labels, train=is_assistant)
        rendered = after
    if tokenizer.eos_token_id not in input_ids[-2:]:  # templates without EOS still teach the model to stop
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    example.input_ids = input_ids[:max_seq_len]
    example.labels = labels[:max_seq_len]
    return example


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _append(tokenizer, text: str, input_ids: list[int], labels: list[int], train: bool) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    input_ids.extend(ids)
    labels.extend(ids if train else [IGNORE_INDEX] * len(ids))


def tokenize_all(examples: list[Example], tokenizer, max_seq_len: int) -> list[Example]:
    done = [tokenize_example(e, tokenizer, max_seq_len) for e in examples]
    # A prompt longer than max_seq_len leaves nothing to learn from: drop it.
    return [e for e in done if any(label != IGNORE_INDEX for label in e.labels)]


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# --------------------------------------------------------------------------- datasets
@dataclass
class TrainingData:
    train: list[Example]
    eval: list[Example]
    safety: list[Example]
    harmful_in_train: int = 0


def build_training_data(config: DataConfig, tokenizer, seed: int) -> TrainingData:
    """Task data (+ a fraction `harmful_ratio` of harmful examples), eval split, safety data."""
    rng = random.Random(seed)
    train = load_examples(config.train, "data.train")
    evaluation = load_examples(config.eval, "data.eval") if config.eval else []
    if config.eval_fraction:
        if config.shuffle:
            rng.shuffle(train)
        cut = max(1, int(len(train) * config.eval_fraction))
        evaluation, train = train[:cut], train[cut:]
    harmful_count = 0
    if config.harmful_ratio > 0:
        # p is the share of harmful examples in the final fine-tuning set (the literature's attack setting).
        pool = load_examples(config.harmful, "data.harmful", kind="harmful")
        harmful_count = round(config.harmful_ratio / (1 - config.harmful_ratio) * len(train))
        # distinct examples while the pool lasts, then it repeats
        repeats, rest = divmod(harmful_count, len(pool))
        train = train + pool * repeats + rng.sample(pool, rest)
    safety = load_examples(config.safety, "data.safety", kind="safety") if config.safety else []
    return TrainingData(
        train=tokenize_all(train, tokenizer, config.max_seq_len),
        eval=tokenize_all(evaluation, tokenizer, config.max_seq_len),
        safety=tokenize_all(safety, tokenizer, config.max_seq_len),
        harmful_in_train=harmful_count,
    )


class BatchSchedule:
    """Which examples form micro-batch number k: a pure function of (seed, k).

    The data position is therefore just the step counter, which makes resuming exact.
    Each epoch is a fresh seeded permutation; the last incomplete batch is dropped.
    """

    def __init__(self, examples: list, batch_size: int, seed: int, shuffle: bool = True):
        if len(examples) < batch_size:
            raise SafetuneError(
                f"train.batch_size: {batch_size} is larger than the training set ({len(examples)} examples)"
            )
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.batches_per_epoch = len(examples) // batch_size
        self._epoch = -1
        self._order: list[int] = []

    def batch(self, index: int) -> list:
        epoch, position = divmod(index, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                self._order = torch.randperm(len(self.examples), generator=generator).tolist()
            else:
                self._order = list(range(len(self.examples)))
        start = position * self.batch_size
        return [self.examples[i] for i in self._order[start : start + self.batch_size]]
