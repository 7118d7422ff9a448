"""Models shipped as a GGUF file (llama.cpp's format), read through transformers' GGUF support.

A GGUF file holds the config, the tokenizer and the (often quantized) weights in one file.
transformers dequantizes the weights on load; safetune then trains the result like any
other model. What it saves (checkpoints, `final/`, `convert_gguf`) is a plain Hugging Face
folder with safetensors: nothing downstream needs to know the model came from GGUF.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from safetune.errors import UsageError

GGUF_MAGIC = b"GGUF"
INSTALL_HINT = "pip install gguf"


def is_gguf_path(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def _parts(path: str | Path) -> tuple[str, str]:
    """from_pretrained takes a GGUF model as (folder, gguf_file=name)."""
    file = Path(path).expanduser()
    return str(file.parent), file.name


def check_gguf_file(path: str | Path, what: str = "model.path") -> None:
    """One line, before any loading, when `path` cannot be read as a GGUF model here."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{what}: GGUF file not found: {file}")
    with open(file, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise UsageError(f"{what}: {file} is not a GGUF file (it does not start with 'GGUF')")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UsageError(f"{what}: {file} is a GGUF file; reading it needs the gguf package: {INSTALL_HINT}") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(file)  # memory-mapped: reads the header, not the weights
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode()
    except (KeyError, ValueError, IndexError) as err:
        raise UsageError(f"{what}: {file} is a damaged GGUF file ({err})") from None
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UsageError(
            f"{what}: {file} holds a '{architecture}' model, which transformers cannot read from GGUF "
            f"(it reads: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); convert it to a Hugging Face folder"
        )


def load_gguf_model(path: str | Path, dtype: torch.dtype | str) -> PreTrainedModel:
    """The model dequantized to `dtype` ("auto": float32), as a plain, trainable, savable model.

    transformers marks a GGUF-loaded model as quantized (`config.quantization_config` and a
    GGUF quantizer) and then refuses to `save_pretrained` it, though its weights are ordinary
    tensors by then. Dropping both marks makes it the model a safetensors folder would give.
    """
    check_gguf_file(path)
    folder, name = _parts(path)
    dtype = torch.float32 if dtype == "auto" else dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except (NotImplementedError, ValueError, KeyError) as err:
        # e.g. a quantization type gguf cannot dequantize, or tensors that do not fit the config
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"model.path: cannot load {path}: {first}") from None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model


def load_gguf_tokenizer(path: str | Path):
    check_gguf_file(path)
    folder, name = _parts(path)
    try:
        return AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (NotImplementedError, ValueError, KeyError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"model.path: cannot read the tokenizer of {path}: {first}") from None


def load_gguf_config(path: str | Path):
    check_gguf_file(path)
    folder, name = _parts(path)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def convert_gguf(path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the GGUF model as a new Hugging Face folder (safetensors + tokenizer), atomically."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{out_dir} already exists and is not empty; name a new folder")
    model = load_gguf_model(path, dtype)
    tokenizer = load_gguf_tokenizer(path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
