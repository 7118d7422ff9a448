"""Safety methods, one module each, all behind `SafetyMethod` (see base.py)."""

from __future__ import annotations

from safetune.methods.base import MethodContext, SafetyMethod
from safetune.methods.mix import Mix
from safetune.methods.standard import Standard

REGISTRY: dict[str, type[SafetyMethod]] = {cls.name: cls for cls in (Standard, Mix)}


def build_methods(configs) -> list[SafetyMethod]:
    return [REGISTRY[config.name](config) for config in configs]


__all__ = ["MethodContext", "SafetyMethod", "build_methods", "REGISTRY"]
