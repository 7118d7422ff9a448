"""Plain fine-tuning: the loop's cross-entropy and nothing else (the unprotected baseline)."""

from safetune.methods.base import SafetyMethod


class Standard(SafetyMethod):
    name = "standard"
