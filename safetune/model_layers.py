"""The decoder layers of a transformer: where they are, and which parameters each one holds.

A floor module (torch only): `distributed` shards the model layer by layer and the methods
work layer by layer (layer detection, freezing, SafeGrad's per-layer projection), so both
take these helpers from here instead of from each other.
"""

from __future__ import annotations

import re

import torch

from safetune.errors import SafetuneError


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The name prefix and ModuleList of the transformer blocks (`model.layers` in Llama)."""
    count = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise SafetuneError("cannot find the decoder layers of this model (a ModuleList of num_hidden_layers blocks)")


def layer_of(parameter_name: str, prefix: str) -> int | None:
    """The layer index in a parameter's name (`<prefix>.<index>.…`), or None outside the layers."""
    match = re.match(re.escape(prefix) + r"\.(\d+)\.", parameter_name)
    return int(match.group(1)) if match else None


def layer_parameter_names(model: torch.nn.Module, layers: list[int]) -> set[str]:
    prefix, _ = decoder_layers(model)
    return {name for name, _ in model.named_parameters() if layer_of(name, prefix) in set(layers)}
