"""SafeGrad: gradient surgery against the safety gradient (PCGrad's rule, Yi et al. 2025).

Each optimizer step, with g the accumulated task gradient and s the safety gradient:
if g·s < 0 (the task update would undo safety), g <- g - (g·s / ||s||²) s, else g stays.
The projected g is written back into `.grad`, so the optimizer steps along it.

`projection: global` takes one dot product over all trainable parameters (PCGrad);
`per_tensor` applies the rule to each tensor on its own. `safety_every: k` recomputes s
every k steps and reuses the cached s in between.
"""

from __future__ import annotations

import torch

from safetune.methods.base import MethodContext, SafetyMethod
from safetune.methods.safety_signal import safety_batch, safety_loss


def project_conflicting(grads: list[torch.Tensor], safety: list[torch.Tensor], mode: str = "global") -> dict[str, float]:
    """Edit `grads` in place: remove the component along `safety` where they conflict.

    Returns cosine(g, s) before surgery, whether anything was projected, and the norm removed.
    """
    products = torch._foreach_mul(grads, safety)
    dots = torch.stack([p.sum() for p in products]).float()
    safety_sq = torch.stack(torch._foreach_norm(safety)).float() ** 2
    grad_sq = torch.stack(torch._foreach_norm(grads)).float() ** 2
    cosine = float(dots.sum() / (grad_sq.sum().sqrt() * safety_sq.sum().sqrt()).clamp(min=1e-20))
    if mode == "global":
        dot, norm_sq = dots.sum(), safety_sq.sum()
        if dot >= 0 or norm_sq == 0:
            return {"cosine": cosine, "projected": 0.0, "removed_norm": 0.0}
        coefficient = dot / norm_sq
        torch._foreach_add_(grads, safety, alpha=-float(coefficient))
        return {"cosine": cosine, "projected": 1.0, "removed_norm": float(-coefficient * norm_sq.sqrt())}
    # per tensor: each conflicting tensor loses its own component along its safety tensor
    conflict = (dots < 0) & (safety_sq > 0)
    coefficients = torch.where(conflict, dots / safety_sq.clamp(min=1e-30), torch.zeros_like(dots))
    torch._foreach_add_(grads, torch._foreach_mul(safety, [-c for c in coefficients.tolist()]))
    removed = (coefficients**2 * safety_sq).sum().sqrt()
    return {"cosine": cosine, "projected": float(conflict.any()), "removed_norm": float(removed),
            "conflicting_tensors": float(conflict.float().mean())}


class SafeGrad(SafetyMethod):
    name = "safegrad"

    def __init__(self, config):
        super().__init__(config)
        self.needs_reference_model = config.safety_loss == "kl_to_base"
        self.cached: list[torch.Tensor] | None = None
        self.cached_at: int | None = None
        self.steps = 0
        self.projections = 0
        self.recomputed = 0

    def setup(self, ctx: MethodContext) -> None:
        safety_batch(ctx, 1, draw=0)  # fail early, with a clear message, when there is no safety data

    def safety_gradient(self, ctx: MethodContext, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        batch = ctx.batch_to_device(safety_batch(ctx, self.config.safety_batch_size, draw=ctx.step))
        loss = safety_loss(ctx, batch, self.config.safety_loss)
        # autograd.grad leaves the accumulated task gradient in .grad untouched
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]

    def after_backward(self, ctx: MethodContext) -> dict[str, float]:
        params = [p for _, p in ctx.trainable_parameters() if p.grad is not None]
        if self.cached is None or ctx.step % self.config.safety_every == 0:
            self.cached = self.safety_gradient(ctx, params)
            self.cached_at = ctx.step
            self.recomputed += 1
        elif self.cached[0].device != params[0].device:  # restored from a checkpoint on the CPU
            self.cached = [c.to(p.device) for c, p in zip(self.cached, params)]
        stats = project_conflicting([p.grad for p in params], self.cached, self.config.projection)
        self.steps += 1
        self.projections += int(stats["projected"])
        return {f"safegrad/{key}": value for key, value in stats.items()}

    def summary(self) -> dict:
        return {"conflict_rate": self.projections / max(self.steps, 1), "steps": self.steps,
                "safety_gradients_computed": self.recomputed, "projection": self.config.projection,
                "safety_loss": self.config.safety_loss, "safety_every": self.config.safety_every}

    def state_dict(self) -> dict:
        # The cached safety gradient is part of the state: a resume mid-cycle must reuse it.
        return {"cached": self.cached, "cached_at": self.cached_at, "steps": self.steps,
                "projections": self.projections, "recomputed": self.recomputed}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
