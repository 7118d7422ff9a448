"""The tokenised-data cache: a hit gives exactly what encoding again gives; anything that
changes the encoding changes the key; a bad entry is encoded again."""

from __future__ import annotations

import json

import pytest

import safetune.data as data_module
from safetune.data import encode_chats, encode_chats_cached, tokenizer_fingerprint
from safetune.modeling import load_tokenizer
from safetune.recipe import ModelConfig

CHATS = [[{"role": "user", "content": f"Review {i}: the film was fine."},
          {"role": "assistant", "content": "positive" if i % 2 else "negative"}] for i in range(30)]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokenized"


@pytest.fixture()
def tokenizer(model_dir):  # Llama and Qwen2 tokenizers and templates
    return load_tokenizer(ModelConfig(path=str(model_dir)))


def entries(cache):
    return sorted(cache.glob("*.json")) if cache.is_dir() else []


def test_a_hit_equals_encoding_again_and_skips_the_work(cache, tokenizer, monkeypatch):
    fresh = encode_chats(CHATS, tokenizer)
    assert encode_chats_cached(CHATS, tokenizer) == fresh
    assert len(entries(cache)) == 1

    def fail(*args, **kwargs):
        raise AssertionError("encoded again despite a cache hit")

    monkeypatch.setattr(data_module, "encode_chats", fail)
    assert encode_chats_cached(CHATS, tokenizer) == fresh


def test_other_chats_template_or_tokenizer_miss(cache, tokenizer, tiny_model_dir, tiny_qwen2_dir):
    encode_chats_cached(CHATS, tokenizer)
    encode_chats_cached(CHATS[:-1], tokenizer)
    assert len(entries(cache)) == 2
    changed = load_tokenizer(ModelConfig(path=str(tiny_model_dir)))
    changed.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    assert tokenizer_fingerprint(changed) != tokenizer_fingerprint(tokenizer)
    assert encode_chats_cached(CHATS, changed) == encode_chats(CHATS, changed)
    llama, qwen2 = (load_tokenizer(ModelConfig(path=str(d))) for d in (tiny_model_dir, tiny_qwen2_dir))
    assert tokenizer_fingerprint(llama) != tokenizer_fingerprint(qwen2)
    assert len(entries(cache)) == 3


def test_a_damaged_entry_is_encoded_again(cache, tokenizer):
    fresh = encode_chats_cached(CHATS, tokenizer)
    [entry] = entries(cache)
    entry.write_text('[[1, 2], "not')
    assert encode_chats_cached(CHATS, tokenizer) == fresh
    assert json.loads(entry.read_text()) == [list(pair) for pair in fresh]
    entry.write_text("[]")  # wrong length: not trusted either
    assert encode_chats_cached(CHATS, tokenizer) == fresh


def test_an_unwritable_cache_only_costs_the_time(tmp_path, monkeypatch, tokenizer):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SAFETUNE_CACHE", str(blocker / "cache"))  # below a file: nothing can be written there
    assert encode_chats_cached(CHATS, tokenizer) == encode_chats(CHATS, tokenizer)


def test_a_cache_variable_naming_a_file_is_one_line(tmp_path, monkeypatch, tokenizer):
    from safetune.errors import UsageError

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SAFETUNE_CACHE", str(blocker))  # a mistake, not a full disk: say so
    with pytest.raises(UsageError, match="SAFETUNE_CACHE: .*file is a file, not a folder"):
        encode_chats_cached(CHATS, tokenizer)
