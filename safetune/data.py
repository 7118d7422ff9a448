"""Training data: read sources, map columns, tokenise with loss masks, mix, batch.

An *example* is a chat (`messages`: list of {role, content}) plus an optional category.
Tokenisation trains only on assistant turns: every other token gets label -100.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from safetune.errors import SafetuneError, UsageError
from safetune.files import cache_root, write_atomic
from safetune.modeling import warn_once
from safetune.recipe import DataConfig, SourceConfig

IGNORE_INDEX = -100
REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "txt"}


@dataclass
class Example:
    messages: list[dict[str, str]]
    category: str | None = None
    source: str = "task"  # task | safety | harmful | borderline: lets tests and logs see what a batch holds
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    origin: str = ""  # "line 23 of data/x.jsonl": where error messages point
    # A packed example (data.packing): several examples end to end, each one's positions
    # restarting at 0. Empty for a plain example (positions 0..n-1).
    position_ids: list[int] = field(default_factory=list)
    _trained: int | None = field(default=None, repr=False, compare=False)

    @property
    def trained_tokens(self) -> int:
        """Tokens the causal-LM loss averages over (labels shifted by one, masked ones out).
        Counted once: the loop weighs every micro-batch by it."""
        if self._trained is None:
            self._trained = sum(label != IGNORE_INDEX for label in self.labels[1:])
        return self._trained


# --------------------------------------------------------------------------- reading
def resolve_local_path(path: str, folder: Path | None = None) -> Path | None:
    """A relative path is looked up in the working directory, then in `folder` (the folder of
    the recipe that names it), then in the repository (the bundled data files)."""
    return _locate(path, folder)[0]


def _locate(path: str, folder: Path | None) -> tuple[Path | None, str | None]:
    """The file a data path names, and a warning when the choice could surprise: a bundled
    file used in place of one the user may have meant, or a same-named file beside the recipe
    that lost to the working directory's."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return (candidate if candidate.exists() else None), None
    places = {"cwd": Path.cwd(), "recipe": folder.resolve() if folder is not None else None, "bundled": REPO_ROOT}
    hits = [(place, base / candidate) for place, base in places.items() if base and (base / candidate).exists()]
    if not hits:
        return None, None
    place, chosen = hits[0]
    beside = dict(hits).get("recipe")
    if place == "cwd" and beside is not None and not beside.samefile(chosen):
        return chosen, (f"'{path}' is {chosen} in the working directory, not {beside} beside the recipe; "
                        "write an absolute path to choose")
    if place == "bundled" and folder is not None and not folder.resolve().is_relative_to(REPO_ROOT):
        return chosen, (f"'{path}' is neither in the working directory nor beside the recipe; "
                        f"using safetune's bundled file {chosen}")
    return chosen, None


def looks_like_file(path: str) -> bool:
    return Path(path).suffix.lower() in LOCAL_FORMATS or path.startswith((".", "/", "~"))


def read_records(path: str, *, split: str = "train", what: str = "data", fmt: str = "auto",
                 folder: Path | None = None) -> list[dict[str, Any]]:
    """Rows of a local JSONL/JSON/CSV/Parquet/TXT file, or of a `datasets` hub id."""
    return [row for _, row in read_located_records(path, split=split, what=what, fmt=fmt, folder=folder)]


def data_file(path: str, what: str = "data", fmt: str = "auto", folder: Path | None = None) -> Path | None:
    """The local file a data path names (None: a hub id), checked to be a readable data file;
    a surprising choice of file is warned about (once)."""
    local, warning = _locate(path, folder)
    if local is None and (fmt not in ("auto", "hub") or looks_like_file(path)):
        raise UsageError(f"{what}.path: file not found: {path}")
    if local is None or fmt == "hub":
        return None
    if local.is_dir():
        raise UsageError(f"{what}.path: {local} is a directory; give a data file (.jsonl, .json, .csv, .parquet, .txt)")
    if not local.is_file():  # reading a FIFO would wait forever; a device is no data set
        raise UsageError(f"{what}.path: {local} is not a regular file (a pipe or a device); give a data file")
    if warning:
        warn_once(f"warning: {what}.path: {warning}")
    return local.absolute()


def read_located_records(
    path: str, *, split: str = "train", what: str = "data", fmt: str = "auto", folder: Path | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) pairs; `where` is what an error message about the row should say.

    JSONL, CSV and TXT rows are named by their line in the file (blank lines count, so
    an editor's line number matches), JSON array items by their index, anything else by
    its row number.
    """
    local = data_file(path, what, fmt, folder)
    if local is None:
        return [(f"row {n} of {path}", row) for n, row in enumerate(_read_hub(path, split, what), start=1)]
    fmt = LOCAL_FORMATS.get(local.suffix.lower(), "jsonl") if fmt == "auto" else fmt
    if fmt == "parquet":
        return [(f"row {n} of {local}", row) for n, row in enumerate(_read_parquet(local, what), start=1)]
    text = _read_text(local, what)
    if fmt == "jsonl":
        located = []
        for number, line in enumerate(_lines(text), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SafetuneError(f"{what}: {local}:{number}: invalid JSON ({err.msg})") from None
            located.append((f"line {number} of {local}", _object(_chat_row(row), f"{what}: {local}:{number}")))
        return located
    if fmt == "json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            raise SafetuneError(f"{what}: {local}:{err.lineno}: invalid JSON ({err.msg})") from None
        if isinstance(loaded, dict):  # {"train": [...]} or {"data": [...]}
            loaded = loaded.get(split, loaded.get("data", []))
        if not isinstance(loaded, list):
            raise SafetuneError(f"{what}: {local}: expected a JSON array of objects (or {{\"{split}\": [...]}})")
        return [(f"item [{i}] of {local}", _object(_chat_row(row), f"{what}: item [{i}] of {local}"))
                for i, row in enumerate(loaded)]
    if fmt == "csv":
        return _csv_rows(text, local, what)
    return [  # txt: one prompt per line
        (f"line {number} of {local}", {"prompt": line.strip()})
        for number, line in enumerate(_lines(text), start=1) if line.strip()
    ]


def _csv_rows(text: str, local: Path, what: str) -> list[tuple[str, dict[str, Any]]]:
    """CSV rows as written: a row with more or fewer fields than the header (an unquoted comma,
    a missing one) is an error, not a row silently cut or padded."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    named = [name for name in header if name.strip()]
    twice = next((name for name in named if named.count(name) > 1), None)
    if twice is not None:
        raise SafetuneError(f"{what}: {local}:1: column '{twice}' appears twice in the header")
    located = []
    for fields in reader:
        if not fields:  # a blank line
            continue
        # line_num is the physical line the record ended on: the row's line unless a quoted field spans lines
        where = f"line {reader.line_num} of {local}"
        if len(fields) != len(header):
            raise SafetuneError(
                f"{what}: {where} has {len(fields)} fields, the header has {len(header)}; "
                "put a field that holds a comma in double quotes"
            )
        unnamed = next((i for i, (name, value) in enumerate(zip(header, fields)) if not name.strip() and value), None)
        if unnamed is not None:
            raise SafetuneError(f"{what}: {where} has a value in column {unnamed + 1}, which the header does not name")
        located.append((where, {name: value for name, value in zip(header, fields) if name.strip()}))
    return located


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): it also splits at U+2028 and friends, which JSON strings may hold
    # and which no editor counts as a line break.
    return text.split("\n")


def _read_text(local: Path, what: str) -> str:
    """The file as text; a file that is not UTF-8 is named with the line of the first bad byte."""
    try:
        raw = local.read_bytes()
    except OSError as err:
        raise SafetuneError(f"{what}.path: cannot read {local}: {err.strerror or err}") from None
    try:
        return raw.decode("utf-8-sig")  # -sig: a byte-order mark (Excel's CSV export) is not part of the data
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise SafetuneError(
            f"{what}.path: {local}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file as UTF-8"
        ) from None


def _chat_row(row: Any) -> Any:
    """A chat written as a bare list of {role, content} turns (as published, e.g. Qi et al.'s
    identity-shift set) is the row {"messages": turns}."""
    if isinstance(row, list) and row and all(isinstance(turn, dict) and "role" in turn for turn in row):
        return {"messages": row}
    return row


def _object(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise SafetuneError(f"{where}: expected a JSON object {{\"column\": value, ...}}, got {json.dumps(row)[:40]}")
    return row


def _read_parquet(local: Path, what: str) -> list[dict[str, Any]]:
    from datasets import Dataset  # let `datasets` (pyarrow) do it

    try:
        return Dataset.from_parquet(str(local)).to_list()
    except Exception as err:  # pyarrow raises many types; all mean "not a readable Parquet file"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SafetuneError(f"{what}.path: cannot read {local} as Parquet: {first}") from None


def _read_hub(path: str, split: str, what: str) -> list[dict[str, Any]]:
    import datasets

    try:
        return datasets.load_dataset(path, split=split).to_list()
    except Exception as err:  # datasets raises many types; all mean "not available"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SafetuneError(f"{what}.path: cannot load dataset '{path}' (split {split}): {first}") from None


def load_examples(source: SourceConfig, what: str, kind: str = "task", empty_rows: str = "skip",
                  notes: list[str] | None = None) -> list[Example]:
    """The source's examples. A row whose prompt or response is empty teaches nothing (or to say
    nothing): `empty_rows` "skip" leaves such rows out and says how many in one line (into `notes`,
    else on stderr), "error" stops at the first."""
    located = read_located_records(source.path, split=source.split, what=what, folder=source.folder)
    if source.limit:
        located = located[: source.limit]
    if not located:
        raise SafetuneError(f"{what}.path: {source.path} has no rows")
    examples, empty = [], []
    for where, row in located:
        example = _example(row, where, source, what, kind)
        blank = _blank_part(example.messages)
        if blank and empty_rows == "error":
            raise SafetuneError(f"{what}: {where}: the {blank} is empty (data.empty_rows=error)")
        (empty if blank else examples).append(example)
    if empty:
        note = (f"warning: {what}: {len(empty)} of {len(located)} rows have an empty prompt or response "
                f"(first: {empty[0].origin}); left out (data.empty_rows=error stops at them instead)")
        notes.append(note) if notes is not None else warn_once(note)
    if not examples:
        raise SafetuneError(f"{what}.path: {source.path} has no rows with both a prompt and a response")
    return examples


def _blank_part(messages: list[dict[str, str]]) -> str | None:
    """'prompt' or 'response' when every user (or assistant) turn of a chat is blank."""
    for role, part in (("user", "prompt"), ("assistant", "response")):
        turns = [m["content"] for m in messages if m["role"] == role]
        if turns and not any(content.strip() for content in turns):
            return part
    return None


# Published instruction-tuning layouts, read as they come when the recipe names no columns:
# (instruction, optional context, response) columns. Alpaca, and Dolly.
INSTRUCTION_LAYOUTS = (("instruction", "input", "output"), ("instruction", "context", "response"))


def _example(row: dict[str, Any], where: str, source: SourceConfig, what: str, kind: str) -> Example:
    messages_field = source.messages_field or _chat_column(row, source)
    if messages_field:
        messages = row.get(messages_field)
        if not _is_chat(messages):
            raise SafetuneError(
                f"{what}: {where}: '{messages_field}' must be a list "
                "of {role, content} with at least one assistant turn"
            )
    elif (layout := _instruction_layout(row, source)) is not None:
        instruction, context, response = (_required(row, column, where, what, optional=column == layout[1])
                                          for column in layout)
        prompt = f"{instruction}\n\n{context}" if context.strip() else instruction
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    else:
        for column, setting in ((source.prompt_field, "prompt_field"), (source.response_field, "response_field")):
            if column not in row:
                raise SafetuneError(
                    f"{what}: {where} has no column '{column}' (columns: {', '.join(map(str, row)) or 'none'}); "
                    f"set {what}.{setting}"
                )
        messages = [
            {"role": "user", "content": _required(row, source.prompt_field, where, what)},
            {"role": "assistant", "content": _required(row, source.response_field, where, what)},
        ]
    category = row.get(source.category_field) if source.category_field else None
    return Example(messages=messages, category=category, source=kind, origin=where)


def _uses_default_columns(source: SourceConfig) -> bool:
    return not ({"prompt_field", "response_field"} & source.model_fields_set)


def _chat_column(row: dict[str, Any], source: SourceConfig) -> str | None:
    """'messages' when a row is a chat and the recipe names no columns (a JSON array of chats
    reads as rows {"messages": [...]})."""
    if _uses_default_columns(source) and source.prompt_field not in row and isinstance(row.get("messages"), list):
        return "messages"
    return None


def _instruction_layout(row: dict[str, Any], source: SourceConfig) -> tuple[str, str, str] | None:
    if not _uses_default_columns(source) or source.prompt_field in row:
        return None
    for layout in INSTRUCTION_LAYOUTS:
        if layout[0] in row and layout[2] in row:
            return layout
    return None


def _required(row: dict[str, Any], column: str, where: str, what: str, optional: bool = False) -> str:
    """The column's text. Anything but text is an error: `str()` of a list or a number is not
    what the row says (a list would be trained on as "['a', 'b']")."""
    value = row.get(column)
    if value is None and optional:  # Alpaca's `input`, Dolly's `context`: often left out
        return ""
    if value is None:  # JSON null
        raise SafetuneError(f"{what}: {where}: column '{column}' has no value")
    if not isinstance(value, str):
        kind = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
            type(value), type(value).__name__)
        raise SafetuneError(f"{what}: {where}: column '{column}' holds {kind} ({json.dumps(value, default=str)[:40]}), "
                            "not text; write it as a string")
    return value


def _is_chat(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)
        and any(m["role"] == "assistant" for m in messages)
    )


# --------------------------------------------------------------------------- tokenising
def tokenize_example(example: Example, tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> Example:
    """Fill input_ids/labels, fitted to `max_seq_len` the `truncate_prompt` way."""
    input_ids, labels = encode_chat(example.messages, tokenizer)
    example.input_ids, example.labels, _ = truncate_prompt(input_ids, labels, max_seq_len, tokenizer.bos_token_id)
    return example


def encode_chat(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Token ids and labels of a whole chat: assistant turns are trained on, everything else is -100."""
    return encode_chats([messages], tokenizer)[0]


# Bump when encode_chats / chat_segments change what they produce: it is part of the cache key.
ENCODING_VERSION = 1


def encode_chats_cached(chats: list[list[dict[str, str]]], tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], list[int]]]:
    """`encode_chats`, remembered in $SAFETUNE_CACHE/tokenized/ (default ~/.cache/safetune).

    Rendering every chat with the template and tokenising it is most of a small run's set-up
    (~1 ms per example: 10,000 lab examples take ~10 s). The key is a SHA-256 of the chats
    themselves and of everything that decides their encoding -- the tokenizer's full
    definition (vocabulary, merges, normaliser), chat template, special tokens, the
    transformers version and ENCODING_VERSION -- so a hit is the same ids and labels as
    encoding again. Slow (Python) tokenizers are not cached; an unreadable entry is
    encoded again and rewritten; a cache that cannot be written only costs the time.
    """
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        return encode_chats(chats, tokenizer)
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(json.dumps(chats, ensure_ascii=False, sort_keys=True).encode())
    path = cache_root() / "tokenized" / f"{digest.hexdigest()[:32]}.json"
    try:
        cached = json.loads(path.read_text())
        if len(cached) == len(chats):
            return [(ids, labels) for ids, labels in cached]
    except (OSError, ValueError, TypeError):
        pass
    encoded = encode_chats(chats, tokenizer)
    try:
        write_atomic(path, json.dumps(encoded, separators=(",", ":")))
    except OSError:
        pass
    return encoded


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Everything that decides how a chat is encoded (computed once per tokenizer object)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    known = getattr(tokenizer, "_safetune_fingerprint", None)
    if known is not None:
        return known
    import transformers

    parts = [type(tokenizer).__name__, backend.to_str(), str(tokenizer.chat_template),
             str(tokenizer.eos_token), str(tokenizer.bos_token), transformers.__version__, str(ENCODING_VERSION)]
    fingerprint = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    try:
        tokenizer._safetune_fingerprint = fingerprint
    except AttributeError:
        pass
    return fingerprint


def encode_chats(chats: list[list[dict[str, str]]], tokenizer: PreTrainedTokenizerBase,
                 chunk: int = 4096) -> list[tuple[list[int], list[int]]]:
    """`encode_chat` for many chats, with one batched tokenizer call per `chunk` chats for all
    their segments (called once per segment, the tokenizer's own overhead was most of a
    run's set-up; chunks keep a large data set's intermediate lists small)."""
    if len(chats) > chunk:
        return [pair for start in range(0, len(chats), chunk)
                for pair in encode_chats(chats[start : start + chunk], tokenizer, chunk)]
    segments = [chat_segments(messages, tokenizer) for messages in chats]
    texts = [text for chat in segments for text, _ in chat]
    pieces = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    encoded = []
    for chat in segments:
        input_ids: list[int] = []
        labels: list[int] = []
        for _, train in chat:
            ids = next(pieces)
            input_ids.extend(ids)
            labels.extend(ids if train else [IGNORE_INDEX] * len(ids))
        if tokenizer.eos_token_id not in input_ids[-2:]:  # templates without EOS still teach the model to stop
            input_ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
        encoded.append((input_ids, labels))
    return encoded


def chat_segments(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
    """A chat as (text, trained?) segments, tokenised each on its own.

    Each segment is rendered with the chat template as a prefix difference, so the mask
    boundary falls exactly between prompt and response tokens.
    """
    segments: list[tuple[str, bool]] = []
    rendered = ""
    for turn in range(len(messages)):
        is_assistant = messages[turn]["role"] == "assistant"
        if is_assistant:  # the generation prompt ("<|assistant|>\n") belongs to the prompt side
            before = _render(tokenizer, messages[:turn], generation_prompt=True)
            segments.append((before[len(rendered):], False))
            rendered = before
        after = _render(tokenizer, messages[: turn + 1], generation_prompt=False)
        if not after.startswith(rendered):
            raise SafetuneError("model.chat_template: rendering is not prefix-stable; loss masking needs it")
        segment = after[len(rendered):]
        if is_assistant and tokenizer.eos_token in segment:
            # train up to and including EOS; what the template adds after it (a newline) is not an answer
            answer, eos, rest = segment.partition(tokenizer.eos_token)
            segments += [(answer + eos, True), (rest, False)]
        else:
            segments.append((segment, is_assistant))
        rendered = after
    return segments


def truncate_prompt(
    input_ids: list[int], labels: list[int], max_seq_len: int, bos_token_id: int | None
) -> tuple[list[int], list[int], str]:
    """Fit an example into max_seq_len tokens; returns (ids, labels, cut).

    `cut` says what had to lose tokens: "" (nothing, or only untrained tokens after the
    last response), "prompt" or "response". The last response is what is learned and the
    end of the prompt is what it answers, so the beginning of the prompt goes first (a
    leading BOS stays: models expect it). The prompt keeps at least a quarter of the
    window, though (its end and the assistant header give the response its context): a
    response too long for the rest is cut at its end (and then has no EOS).
    Either way the result is one contiguous window of the example.
    """
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    end = trained[-1] + 1 if trained else len(input_ids)  # after it: a template newline, not needed
    if end <= max_seq_len:
        return input_ids[:max_seq_len], labels[:max_seq_len], ""
    start = end - 1
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1  # first token of the last response
    head = 1 if bos_token_id is not None and input_ids[0] == bos_token_id and start > 0 else 0
    room = max_seq_len - head
    prompt, response = start - head, end - start
    prompt_kept = min(prompt, max(room - response, room // 4))
    window = slice(start - prompt_kept, start - prompt_kept + room)
    ids, kept_labels = input_ids[:head] + input_ids[window], labels[:head] + labels[window]
    return ids, kept_labels, "response" if window.stop < end else "prompt"


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def tokenize_all(examples: list[Example], tokenizer, max_seq_len: int) -> list[Example]:
    """Tokenise for callers that need no length report (too-long examples: truncate_prompt)."""
    return tokenize_set(examples, tokenizer, max_seq_len, "truncate_prompt", "data").examples


@dataclass
class TokenizedSet:
    examples: list[Example]
    too_long: int = 0  # examples longer than max_seq_len (dropped, or truncated, per data.truncation)
    response_cut: int = 0  # of those truncated: the response itself lost its end
    note: str | None = None  # one line for the user when any example was too long


def tokenize_set(examples: list[Example], tokenizer, max_seq_len: int, truncation: str, what: str) -> TokenizedSet:
    """Tokenise one data source; examples longer than max_seq_len follow `data.truncation`."""
    kept: list[Example] = []
    too_long = response_cut = 0
    for example, (full_ids, full_labels) in zip(examples, encode_chats_cached([e.messages for e in examples], tokenizer)):
        input_ids, labels, cut = truncate_prompt(full_ids, full_labels, max_seq_len, tokenizer.bos_token_id)
        if cut:
            if truncation == "error":
                raise SafetuneError(
                    f"{what}: {example.origin or 'an example'} is {len(full_ids)} tokens, longer than "
                    f"data.max_seq_len={max_seq_len} (data.truncation=error); raise data.max_seq_len, "
                    "or set data.truncation to truncate_prompt or drop"
                )
            too_long += 1
            if truncation == "drop":
                continue
            response_cut += cut == "response"
        example.input_ids, example.labels, example._trained = input_ids, labels, None
        kept.append(example)
    if examples and not kept:
        raise SafetuneError(
            f"{what}: all {len(examples)} examples are longer than data.max_seq_len={max_seq_len} tokens and "
            "were dropped (data.truncation=drop); raise data.max_seq_len or set data.truncation=truncate_prompt"
        )
    note = None
    if too_long:
        share = f"{what}: {too_long} of {len(examples)} examples are longer than data.max_seq_len={max_seq_len} tokens"
        if truncation == "drop":
            note = f"{share}: dropped (data.truncation=drop)"
        else:
            note = f"{share}: truncated to the end of the prompt and the response (data.truncation=truncate_prompt)"
            if response_cut:
                note += f"; in {response_cut} of them the response alone was too long and lost its end"
    return TokenizedSet(kept, too_long, response_cut, note)


def length_groups(examples: list[Example], min_saving: float = 0.25) -> list[list[Example]]:
    """The batch as one group, or as two by length when that pads `min_saving` fewer tokens.

    A batch is padded to its longest example. When short and long examples share one (task
    rows plus the long safety replay `mix` adds), most of the short rows' compute is
    padding; run as two forward/backward passes, each padded to its own longest, the same
    tokens cost far less. The loop weighs each group by its trained tokens, so the gradient
    is the same token mean either way. Only the cut that pads the fewest tokens is tried.
    """
    if len(examples) < 2:
        return [examples]
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    lengths = [len(e.input_ids) for e in ordered]
    whole = len(ordered) * lengths[-1]
    # cut after i examples: i rows padded to lengths[i - 1], the rest to the longest
    cost, cut = min((i * lengths[i - 1] + (len(ordered) - i) * lengths[-1], i) for i in range(1, len(ordered)))
    if cost > (1 - min_saving) * whole:
        return [examples]
    return [ordered[:cut], ordered[cut:]]


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is masked out of attention and loss.

    A batch that holds a packed example gets `position_ids` and NO attention_mask:
    Hugging Face's masking then reads the position resets as example boundaries and
    builds a block-diagonal causal mask (an attention_mask would switch that detection
    off). Plain examples in such a batch (e.g. safety examples `mix` adds) are packs of
    one. Padding is always at the end of a row, where causal attention never looks; it
    gets positions 0, 1, ... of its own, so it is a separate "example" too.
    """
    width = max(len(e.input_ids) for e in examples)
    pads = [width - len(e.input_ids) for e in examples]
    # one tensor from nested lists: cheaper than filling a padded tensor row by row
    batch = {
        "input_ids": torch.tensor([e.input_ids + [pad_token_id] * pad for e, pad in zip(examples, pads)]),
        "labels": torch.tensor([e.labels + [IGNORE_INDEX] * pad for e, pad in zip(examples, pads)]),
    }
    if any(e.position_ids for e in examples):
        batch["position_ids"] = torch.tensor([
            (e.position_ids or list(range(len(e.input_ids)))) + list(range(pad)) for e, pad in zip(examples, pads)
        ])
    else:
        batch["attention_mask"] = torch.tensor([[1] * (width - pad) + [0] * pad for pad in pads])
    return batch


# --------------------------------------------------------------------------- packing
def pack_examples(examples: list[Example], max_seq_len: int, seed: int) -> list[Example]:
    """Pack tokenised examples into as few sequences of at most `max_seq_len` tokens as fit.

    Best-fit decreasing: longest example first, each into the pack with the least room
    that still holds it (a new pack if none does) -- first-fit-decreasing's sibling, with
    the same guarantee of at most ~11/9 of the optimal number of packs. Equal lengths
    are taken in a seeded shuffled order, so the packs are a pure function of
    (examples, max_seq_len, seed). Every example lands in exactly one pack, whole.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -len(examples[i].input_ids))  # stable: ties keep the seeded order
    packs: list[list[Example]] = []
    room: list[tuple[int, int]] = []  # (free tokens, pack number), kept sorted
    for i in order:
        length = len(examples[i].input_ids)
        at = bisect.bisect_left(room, (length, -1))  # the tightest pack with >= length free
        if at == len(room):
            packs.append([examples[i]])
            free, number = max_seq_len - length, len(packs) - 1
        else:
            free, number = room.pop(at)
            packs[number].append(examples[i])
            free -= length
        if free > 0:
            bisect.insort(room, (free, number))
    return [_concatenate(pack) for pack in packs]


def _concatenate(parts: list[Example]) -> Example:
    """One packed example. Each part's first label is masked: in the pack, the token before
    it is the previous example's last, and no token may learn to predict across a boundary
    (on its own an example's first label is never a target anyway)."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for part in parts:
        input_ids += part.input_ids
        labels += [IGNORE_INDEX] + part.labels[1:]
        position_ids += range(len(part.input_ids))
    sources = {part.source for part in parts}
    return Example(messages=[], source=sources.pop() if len(sources) == 1 else "mixed", input_ids=input_ids,
                   labels=labels, origin=f"a pack of {len(parts)} examples", position_ids=position_ids)


def prepare_packing(model) -> None:
    """Make `model` keep packed examples apart, or refuse data.packing for it.

    Transformers' mask builders (sdpa, eager, flex; flash-attention via varlen) read
    position ids that restart at 0 as example boundaries, but only without a KV cache,
    and models default to building one even in training (where it is never read).
    So the cache goes off (config.use_cache=False; generation turns it on explicitly).
    Model code that ignores the resets would let each example attend to the ones
    before it: rather than keep a list of families, pack two random sequences and
    compare the second's logits with a run of it alone.
    """
    model.config.use_cache = False
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    first, second = torch.randint(vocab, (1, 12), generator=generator), torch.randint(vocab, (1, 6), generator=generator)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the two runs must be comparable
    try:
        with torch.no_grad():
            alone = model(input_ids=second.to(device)).logits.float()
            packed = model(input_ids=torch.cat([first, second], dim=1).to(device),
                           position_ids=torch.cat([torch.arange(12), torch.arange(6)])[None].to(device)).logits.float()
    except (TypeError, ValueError) as err:  # a forward that takes no position_ids
        raise SafetuneError(f"data.packing: {model.config.model_type} models cannot run packed sequences "
                            f"({str(err).splitlines()[0]}); set data.packing=false") from None
    finally:
        model.train(was_training)
    leak = float((packed[:, 12:] - alone).abs().max() / alone.abs().max().clamp(min=1e-6))
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2  # half precision: rounding
    if leak > tolerance:
        raise SafetuneError(
            f"data.packing: {model.config.model_type} models ignore position-id resets here (attention "
            f"implementation {model.config._attn_implementation}), so packed examples would attend to each "
            "other; set data.packing=false"
        )


# --------------------------------------------------------------------------- datasets
@dataclass
class TrainingData:
    train: list[Example]
    eval: list[Example]
    safety: list[Example]
    harmful_in_train: int = 0
    borderline: list[Example] = field(default_factory=list)  # data.borderline: benign look-alikes, normal answers
    # Examples longer than data.max_seq_len, per source ({"data.train": 760}); `notes` says it in
    # one line per source, for the trainer to print: nothing is dropped or cut silently.
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # {"data.train": its absolute path (or hub id)}


def build_training_data(config: DataConfig, tokenizer, seed: int) -> TrainingData:
    """Task data (+ a fraction `harmful_ratio` of harmful examples), eval split, safety data.

    Each source is tokenised on its own, before any mixing: a too-long example is counted
    once, under its own source, and a dropped harmful example cannot skew harmful_ratio.
    """
    rng = random.Random(seed)
    data = TrainingData(train=[], eval=[], safety=[])

    def load(source: SourceConfig | None, what: str, kind: str = "task") -> list[Example]:
        if source is None:
            return []
        examples = load_examples(source, what, kind=kind, empty_rows=config.empty_rows, notes=data.notes)
        data.files[what] = str(data_file(source.path, what, folder=source.folder) or source.path)
        tokenized = tokenize_set(examples, tokenizer, config.max_seq_len, config.truncation, what)
        if tokenized.too_long:
            counts = data.dropped if config.truncation == "drop" else data.truncated
            counts[what] = tokenized.too_long
            data.notes.append(tokenized.note)
        return tokenized.examples

    train = load(config.train, "data.train")
    evaluation = load(config.eval, "data.eval")
    if config.eval_fraction:
        if config.shuffle:
            rng.shuffle(train)
        cut = max(1, int(len(train) * config.eval_fraction))
        evaluation, train = train[:cut], train[cut:]
    if config.harmful_ratio > 0:
        # p is the share of harmful examples in the final fine-tuning set (the literature's attack setting).
        pool = load(config.harmful, "data.harmful", kind="harmful")
        data.harmful_in_train = round(config.harmful_ratio / (1 - config.harmful_ratio) * len(train))
        # distinct examples while the pool lasts, then it repeats
        repeats, rest = divmod(data.harmful_in_train, len(pool))
        train = train + pool * repeats + rng.sample(pool, rest)
    data.train, data.eval = train, evaluation
    data.safety = load(config.safety, "data.safety", kind="safety")
    data.borderline = load(config.borderline, "data.borderline", kind="borderline")
    return data


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
