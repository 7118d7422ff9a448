"""Load a Hugging Face causal LM and its tokenizer, and format chat prompts.

This is the real `from_pretrained` code path: the lab model and the tests' tiny models
go through it exactly as a hub model would.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from safetune.checkpoint import weights_problem
from safetune.errors import SafetuneError, UsageError
from safetune.gguf import check_gguf_file, is_gguf_path, load_gguf_config, load_gguf_model, load_gguf_tokenizer
from safetune.recipe import ModelConfig

# Hugging Face's per-file progress bars would drown safetune's own progress output.
hf_logging.disable_progress_bar()

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


def real_model_dir() -> Path:
    """Where `safetune real build` puts the aligned SmolLM2 (override with SAFETUNE_REAL_MODEL)."""
    default = Path.home() / ".cache" / "safetune" / "smollm2-135m-aligned"
    return Path(os.environ.get("SAFETUNE_REAL_MODEL") or default).expanduser()


# model.path names for the models safetune builds itself: name -> (folder, the command that builds it)
BUILT_MODELS = {"lab": (lab_model_dir, "safetune lab build"), "real": (real_model_dir, "safetune real build")}


def resolve_model_path(path: str) -> str:
    """'lab' / 'real' -> the folder of the model safetune built; a local path stays a path; else a hub id."""
    if path in BUILT_MODELS:
        folder, command = BUILT_MODELS[path]
        where = folder()
        if not (where / "config.json").is_file():
            raise UsageError(f"model.path: the {path} model is not built yet ({where}); run `{command}`")
        return str(where)
    return path


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_model_folder(path: str | Path, what: str = "model.path") -> None:
    """Fail in one line, before anything is computed, when a local folder is not a model.

    A hub id (no such local path) passes: `from_pretrained` reports on it.
    """
    if is_gguf_path(path):
        check_gguf_file(path, what)
        return
    folder = Path(path)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UsageError(f"{what}: {folder} is a file; give a Hugging Face model folder")
    config = folder / "config.json"
    if not is_adapter_folder(folder):  # a LoRA checkpoint names its base model instead
        if not config.is_file():
            raise UsageError(f"{what}: {folder} is not a Hugging Face model folder (no config.json)")
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (ValueError, AttributeError):  # not JSON (or not UTF-8), or not an object
            raise UsageError(f"{what}: {config} is not a JSON object; is {folder} a Hugging Face model folder?") from None
        if not model_type:
            raise UsageError(f"{what}: {config} has no model_type; is {folder} a Hugging Face model folder?")
    if not any(folder.glob("*.safetensors")) and not _pickle_files(folder):
        raise UsageError(f"{what}: {folder} has no weights (no *.safetensors file)")
    damaged = _weights_problem(folder, _folder_signature(folder))
    if damaged:
        raise SafetuneError(f"{what}: {damaged}; this model cannot be trusted: download or save it again")


def _folder_signature(folder: Path) -> tuple:
    """The folder's files with their sizes and times: the weights are checked again only when one changes."""
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


@functools.lru_cache(maxsize=16)
def _weights_problem(folder: Path, signature: tuple) -> str | None:
    return weights_problem(folder)


# The files a Hugging Face tokenizer is saved as (one of them is enough).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


def check_tokenizer_folder(source: str, what: str) -> None:
    folder = Path(source)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{what}: {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                         "save the tokenizer into the model folder")


def refuse_pickle_weights(path: str | Path, what: str, allow_pickle: bool) -> None:
    """Weights must be safetensors: pickle files (.bin, .pt) can run arbitrary code when loaded."""
    folder = Path(path)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = _pickle_files(folder)
    if pickles:
        raise UsageError(
            f"{what}: {folder} has only pickle weights ({pickles[0]}), which can run code when loaded; "
            "convert them to safetensors, or set model.allow_pickle=true if you trust the source"
        )


def _pickle_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)


def model_source(config: ModelConfig, path: str | Path | None = None) -> str:
    """The folder or hub id to load (path: a checkpoint instead of model.path), checked first."""
    source = str(path) if path is not None else resolve_model_path(config.path)
    what = "model.path" if path is None else "checkpoint"
    check_model_folder(source, what)
    refuse_pickle_weights(source, what, config.allow_pickle)
    if config.trust_remote_code:
        warn_once(f"warning: model.trust_remote_code is true: Python code that comes with {source} "
                  "runs on this machine; use it only with models you trust")
    if config.allow_pickle and not any(Path(source).glob("*.safetensors")):  # a hub id may hold pickles too
        warn_once(f"warning: model.allow_pickle is true: pickle weights of {source} may be loaded, "
                  "and pickle can run code; use it only with models you trust")
    return source


@functools.cache
def warn_once(message: str) -> None:
    """A warning on stderr, once per process (the tokenizer and the model share a source)."""
    print(message, file=sys.stderr)


def load_tokenizer(config: ModelConfig, path: str | None = None) -> PreTrainedTokenizerBase:
    source = model_source(config, path)
    if not is_gguf_path(source):
        check_tokenizer_folder(source, "model.path" if path is None else "checkpoint")
    try:
        tokenizer = load_gguf_tokenizer(source) if is_gguf_path(source) else AutoTokenizer.from_pretrained(
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
    source = model_source(config, path)
    if path is not None and is_adapter_folder(path):
        from peft import PeftModel

        base = load_model(config, device=device)
        return PeftModel.from_pretrained(base, path).merge_and_unload().to(device)
    dtype = "auto" if config.dtype == "auto" else DTYPES[config.dtype]
    if is_gguf_path(source):
        return load_gguf_model(source, dtype).to(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=config.revision,
            dtype=dtype,
            trust_remote_code=config.trust_remote_code,
            use_safetensors=None if config.allow_pickle else True,  # hub models too: no pickle unless allowed
        )
    except (OSError, ValueError) as err:
        raise UsageError(_not_available(source, err)) from None
    return model.to(device)


def build_empty_model(config: ModelConfig, dtype: torch.dtype, generation_config=None,
                      weight_conversions=None) -> PreTrainedModel:
    """The model `load_model` returns, built on the meta device: its structure, no weights read.

    For FSDP, where no process may hold the whole model on its device: every rank builds
    this, shards it, and receives its shards of the weights rank 0 read
    (`Distributed.load_shards`). From the model rank 0 loaded: `dtype` (so what it sends
    fits), its `generation_config` (the folder's generation settings) and transformers'
    `_weight_conversions` (saving renames keys back to the checkpoint's own names, e.g.
    GPT-NeoX's `embed_out`; without it a model built from its config saves its module names).
    """
    from transformers import AutoConfig

    source = model_source(config)
    try:
        model_config = load_gguf_config(source) if is_gguf_path(source) else AutoConfig.from_pretrained(
            source, revision=config.revision, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as err:
        raise UsageError(_not_available(source, err)) from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype,
                                                 trust_remote_code=config.trust_remote_code)
    if generation_config is not None:
        model.generation_config = generation_config
    if weight_conversions is not None:
        model._weight_conversions = weight_conversions
    return model.eval()  # as from_pretrained returns it


def add_lora(model: PreTrainedModel, config: ModelConfig):
    """Wrap the model with trainable LoRA adapters; the base weights are frozen by peft."""
    from peft import LoraConfig, get_peft_model

    settings = config.lora
    return get_peft_model(model, LoraConfig(
        task_type="CAUSAL_LM", r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
    ))


def adapter_weights_by_model_name(model, saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved LoRA adapter's tensors under the names the peft model gives them: peft saves
    them without the adapter's name (`lora_A.weight` for the model's `lora_A.default.weight`)."""
    adapter = f".{model.active_adapter}."
    named = {}
    for key in model.state_dict():
        saved_key = key.replace(adapter, ".")
        if saved_key != key and saved_key in saved:
            named[key] = saved[saved_key]
    return named


class BaseWithoutAdapters:
    """A LoRA model's frozen base, called as a model: each call runs `model` with its adapters
    switched off (peft's `disable_adapter`), in eval mode and without gradients.

    Adapters start at zero (B = 0), so the base is exactly the model the run started from:
    the reference a method compares with, with no second copy of the weights in memory.
    `module` names the wrapped model, as DDP's wrapper does, so code that looks through
    wrappers (for the output head, for `logits_to_keep`) finds it.
    """

    def __init__(self, model):
        self.module = model

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        model, training = self.module, self.module.training
        model.eval()
        try:
            with model.disable_adapter():
                return model(*args, **kwargs)
        finally:
            model.train(training)


SAFETENSORS_INDEX = "model.safetensors.index.json"


def read_saved_weights(folder: Path, device) -> dict[str, torch.Tensor]:
    """The full weights `save_pretrained` wrote: model.safetensors, or the shards its index
    lists (a model above `max_shard_size`, 50 GB by default, is saved in several files)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "model.safetensors").is_file() or not (folder / SAFETENSORS_INDEX).is_file():
        return load_file(folder / "model.safetensors", device=str(device))
    shards = sorted(set(json.loads((folder / SAFETENSORS_INDEX).read_text(encoding="utf-8"))["weight_map"].values()))
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        weights.update(load_file(folder / shard, device=str(device)))
    return weights


def load_trained_weights(model, folder: Path, device) -> None:
    """Load a checkpoint's weights into an already built model (full weights or LoRA adapters)."""
    from safetensors.torch import load_file

    if is_adapter_folder(folder):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(Path(folder) / "adapter_model.safetensors", device=str(device)))
        return
    weights = read_saved_weights(folder, device)
    if set(weights) <= set(model.state_dict()):
        # tied weights (e.g. lm_head = embeddings) are stored once, so some keys may be absent
        model.load_state_dict(weights, strict=False)
        return
    # Saved names differ from the module's (transformers renames some on load, e.g. GPT-NeoX's
    # embed_out -> lm_head): let from_pretrained apply its own mapping, then copy everything.
    loaded = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype)
    model.load_state_dict(loaded.state_dict())


def _not_available(source: str, err: Exception) -> str:
    if Path(source).exists():
        first = str(err).strip().splitlines()[0].rstrip() if str(err).strip() else type(err).__name__
        if first.endswith(":") and ". " in first:  # "...in its name:" then a long list: end at a full sentence
            first = first.rsplit(". ", 1)[0] + "."
        return f"model.path: cannot load {source}: {first}"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "offline mode (HF_HUB_OFFLINE=1)" if offline else "no local directory of that name"
    return (
        f"model.path: '{source}' is not available locally ({why}); "
        "give a local model directory or download it first"
    )


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, system_prompt: str | None = None) -> str:
    """A user turn (after a system turn, when given) rendered up to where the assistant starts answering."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return tokenizer.apply_chat_template(
        [*system, {"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
