"""Data pipeline: response-only loss masks, truncation, harmful mixing, deterministic batches."""

import pytest

from safetune.data import IGNORE_INDEX, BatchSchedule, Example, build_training_data, load_examples, tokenize_example
from safetune.errors import SafetuneError
from safetune.modeling import load_tokenizer
from safetune.recipe import DataConfig, ModelConfig, SourceConfig


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


def test_truncation(tokenizer):
    example = Example(messages=[{"role": "user", "content": "x " * 50}, {"role": "assistant", "content": "yes"}])
    tokenize_example(example, tokenizer, max_seq_len=16)
    assert len(example.input_ids) == len(example.labels) == 16


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
