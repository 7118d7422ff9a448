"""Data mixing: replay safety examples inside every task batch.

The task part of each batch is left as it is (so task exposure equals plain fine-tuning)
and k safety examples are added, with k chosen so they make up `safety_fraction` of the
batch: k = round(B * f / (1 - f)), at least 1.
"""

from __future__ import annotations

import torch

from safetune.errors import SafetuneError
from safetune.methods.base import MethodContext, SafetyMethod


class Mix(SafetyMethod):
    name = "mix"

    def setup(self, ctx: MethodContext) -> None:
        if not ctx.safety:
            raise SafetuneError("method 'mix' needs data.safety examples")
        fraction = self.config.safety_fraction
        self.per_batch = max(1, round(ctx.recipe.train.batch_size * fraction / (1 - fraction)))
        self.seed = ctx.seed

    def prepare_batch(self, ctx, examples, micro_step):
        # Seeded by the micro-step so a resumed run draws the same safety examples.
        generator = torch.Generator().manual_seed(self.seed * 7919 + micro_step)
        picks = torch.randint(len(ctx.safety), (self.per_batch,), generator=generator).tolist()
        return examples + [ctx.safety[i] for i in picks]
