"""The loss every pass trains with: logits only at the positions that predict a trained token,
on every Hugging Face family the tests build (the head's input is cut to those rows by a hook)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM

from safetune.data import IGNORE_INDEX, Example, collate, tokenize_all
from safetune.loss import next_token_logprobs, next_token_loss, trained_logits
from safetune.modeling import load_tokenizer
from safetune.recipe import ModelConfig
from tests.helpers import _save_tiny, make_tiny_model_dir, make_tiny_neox_dir, make_tiny_qwen2_dir


def make_tiny_gemma2_dir(out):
    """Gemma 2: soft-capped logits after the head (an elementwise op that must see the cut rows alike)."""
    return _save_tiny(out, Gemma2Config, Gemma2ForCausalLM, 0, num_key_value_heads=2, head_dim=8,
                      final_logit_softcapping=5.0)


FAMILIES = {"llama": make_tiny_model_dir, "qwen2": make_tiny_qwen2_dir, "gpt_neox": make_tiny_neox_dir,
            "gemma2": make_tiny_gemma2_dir}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    folder = FAMILIES[request.param](tmp_path_factory.mktemp(request.param))
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    tokenizer = load_tokenizer(ModelConfig(path=str(folder)))
    chats = [Example(messages=[{"role": "user", "content": "What is 3 plus 4?" + " more" * i},
                               {"role": "assistant", "content": answer}])
             for i, answer in enumerate(["7", "I'm sorry, but I can't help with that.", "Hello!", "Use the kill command."])]
    return model, collate(tokenize_all(chats, tokenizer, 64), tokenizer.pad_token_id)


def test_trained_logits_give_the_full_loss_and_gradients(family):
    model, batch = family
    full = model(**batch).loss
    full_grads = torch.autograd.grad(full, list(model.parameters()), allow_unused=True)
    kept = next_token_loss(model, batch)
    kept_grads = torch.autograd.grad(kept, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(kept, full, atol=1e-6, rtol=0)
    for a, b in zip(kept_grads, full_grads):
        if b is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_the_head_projects_only_the_trained_positions(family):
    model, batch = family
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        logits, targets, mask = trained_logits(model, batch)
    finally:
        handle.remove()
    trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert seen == [torch.Size([trained, model.config.hidden_size])]
    assert logits.shape == (trained, model.config.vocab_size) and targets.shape == (trained,)


def test_token_logprobs_equal_the_full_computation(family):
    model, batch = family
    with torch.no_grad():
        full = F.log_softmax(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float(), dim=-1)
        log_p, mask = next_token_logprobs(model, batch)
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE_INDEX
    expected = full[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[trained]
    assert int(mask.sum()) == int(trained.sum())
    torch.testing.assert_close(log_p[mask], expected, atol=1e-5, rtol=1e-5)
    assert torch.all(log_p[~mask] == 0)


def test_the_last_mlp_runs_on_the_trained_positions_only(family):
    """The last decoder layer's MLP output at untrained positions never reaches the head: it
    runs on the N rows the head reads (the loss and gradients test above covers exactness)."""
    from safetune.model_layers import decoder_layers

    model, batch = family
    _, blocks = decoder_layers(model)
    seen = []
    handle = blocks[-1].mlp.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        trained_logits(model, batch)
    finally:
        handle.remove()
    trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert seen == [(1, trained, model.config.hidden_size)]
    seen.clear()
    handle = blocks[-1].mlp.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        model(**batch)  # any other forward: the whole MLP, as before
    finally:
        handle.remove()
    assert seen == [tuple(batch["input_ids"].shape) + (model.config.hidden_size,)]
