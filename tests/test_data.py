"""Data pipeline: response-only loss masks, truncation, harmful mixing, deterministic batches."""

import pytest

from safetune.data import (
    IGNORE_INDEX,
    BatchSchedule,
    Example,
    build_training_data,
    chat_segments,
    encode_chat,
    encode_chats,
    load_examples,
    tokenize_example,
    truncate_prompt,
)
from safetune.errors import SafetuneError
from safetune.modeling import load_tokenizer
from safetune.recipe import DataConfig, ModelConfig, SourceConfig
from tests.helpers import write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(ModelConfig(path=str(tiny_model_dir)))


def test_loss_mask_covers_exactly_the_response(tokenizer):
    example = Example(messages=[{"role": "user", "content": "What is 3 plus 4?"},
                                {"role": "assistant", "content": "7"}])
    tokenize_example(example, tokenizer, max_seq_len=128)
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    masked = [t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX]
    assert tokenizer.decode(trained) == "7" + tokenizer.eos_token
    # the prompt, and the newline the template puts after EOS
    assert tokenizer.decode(masked) == "<|user|>\nWhat is 3 plus 4?\n<|assistant|>\n\n"
    # Labels equal the inputs where trained (the model shifts them itself).
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(example.input_ids, example.labels))


def test_multi_turn_trains_every_assistant_turn(tokenizer):
    example = Example(messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"},
    ])
    tokenize_example(example, tokenizer, max_seq_len=128)
    trained = tokenizer.decode([t for t, lab in zip(example.input_ids, example.labels) if lab != IGNORE_INDEX])
    assert trained == f"Hello!{tokenizer.eos_token}Bye!{tokenizer.eos_token}"


def test_batched_encoding_equals_one_chat_at_a_time(tokenizer):
    """encode_chats tokenises every segment of every chat in one call: each chat gets its own pieces back."""
    chats = [chat("What is 3 plus 4?", "7"), chat("", "empty prompt"),
             [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}],
             chat("a longer prompt with several words in it", "and a longer answer too")]
    alone = []
    for messages in chats:
        ids, labels = [], []
        for text, train in chat_segments(messages, tokenizer):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if train else [IGNORE_INDEX] * len(piece)
        alone.append((ids, labels))
    assert encode_chats(chats, tokenizer) == alone == [encode_chat(m, tokenizer) for m in chats]
    assert encode_chats(chats, tokenizer, chunk=3) == alone, "chunks join up in order"


def chat(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def trained_text(tokenizer, input_ids, labels) -> str:
    return tokenizer.decode([t for t, label in zip(input_ids, labels) if label != IGNORE_INDEX])


def test_truncation_keeps_the_response_and_the_end_of_the_prompt(tokenizer):
    example = Example(messages=chat("x " * 50 + "What is 3 plus 4?", "7"))
    tokenize_example(example, tokenizer, max_seq_len=16)
    assert len(example.input_ids) == len(example.labels) == 16
    assert trained_text(tokenizer, example.input_ids, example.labels) == "7" + tokenizer.eos_token
    assert tokenizer.decode(example.input_ids).endswith("What is 3 plus 4?\n<|assistant|>\n7" + tokenizer.eos_token)


def test_truncate_prompt_is_one_window_and_cuts_a_huge_response_at_its_end(tokenizer):
    input_ids, labels = encode_chat(chat("What is 3 plus 4? " * 3, "Hello! How can I help you today? " * 3), tokenizer)
    response = sum(label != IGNORE_INDEX for label in labels)
    assert len(input_ids) > 40 and response > 30
    ids, kept, cut = truncate_prompt(input_ids, labels, 40, tokenizer.bos_token_id)
    assert cut == "response" and len(ids) == 40
    # the prompt keeps a quarter of the window, the response the rest; one contiguous stretch of the example
    assert sum(label == IGNORE_INDEX for label in kept) == 10
    start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX) - 10
    assert input_ids[start:start + 40] == ids and labels[start:start + 40] == kept
    # fits: untouched, except the untrained newline after the last EOS when that alone is too much
    assert truncate_prompt(input_ids, labels, len(input_ids), None) == (input_ids, labels, "")
    ids, _, cut = truncate_prompt(input_ids, labels, len(input_ids) - 1, None)
    assert cut == "" and ids == input_ids[:-1]


def long_and_short(tmp_path):
    rows = [{"prompt": "What is 3 plus 4?", "response": "7"}] * 6 + [{"prompt": "x " * 80, "response": "yes"}] * 2
    return write_jsonl(tmp_path / "mixed.jsonl", rows)


def test_too_long_examples_are_truncated_and_reported(tmp_path, tokenizer):
    config = DataConfig(train=SourceConfig(path=str(long_and_short(tmp_path))), max_seq_len=24)
    data = build_training_data(config, tokenizer, seed=0)
    assert len(data.train) == 8 and all(len(e.input_ids) <= 24 for e in data.train)
    assert data.truncated == {"data.train": 2} and data.dropped == {}
    assert data.notes == ["data.train: 2 of 8 examples are longer than data.max_seq_len=24 tokens: truncated "
                          "to the end of the prompt and the response (data.truncation=truncate_prompt)"]


def test_truncation_drop_and_error(tmp_path, tokenizer):
    source = SourceConfig(path=str(long_and_short(tmp_path)))
    data = build_training_data(DataConfig(train=source, max_seq_len=24, truncation="drop"), tokenizer, seed=0)
    assert len(data.train) == 6 and data.dropped == {"data.train": 2} and data.truncated == {}
    assert "2 of 8 examples are longer than data.max_seq_len=24 tokens: dropped" in data.notes[0]
    with pytest.raises(SafetuneError, match=r"data.train: line 7 of .*mixed.jsonl is \d+ tokens, longer than "
                                            r"data.max_seq_len=24 \(data.truncation=error\)"):
        build_training_data(DataConfig(train=source, max_seq_len=24, truncation="error"), tokenizer, seed=0)
    with pytest.raises(SafetuneError, match=r"all 8 examples are longer than data.max_seq_len=8"):
        build_training_data(DataConfig(train=source, max_seq_len=8, truncation="drop"), tokenizer, seed=0)


def test_no_note_when_everything_fits(tiny_data, tokenizer):
    data = build_training_data(DataConfig(train=SourceConfig(path=str(tiny_data["task"]))), tokenizer, seed=0)
    assert data.notes == [] and data.truncated == {} and data.dropped == {}


def test_missing_column_is_one_clear_error(tiny_data):
    with pytest.raises(SafetuneError, match="has no column 'answer'.*set data.train.response_field"):
        load_examples(SourceConfig(path=str(tiny_data["task"]), response_field="answer"), "data.train")


def test_missing_file(tmp_path):
    with pytest.raises(SafetuneError, match="data.train.path: file not found"):
        load_examples(SourceConfig(path=str(tmp_path / "nope.jsonl")), "data.train")


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    with pytest.raises(SafetuneError, match=r"bad.jsonl:2: invalid JSON"):
        load_examples(SourceConfig(path=str(path)), "data.train")


@pytest.mark.parametrize("name, content, expected", [
    # blank lines count: the message gives the line an editor shows
    ("gaps.jsonl", '{"prompt": "a", "response": "b"}\n\n\n{"prompt": "a"}\n', r"line 4 of .*gaps.jsonl has no column 'response'"),
    ("number.jsonl", '{"prompt": "a", "response": "b"}\n\n42\n', r"number.jsonl:3: expected a JSON object"),
    ("items.json", '[{"prompt": "a", "response": "b"}, {"prompt": "a"}]', r"item \[1\] of .*items.json has no column"),
    ("scalar.json", '42', r"scalar.json: expected a JSON array of objects"),
    ("rows.csv", 'prompt,answer\na,b\n\nc,d\n', r"line 2 of .*rows.csv has no column 'response'"),
    ("chat.jsonl", '{"messages": [{"role": "user", "content": "a"}, "b"]}\n', r"line 1 of .*chat.jsonl: 'messages' must be"),
])
def test_rows_are_named_by_their_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    field = {"messages_field": "messages"} if name.startswith("chat") else {}
    with pytest.raises(SafetuneError, match=expected):
        load_examples(SourceConfig(path=str(path), **field), "data.train")


def test_unreadable_sources_are_one_line(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    with pytest.raises(SafetuneError, match=r"data.train.path: .*latin.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        load_examples(SourceConfig(path=str(latin)), "data.train")
    with pytest.raises(SafetuneError, match=r"data.train.path: .* is a directory"):
        load_examples(SourceConfig(path=str(tmp_path)), "data.train")


def test_byte_order_mark_and_line_separators_are_data(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffprompt,response\nWhat\u2028is it?,7\n".encode("utf-8"))
    rows = load_examples(SourceConfig(path=str(path)), "data.train")
    assert rows[0].messages[0]["content"] == "What\u2028is it?"
    jsonl = write_jsonl(tmp_path / "sep.jsonl", [{"prompt": "a\u2028b", "response": "c"}])
    jsonl.write_text(jsonl.read_text().replace("\\u2028", "\u2028"), encoding="utf-8")  # raw U+2028 in the file
    assert load_examples(SourceConfig(path=str(jsonl)), "data.train")[0].messages[0]["content"] == "a\u2028b"


def test_csv_source(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("question,answer\nWhat is 1 plus 1?,2\n")
    rows = load_examples(SourceConfig(path=str(path), prompt_field="question", response_field="answer"), "data.train")
    assert rows[0].messages[1]["content"] == "2"


def test_harmful_ratio_is_share_of_final_set(tiny_data, tokenizer):
    config = DataConfig(train=SourceConfig(path=str(tiny_data["task"])),
                        harmful=SourceConfig(path=str(tiny_data["harmful"])), harmful_ratio=0.2)
    data = build_training_data(config, tokenizer, seed=0)
    harmful = sum(e.source == "harmful" for e in data.train)
    assert harmful == data.harmful_in_train == 10  # 10 / (40 + 10) = 0.2
    assert harmful / len(data.train) == pytest.approx(0.2)


def test_batches_are_deterministic_and_cover_epoch():
    items = list(range(10))
    first = BatchSchedule(items, 3, seed=1)
    second = BatchSchedule(items, 3, seed=1)
    assert [first.batch(i) for i in range(6)] == [second.batch(i) for i in range(6)]
    epoch = sum((first.batch(i) for i in range(3)), [])
    assert len(set(epoch)) == 9  # one epoch = 3 full batches, no repeats
    assert [first.batch(i) for i in range(3)] != [first.batch(i) for i in range(3, 6)]
    assert BatchSchedule(items, 3, seed=2).batch(0) != first.batch(0)  # the seed matters
