"""Load a Hugging Face causal LM and its tokenizer, and format chat prompts.

This is the real `from_pretrained` code path: the lab model and the tests' tiny models
go through it exactly as a hub model would.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from safetune.errors import SafetuneError, UsageError
from safetune.recipe import ModelConfig

# Used when a tokenizer has no chat template of its own (and the recipe gives none).
# Documented in the README; the lab tokenizer ships this same template.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lab_model_dir() -> Path:
    """Where `safetune lab build` puts the lab model (override with SAFETUNE_LAB_MODEL)."""
    default = Path.home() / ".cache" / "safetune" / "lab-model"
    return Path(os.environ.get("SAFETUNE_LAB_MODEL", default)).expanduser()


def resolve_model_path(path: str) -> str:
    """'lab' -> the lab model directory; a local path stays a path; else a hub id."""
    if path == "lab":
        where = lab_model_dir()
        if not (where / "config.json").is_file():
            raise UsageError(
                f"model.path: the lab model is not built yet ({where}); run `safetune lab build`"
            )
        return str(where)
    return path


def load_tokenizer(config: ModelConfig, path: str | None = None) -> PreTrainedTokenizerBase:
    source = path or resolve_model_path(config.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise UsageError(_not_available(source, err)) from None
    if config.chat_template:
        tokenizer.chat_template = config.chat_template
    elif not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # Padding positions are masked out of the loss and attention, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token is None:
        raise SafetuneError(f"model.path: tokenizer of {source} has no eos_token; set one")
    return tokenizer


ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_model(config: ModelConfig, path: str | None = None, device: torch.device | str = "cpu") -> PreTrainedModel:
    """The base model (path None) or a saved checkpoint; a LoRA checkpoint is merged into its base."""
    if path is not None and is_adapter_folder(path):
        from peft import PeftModel

        base = load_model(config, device=device)
        return PeftModel.from_pretrained(base, path).merge_and_unload().to(device)
    source = path or resolve_model_path(config.path)
    dtype = "auto" if config.dtype == "auto" else DTYPES[config.dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=config.revision,
            dtype=dtype,
            trust_remote_code=config.trust_remote_code,
            use_safetensors=True if Path(source).is_dir() else None,
        )
    except (OSError, ValueError) as err:
        raise UsageError(_not_available(source, err)) from None
    return model.to(device)


def add_lora(model: PreTrainedModel, config: ModelConfig):
    """Wrap the model with trainable LoRA adapters; the base weights are frozen by peft."""
    from peft import LoraConfig, get_peft_model

    settings = config.lora
    return get_peft_model(model, LoraConfig(
        task_type="CAUSAL_LM", r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
    ))


def load_trained_weights(model, folder: Path, device) -> None:
    """Load a checkpoint's weights into an already built model (full weights or LoRA adapters)."""
    from safetensors.torch import load_file

    if is_adapter_folder(folder):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(Path(folder) / "adapter_model.safetensors", device=str(device)))
    else:
        # strict=False: tied weights (e.g. lm_head = embeddings) are stored once
        model.load_state_dict(load_file(Path(folder) / "model.safetensors", device=str(device)), strict=False)


def _not_available(source: str, err: Exception) -> str:
    if Path(source).exists():
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"model.path: cannot load {source}: {first}"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "offline mode (HF_HUB_OFFLINE=1)" if offline else "no local directory of that name"
    return (
        f"model.path: '{source}' is not available locally ({why}); "
        "give a local model directory or download it first"
    )


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """A single user turn rendered up to where the assistant starts answering."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
