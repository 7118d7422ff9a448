"""EWC toward the aligned weights (Kirkpatrick et al. 2017, as used in safety fine-tuning).

loss = task_loss + λ Σ_i F_i (θ_i - θ_safe_i)², with F the diagonal Fisher of the refusal
loss at the aligned weights and θ_safe the weights before fine-tuning. Both are kept for
trainable parameters only. F is cached in the run directory so a resume reuses it.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from safetune.methods.base import MethodContext, SafetyMethod
from safetune.methods.safety_signal import diagonal_fisher

FISHER_FILE = "ewc_fisher.safetensors"


class EWC(SafetyMethod):
    name = "ewc"

    def setup(self, ctx: MethodContext) -> None:
        params = ctx.trainable_parameters()
        # setup runs before a resume loads checkpoint weights, so these are the aligned weights
        self.anchor = {name: p.detach().clone() for name, p in params}
        cache = ctx.run_dir / FISHER_FILE
        if cache.is_file():
            self.fisher = {k: v.to(ctx.device) for k, v in load_file(cache).items()}
            ctx.log(f"ewc: reusing the Fisher cached in {cache}")
        else:
            self.fisher = diagonal_fisher(ctx, self.config.fisher_samples, self.config.fisher_batch_size)
            if ctx.run_dir.is_dir() and ctx.is_main:
                save_file({k: v.contiguous().cpu() for k, v in self.fisher.items()}, str(cache))
        self.names = [name for name, _ in params if name in self.fisher]
        self.parameters = dict(params)

    def penalty(self) -> torch.Tensor:
        terms = [(self.fisher[n] * (self.parameters[n] - self.anchor[n]) ** 2).sum() for n in self.names]
        return self.config.strength * torch.stack(terms).sum()

    def extra_loss(self, ctx: MethodContext, batch) -> torch.Tensor:
        # The loop divides every micro-batch loss by grad_accum, so the penalty counts once per step.
        return self.penalty()

    def summary(self) -> dict:
        with torch.no_grad():
            return {"strength": self.config.strength, "final_penalty": float(self.penalty()),
                    "fisher_samples": self.config.fisher_samples}
