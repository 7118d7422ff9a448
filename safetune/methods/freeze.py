"""Layer freezing: keep the safety-critical decoder layers exactly as aligned.

`layers: [i, ...]` freezes those layers; `layers: auto` scores every layer with a
detector (see layers.py), writes the table to the run directory, and freezes the top ones.
"""

from __future__ import annotations

import json

from safetune.errors import SafetuneError
from safetune.files import write_atomic
from safetune.methods.base import MethodContext, SafetyMethod
from safetune.methods import layers as detection
from safetune.model_layers import decoder_layers, layer_parameter_names


def detect(ctx: MethodContext, config) -> list[float]:
    """Score every decoder layer with the configured detector."""
    if config.detector == "fisher":
        return detection.fisher_scores(ctx, config.samples, config.batch_size)
    from safetune.evaluation.refusal import keyword_detector
    from safetune.evaluation.runner import refusal_rate
    from safetune.evaluation.suites import load_suite

    refusal = keyword_detector(ctx.recipe.eval.refusal)
    harmful = [e.messages[0]["content"] for e in ctx.safety[: config.samples]]
    benign = []
    for suite in ctx.recipe.eval.suites:
        if suite.kind == "over_refusal":
            benign = [row.prompt for row in load_suite(suite).rows[: config.samples]]

    def measure(prompts: list[str]) -> float:
        return refusal_rate(ctx.model, ctx.tokenizer, prompts, refusal,
                            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)

    if not harmful:
        raise SafetuneError("method freeze: detector 'ablation' needs data.safety prompts")
    return detection.ablation_scores(ctx, config.ablation_scale, harmful, benign, measure)


class Freeze(SafetyMethod):
    name = "freeze"
    setup_order = 0  # runs first, so methods set up after it see only the trainable parameters

    def setup(self, ctx: MethodContext) -> None:
        _, blocks = decoder_layers(ctx.model)
        self.scores = None
        if self.config.layers == "auto":
            self.scores = detect(ctx, self.config)
            self.layers = detection.select_layers(self.scores, self.config.top_k, self.config.threshold)
            table = [{"layer": i, "score": s, "frozen": i in self.layers} for i, s in enumerate(self.scores)]
            if ctx.is_main and ctx.run_dir is not None:
                write_atomic(ctx.run_dir / "safety_layers.json",
                             json.dumps({"detector": self.config.detector, "layers": table}, indent=2))
            ctx.log(f"freeze: {self.config.detector} detector chose layers {self.layers}")
        else:
            self.layers = sorted(set(self.config.layers))
        missing = [i for i in self.layers if i >= len(blocks)]
        if missing:
            raise SafetuneError(
                f"method[freeze].layers: layer {missing[0]} does not exist (the model has {len(blocks)} layers)")

    def frozen_parameter_names(self, ctx: MethodContext) -> set[str]:
        return layer_parameter_names(ctx.model, self.layers)

    def summary(self) -> dict:
        return {"frozen_layers": self.layers, "detector": self.config.detector if self.scores else None,
                "layer_scores": self.scores}


def detect_layers(recipe) -> dict:
    """`safetune layers`: run the recipe's safety-layer detector (its freeze method, else fisher)."""
    import torch

    from safetune.data import load_examples, tokenize_all
    from safetune.errors import UsageError
    from safetune.modeling import load_model, load_tokenizer, pick_device
    from safetune.recipe import FreezeMethod

    config = next((m for m in recipe.method if m.name == "freeze"), None) or FreezeMethod(name="freeze")
    if recipe.data.safety is None:
        raise UsageError("data.safety: layer detection needs safety examples (prompt -> safe response)")
    torch.manual_seed(recipe.train.seed)
    device = pick_device(recipe.train.device)
    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model, device=device)
    safety = tokenize_all(load_examples(recipe.data.safety, "data.safety", kind="safety"), tokenizer,
                          recipe.data.max_seq_len)
    ctx = MethodContext(model=model, tokenizer=tokenizer, recipe=recipe, device=device, run_dir=None,
                        safety=safety, seed=recipe.train.seed)
    scores = detect(ctx, config)
    chosen = detection.select_layers(scores, config.top_k, config.threshold)
    return {"detector": config.detector, "scores": scores,
            "layers": [{"layer": i, "score": s, "frozen": i in chosen} for i, s in enumerate(scores)]}
