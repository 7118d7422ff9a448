"""Data mixing: replay safety examples (and benign borderline ones) inside every task batch.

The task part of each batch is left as it is (so task exposure equals plain fine-tuning)
and extra examples are added so that they make up the configured shares of the batch.
With B task examples, safety share f_s and borderline share f_b, the batch holds
B / (1 - f_s - f_b) examples:

    k_s = round(B · f_s / (1 - f_s - f_b)), at least 1      (data.safety: refusals)
    k_b = round(B · f_b / (1 - f_s - f_b)), at least 1 if f_b > 0   (data.borderline)

Why borderline examples: replaying only refusals teaches "refuse whatever looks
sensitive" (over-refusal). Benign prompts with scary words and their normal answers
(`data.borderline`) teach the boundary instead.
"""

from __future__ import annotations

import torch

from safetune.data import Example
from safetune.errors import SafetuneError
from safetune.methods.base import MethodContext, SafetyMethod


def borderline_examples(ctx: MethodContext) -> list[Example]:
    """The loop's tokenised data.borderline."""
    return ctx.borderline


class Mix(SafetyMethod):
    name = "mix"

    def setup(self, ctx: MethodContext) -> None:
        if not ctx.safety:
            raise SafetuneError("method 'mix' needs data.safety examples")
        safety_share, borderline_share = self.config.safety_fraction, self.config.borderline_fraction
        task_share = 1 - safety_share - borderline_share
        batch = ctx.recipe.train.batch_size
        self.per_batch = max(1, round(batch * safety_share / task_share))
        self.borderline: list[Example] = []
        self.borderline_per_batch = 0
        if borderline_share > 0:
            self.borderline = borderline_examples(ctx)
            if not self.borderline:
                raise SafetuneError("method 'mix': borderline_fraction > 0 needs data.borderline examples")
            self.borderline_per_batch = max(1, round(batch * borderline_share / task_share))
        self.seed = ctx.seed

    def prepare_batch(self, ctx, examples, micro_step):
        # Seeded by the micro-step so a resumed run draws the same examples.
        generator = torch.Generator().manual_seed(self.seed * 7919 + micro_step)
        picks = torch.randint(len(ctx.safety), (self.per_batch,), generator=generator).tolist()
        replay = [ctx.safety[i] for i in picks]
        if self.borderline_per_batch:  # drawn after the safety picks: f_b = 0 draws exactly as before
            picks = torch.randint(len(self.borderline), (self.borderline_per_batch,), generator=generator).tolist()
            replay += [self.borderline[i] for i in picks]
        return examples + replay

    def summary(self) -> dict:
        return {"safety_per_batch": self.per_batch, "borderline_per_batch": self.borderline_per_batch}
