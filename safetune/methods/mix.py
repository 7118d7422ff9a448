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


class Mix(SafetyMethod):
    name = "mix"

    def setup(self, ctx: MethodContext) -> None:
        if not ctx.safety:
            raise SafetuneError("method 'mix' needs data.safety examples")
        if self.config.borderline_fraction > 0 and not ctx.borderline:
            raise SafetuneError("method 'mix': borderline_fraction > 0 needs data.borderline examples")
        self.borderline: list[Example] = ctx.borderline
        self.per_batch, self.borderline_per_batch = self.counts(ctx.recipe.train.batch_size)
        self.seed = ctx.seed

    def counts(self, task_examples: int) -> tuple[int, int]:
        """Safety and borderline examples to add to `task_examples` so they make up their shares."""
        safety_share, borderline_share = self.config.safety_fraction, self.config.borderline_fraction
        task_share = 1 - safety_share - borderline_share
        safety = max(1, round(task_examples * safety_share / task_share))
        borderline = max(1, round(task_examples * borderline_share / task_share)) if borderline_share > 0 else 0
        return safety, borderline

    def prepare_batch(self, ctx, examples, micro_step):
        # From the batch it is given: in a distributed run that is the global batch, before sharding.
        per_batch, borderline_per_batch = self.counts(len(examples))
        # Seeded by the micro-step so a resumed run draws the same examples.
        generator = torch.Generator().manual_seed(self.seed * 7919 + micro_step)
        picks = torch.randint(len(ctx.safety), (per_batch,), generator=generator).tolist()
        replay = [ctx.safety[i] for i in picks]
        if borderline_per_batch:  # drawn after the safety picks: f_b = 0 draws exactly as before
            picks = torch.randint(len(self.borderline), (borderline_per_batch,), generator=generator).tolist()
            replay += [self.borderline[i] for i in picks]
        return examples + replay

    def summary(self) -> dict:
        return {"safety_per_batch": self.per_batch, "borderline_per_batch": self.borderline_per_batch}
