"""safetune: fine-tune a causal LM without eroding its safety alignment."""

__version__ = "0.1.0"
