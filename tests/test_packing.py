"""data.packing: every token kept once, no target across an example boundary, and a packed
sequence computes exactly what its examples compute on their own (Llama and Qwen2)."""

from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM

from safetune.data import (IGNORE_INDEX, Example, build_training_data, collate, length_groups, pack_examples,
                           prepare_packing)
from safetune.errors import RecipeError, SafetuneError
from safetune.loss import next_token_loss
from safetune.modeling import load_tokenizer
from safetune.recipe import DataConfig, ModelConfig, SourceConfig, validate_tree
from safetune.training import Trainer


def examples_of(tiny_model_dir, tiny_data, max_seq_len=64):
    tokenizer = load_tokenizer(ModelConfig(path=str(tiny_model_dir)))
    config = DataConfig(train=SourceConfig(path=str(tiny_data["task"])),
                        safety=SourceConfig(path=str(tiny_data["safety"])), max_seq_len=max_seq_len)
    data = build_training_data(config, tokenizer, seed=0)
    return data, tokenizer


def segments(packed: Example) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each example in a pack, split where the positions restart at 0."""
    starts = [i for i, position in enumerate(packed.position_ids) if position == 0] + [len(packed.input_ids)]
    return [(packed.input_ids[a:b], packed.labels[a:b]) for a, b in zip(starts, starts[1:])]


def test_packing_keeps_every_token_of_every_example_once(tiny_model_dir, tiny_data):
    data, _ = examples_of(tiny_model_dir, tiny_data)
    examples = data.train + data.safety  # two length distributions
    packs = pack_examples(examples, max_seq_len=64, seed=0)
    assert len(packs) < len(examples) / 2, "short examples share sequences"
    assert all(len(p.input_ids) <= 64 and len(p.labels) == len(p.position_ids) == len(p.input_ids) for p in packs)
    unpacked = [segment for pack in packs for segment in segments(pack)]
    assert Counter(tuple(ids) for ids, _ in unpacked) == Counter(tuple(e.input_ids) for e in examples)
    # labels as before, except each example's first one, which on its own is never a target anyway
    original = Counter((tuple(e.input_ids), tuple(e.labels[1:])) for e in examples)
    assert Counter((tuple(ids), tuple(labels[1:])) for ids, labels in unpacked) == original
    assert all(labels[0] == IGNORE_INDEX for _, labels in unpacked), "no target across an example boundary"
    assert sum(e.trained_tokens for e in packs) == sum(e.trained_tokens for e in examples)
    # a pure function of the seed
    again = pack_examples(examples, max_seq_len=64, seed=0)
    assert [p.input_ids for p in again] == [p.input_ids for p in packs]


def test_packed_logits_equal_separate_runs(model_dir, tiny_data):
    data, tokenizer = examples_of(model_dir, tiny_data)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prepare_packing(model)
    packs = pack_examples(data.train[:12], max_seq_len=64, seed=0)
    plain = data.safety[0]  # mix adds plain examples to a packed batch: a pack of one
    batch = collate(packs[:3] + [plain], tokenizer.pad_token_id)
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for row, example in enumerate(packs[:3] + [plain]):
            start = 0
            for ids, _ in (segments(example) if example.position_ids else [(example.input_ids, None)]):
                alone = model(input_ids=torch.tensor([ids])).logits[0]
                torch.testing.assert_close(logits[row, start : start + len(ids)], alone, atol=1e-5, rtol=0)
                start += len(ids)


def test_packed_batch_loss_equals_plain_batch_loss(model_dir, tiny_data):
    """The same examples, packed or padded one per row: the same tokens are targets, same mean loss."""
    data, tokenizer = examples_of(model_dir, tiny_data)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prepare_packing(model)
    examples = data.train[:10]
    packed = collate(pack_examples(examples, max_seq_len=64, seed=0), tokenizer.pad_token_id)
    plain = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(model(**packed).loss, model(**plain).loss, atol=1e-5, rtol=0)


def test_model_that_ignores_position_resets_is_refused(tiny_model_dir, monkeypatch):
    import transformers.masking_utils as masking

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)  # an older model's mask
    with pytest.raises(SafetuneError, match="data.packing: llama models ignore position-id resets"):
        prepare_packing(model)


def test_token_weighting_with_packing_is_refused(tiny_model_dir, tiny_data):
    tree = {"name": "t", "model": {"path": str(tiny_model_dir)},
            "data": {"train": {"path": str(tiny_data["task"])}, "safety": {"path": str(tiny_data["safety"])},
                     "packing": True},
            "method": {"name": "token_weighting", "scorer": "reference"}, "train": {"max_steps": 1}}
    with pytest.raises(RecipeError, match="data.packing: not supported with method 'token_weighting'"):
        validate_tree(tree)


def test_training_with_packing_and_mix(tiny_model_dir, tiny_data, tmp_path):
    """The loop trains on packed batches, mix's plain safety examples included."""
    recipe = validate_tree({
        "name": "t", "model": {"path": str(tiny_model_dir)},
        "data": {"train": {"path": str(tiny_data["task"])}, "safety": {"path": str(tiny_data["safety"])},
                 "max_seq_len": 64, "packing": True},
        "method": {"name": "mix", "safety_fraction": 0.25},
        "train": {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-2, "log_every": 1},
        "output": {"dir": str(tmp_path / "run")},
    })
    trainer = Trainer(recipe, show_progress=False)
    trainer.setup()
    assert all(e.position_ids for e in trainer.schedule.examples)
    assert len(trainer.schedule.examples) < len(trainer.data.train) / 2
    out = [trainer.train_step() for _ in range(3)]
    assert all(torch.isfinite(o["loss"]) and not o["diverged"] for o in out)
    batch = trainer.schedule.batch(0)
    mixed = trainer.methods[0].prepare_batch(trainer.ctx, batch, 0)
    assert any(not e.position_ids for e in mixed) and out[0]["tokens"] == sum(len(e.input_ids) for e in mixed)


def test_loss_with_kept_logits_equals_full_loss(model_dir, tiny_data):
    """The loop's loss computes logits only where a trained token is predicted: same value, same gradients."""
    data, tokenizer = examples_of(model_dir, tiny_data)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prepare_packing(model)
    for batch in (collate(data.train[:6] + data.safety[:2], tokenizer.pad_token_id),
                  collate(pack_examples(data.train[:12], 64, seed=0)[:3], tokenizer.pad_token_id)):
        full = model(**batch).loss
        full_grads = torch.autograd.grad(full, list(model.parameters()))
        kept = next_token_loss(model, batch)
        kept_grads = torch.autograd.grad(kept, list(model.parameters()))
        torch.testing.assert_close(kept, full, atol=1e-6, rtol=0)
        for a, b in zip(kept_grads, full_grads):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_batch_split_by_length_gives_the_same_gradient(model_dir, tiny_data):
    """Short task rows and long replay rows run as two passes (less padding), each weighted by
    its trained tokens: the same loss and gradient as one padded pass. Similar lengths stay one pass."""
    data, tokenizer = examples_of(model_dir, tiny_data)
    short = sorted(data.train, key=lambda e: len(e.input_ids))[:6]
    long = sorted(data.safety, key=lambda e: len(e.input_ids))[-2:]
    assert len(long[0].input_ids) > 1.6 * len(short[-1].input_ids), "fixture: two length distributions"
    assert length_groups(short) == [short]
    groups = length_groups(short + long)
    assert [len(g) for g in groups] == [6, 2] and sorted(groups[1], key=id) == sorted(long, key=id)

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    params = list(model.parameters())
    whole = next_token_loss(model, collate(short + long, tokenizer.pad_token_id))
    total = sum(e.trained_tokens for e in short + long)
    split = sum(next_token_loss(model, collate(g, tokenizer.pad_token_id)) * sum(e.trained_tokens for e in g) / total
                for g in groups)
    torch.testing.assert_close(split, whole, atol=1e-6, rtol=0)
    for a, b in zip(torch.autograd.grad(split, params), torch.autograd.grad(whole, params)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
