"""Finding the safety-critical decoder layers.

Two detectors, each giving every decoder layer a score (higher = more safety-critical):
- `fisher`: mass of the diagonal Fisher of the refusal loss in the layer, per parameter.
- `ablation`: perturb the layer (scale its attention and MLP weights, Li et al. ICLR 2025;
  scale 0 turns the layer into the identity) and measure how far refusal moves on harmful
  prompts, plus how far over-refusal moves on benign ones.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from safetune.distributed import full_tensor
from safetune.methods.base import MethodContext
from safetune.methods.safety_signal import diagonal_fisher
from safetune.model_layers import decoder_layers, layer_of


def fisher_scores(ctx: MethodContext, samples: int, batch_size: int) -> list[float]:
    prefix, blocks = decoder_layers(ctx.model)
    fisher = diagonal_fisher(ctx, samples, batch_size)
    mass = [0.0] * len(blocks)
    count = [0] * len(blocks)
    for name, values in fisher.items():
        layer = layer_of(name, prefix)
        if layer is not None:
            mass[layer] += float(full_tensor(values.sum()))  # FSDP: a partial sum per shard
            count[layer] += values.numel()
    return [m / max(c, 1) for m, c in zip(mass, count)]


@contextmanager
def scaled_layer(block: nn.Module, scale: float):
    """Temporarily multiply a block's weight matrices (attention + MLP, not the norms)."""
    saved = {}
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            if parameter.dim() >= 2:
                saved[name] = parameter.detach().clone()
                parameter.mul_(scale)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, parameter in block.named_parameters():
                if name in saved:
                    parameter.copy_(saved[name])


def ablation_scores(ctx: MethodContext, scale: float, harmful: list[str], benign: list[str], measure) -> list[float]:
    """|Δ refusal on harmful| + |Δ refusal on benign| when each layer alone is scaled.

    `measure(prompts) -> refusal rate` is injected so the detector does not depend on
    how generation and refusal detection are done.
    """
    _, blocks = decoder_layers(ctx.model)
    base_harmful = measure(harmful)
    base_benign = measure(benign) if benign else 0.0
    scores = []
    for block in blocks:
        with scaled_layer(block, scale):
            moved = abs(measure(harmful) - base_harmful)
            if benign:
                moved += abs(measure(benign) - base_benign)
        scores.append(moved)
    return scores


def select_layers(scores: list[float], top_k: int | None, threshold: float | None) -> list[int]:
    """The top_k highest-scoring layers, or those scoring >= threshold x the best score."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    if threshold is not None:
        best = max(scores) if scores else 0.0
        chosen = [i for i in order if best > 0 and scores[i] >= threshold * best]
    else:
        chosen = order[:top_k]
    return sorted(chosen)
