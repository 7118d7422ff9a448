"""GGUF models as input: a tiny random model written to a GGUF file (F32) loads with the same
logits as the model it came from, trains, and saves as a plain Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from safetune.errors import UsageError
from safetune.gguf import convert_gguf, load_gguf_model
from safetune.modeling import load_model, load_tokenizer
from safetune.recipe import ModelConfig
from tests.helpers import make_tiny_model_dir, make_tiny_qwen2_dir

gguf = pytest.importorskip("gguf")


def _llama_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves): what transformers undoes on load."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model_dir: Path, out: Path) -> Path:
    """The model and tokenizer of `model_dir` as one F32 GGUF file, the way llama.cpp's converter writes it."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config, arch = model.config, model.config.model_type
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # tokenizer: byte-level BPE ("gpt2" in GGUF), its merges, special ids and chat template
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if vocab[t] in special else gguf.TokenType.NORMAL for t in tokens])
    import json

    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH_NAMES_INVERSE[arch] if hasattr(gguf, "MODEL_ARCH_NAMES_INVERSE")
                                     else {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        data = tensor.numpy()
        if arch == "llama" and name.endswith("q_proj.weight"):
            data = _llama_permute(data, config.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            data = _llama_permute(data, config.num_key_value_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        writer.add_tensor(gguf_name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.parametrize("make", [make_tiny_model_dir, make_tiny_qwen2_dir], ids=["llama", "qwen2"])
def test_a_gguf_file_loads_with_the_logits_of_the_model_it_came_from(tmp_path, make):
    source = make(tmp_path / "hf")
    file = write_gguf(source, tmp_path / "tiny.gguf")
    config = ModelConfig(path=str(file))
    model = load_model(config)
    original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = load_tokenizer(config)
    ids = tokenizer("How do I kill a Python process?", return_tensors="pt")["input_ids"]
    assert ids.equal(AutoTokenizer.from_pretrained(source)("How do I kill a Python process?", return_tensors="pt")["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=1e-5, atol=1e-5)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(source).chat_template
    assert not hasattr(model.config, "quantization_config")  # a plain model: save_pretrained works


def test_convert_gguf_writes_a_plain_safetensors_folder(tmp_path):
    file = write_gguf(make_tiny_model_dir(tmp_path / "hf"), tmp_path / "tiny.gguf")
    out = convert_gguf(file, tmp_path / "converted")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not list(out.glob("*.gguf"))
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, load_gguf_model(file, torch.float32)(ids).logits)
    with pytest.raises(UsageError, match="not empty"):
        convert_gguf(file, out)  # never over an existing folder


def test_gguf_problems_are_one_line(tmp_path, monkeypatch):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(UsageError, match="is not a GGUF file"):
        load_model(ModelConfig(path=str(fake)))
    with pytest.raises(UsageError, match="GGUF file not found"):
        load_model(ModelConfig(path=str(tmp_path / "missing.gguf")))
    file = write_gguf(make_tiny_model_dir(tmp_path / "hf"), tmp_path / "tiny.gguf")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # as if the package were not installed
    with pytest.raises(UsageError, match="pip install gguf"):
        load_model(ModelConfig(path=str(file)))


def test_an_unsupported_gguf_architecture_is_named(tmp_path):
    out = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(out), "rwkv7")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UsageError, match="'rwkv7' model, which transformers cannot read"):
        load_model(ModelConfig(path=str(out)))
