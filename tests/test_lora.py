"""LoRA (peft): adapters train, base weights stay, checkpoints are PEFT folders, methods see adapters only."""

import torch
from safetensors.torch import load_file

from safetune.modeling import load_model
from safetune.recipe import validate_tree
from safetune.training import train


def tree(tiny_model_dir, tiny_data, out, method="standard", **train_settings):
    return {
        "model": {"path": str(tiny_model_dir), "lora": {"r": 4, "alpha": 8}},
        "data": {"train": {"path": str(tiny_data["task"])}, "safety": {"path": str(tiny_data["safety"])},
                 "max_seq_len": 64},
        "method": method,
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-2, "save_every": 2} | train_settings,
        "output": {"dir": str(out)},
    }


def test_lora_run_saves_adapters_that_change_the_model(tiny_model_dir, tiny_data, tmp_path):
    recipe = validate_tree(tree(tiny_model_dir, tiny_data, tmp_path / "run"))
    result = train(recipe, show_progress=False)
    assert (result.final_dir / "adapter_config.json").is_file()
    assert (result.final_dir / "adapter_model.safetensors").is_file()
    assert not (result.final_dir / "model.safetensors").exists()
    merged = load_model(recipe.model, path=str(result.final_dir))
    base = load_model(recipe.model)
    ids = torch.tensor([[1, 5, 9, 12]])
    assert not torch.allclose(merged(ids).logits, base(ids).logits), "the adapters changed the model"


def test_lora_resume_is_exact(tiny_model_dir, tiny_data, tmp_path):
    # constant LR, so a 2-step run extended to 4 steps follows the 4-step run's schedule
    whole = train(validate_tree(tree(tiny_model_dir, tiny_data, tmp_path / "a", lr_schedule="constant")),
                  show_progress=False)
    split = tree(tiny_model_dir, tiny_data, tmp_path / "b", lr_schedule="constant", max_steps=2)
    train(validate_tree(split), show_progress=False)
    split["train"]["max_steps"] = 4
    resumed = train(validate_tree(split), resume=True, show_progress=False)
    a = load_file(whole.final_dir / "adapter_model.safetensors")
    b = load_file(resumed.final_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_freeze_with_lora_keeps_that_layers_adapters(tiny_model_dir, tiny_data, tmp_path):
    result = train(validate_tree(tree(tiny_model_dir, tiny_data, tmp_path / "run",
                                      {"name": "freeze", "layers": [0]})), show_progress=False)
    after = load_file(result.final_dir / "adapter_model.safetensors")
    layer0_b = [k for k in after if ".layers.0." in k and "lora_B" in k]
    layer1_b = [k for k in after if ".layers.1." in k and "lora_B" in k]
    assert layer0_b and all(float(after[k].abs().sum()) == 0.0 for k in layer0_b)  # B starts at zero and stayed
    assert any(float(after[k].abs().sum()) > 0.0 for k in layer1_b)
