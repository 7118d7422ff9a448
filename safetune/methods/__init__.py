"""Safety methods, one module each, all behind `SafetyMethod` (see base.py)."""

from __future__ import annotations

from safetune.methods.base import MethodContext, SafetyMethod
from safetune.methods.ewc import EWC
from safetune.methods.freeze import Freeze
from safetune.methods.mix import Mix
from safetune.methods.safegrad import SafeGrad
from safetune.methods.sap import SAP
from safetune.methods.standard import Standard
from safetune.methods.token_weighting import TokenWeighting

REGISTRY: dict[str, type[SafetyMethod]] = {cls.name: cls for cls in (Standard, Mix, SafeGrad, Freeze, EWC, SAP, TokenWeighting)}


def build_methods(configs) -> list[SafetyMethod]:
    """Instantiate the recipe's methods; freezing is set up first (see SafetyMethod.setup_order)."""
    methods = [REGISTRY[config.name](config) for config in configs]
    return sorted(methods, key=lambda m: m.setup_order)


__all__ = ["MethodContext", "SafetyMethod", "build_methods", "REGISTRY"]
