"""EWC toward the aligned weights (Kirkpatrick et al. 2017, as used in safety fine-tuning).

loss = task_loss + λ Σ_i F_i (θ_i - θ_safe_i)², with F the diagonal Fisher of the refusal
loss at the aligned weights (with `safety_data: refusals_and_borderline`, plus w times the
Fisher of data.borderline's normal answers, so the weights that answer benign look-alikes
are anchored too) and θ_safe the weights before fine-tuning. Both are kept for
trainable parameters only. F is cached in the run directory so a resume reuses it.

The penalty's gradient, 2λ F (θ - θ_safe), is known in closed form, so it is added to
the accumulated gradient once per step with foreach ops (a few fused kernels over all
tensors) instead of building an autograd graph over every parameter in each micro-batch.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from safetune.distributed import distribute_like, full_tensor, gather_full
from safetune.methods.base import MethodContext, SafetyMethod
from safetune.methods.safety_signal import diagonal_fisher

FISHER_FILE = "ewc_fisher.safetensors"


class EWC(SafetyMethod):
    name = "ewc"
    # after freezing (0), and before the other gradient editors (1): its term is part of the
    # loss's gradient, which e.g. SafeGrad then projects
    setup_order = 0.5

    def setup(self, ctx: MethodContext) -> None:
        params = ctx.trainable_parameters()
        # setup runs before a resume loads checkpoint weights, so these are the aligned weights
        self.anchor = {name: p.detach().clone() for name, p in params}
        cache = ctx.run_dir / FISHER_FILE if ctx.run_dir else None
        if cache is not None and cache.is_file():
            by_name = dict(params)  # (FSDP: each rank keeps its shards of the cached Fisher)
            self.fisher = {k: distribute_like(v.to(ctx.device), by_name.get(k)) for k, v in load_file(cache).items()}
            ctx.log(f"ewc: reusing the Fisher cached in {cache}")
        else:
            self.fisher = self.compute_fisher(ctx)
            ctx.broadcast_tensors(list(self.fisher.values()))  # one Fisher for all ranks
            whole = gather_full(self.fisher)  # FSDP: every rank takes part; plain tensors pass through
            if cache is not None and ctx.run_dir.is_dir() and ctx.is_main:
                save_file({k: v.contiguous().cpu() for k, v in whole.items()}, str(cache))
        self.names = [name for name, _ in params if name in self.fisher]
        self.parameters = dict(params)
        # the same order in three lists, for the foreach ops
        self.tensors = [self.parameters[n] for n in self.names]
        self.anchors = [self.anchor[n] for n in self.names]
        self.fishers = [self.fisher[n] for n in self.names]

    def compute_fisher(self, ctx: MethodContext) -> dict[str, torch.Tensor]:
        """F(refusals), plus w · F(borderline) with safety_data: refusals_and_borderline.

        A sum of the two Fishers, not the Fisher of the summed loss: each set's squared
        gradients count on their own, and neither cancels the other's.
        """
        config = self.config
        fisher = diagonal_fisher(ctx, config.fisher_samples, config.fisher_batch_size)
        if config.safety_data == "refusals_and_borderline":
            benign = diagonal_fisher(ctx, config.fisher_samples, config.fisher_batch_size, borderline=True)
            for name, value in benign.items():
                fisher[name].add_(value, alpha=config.borderline_weight)
        return fisher

    def penalty(self) -> torch.Tensor:
        """λ Σ F (θ - θ_safe)²: the value (reported); its gradient goes in through after_backward."""
        terms = [(self.fisher[n] * (self.parameters[n] - self.anchor[n]) ** 2).sum() for n in self.names]
        return self.config.strength * torch.stack(terms).sum()

    def after_backward(self, ctx: MethodContext) -> dict:
        # After all micro-batches (and DDP's all-reduce, and fp16 unscaling): added once per
        # step, the same on every rank, as the penalty's gradient is.
        for p in self.tensors:
            if p.grad is None:  # no task gradient reached it this step
                p.grad = torch.zeros_like(p)
        with torch.no_grad():
            distance = torch._foreach_sub([p.detach() for p in self.tensors], self.anchors)
            torch._foreach_addcmul_([p.grad for p in self.tensors], distance, self.fishers,
                                    value=2 * self.config.strength)
        return {}

    def summary(self) -> dict:
        with torch.no_grad():
            return {"strength": self.config.strength, "final_penalty": float(full_tensor(self.penalty())),
                    "fisher_samples": self.config.fisher_samples, "safety_data": self.config.safety_data}
