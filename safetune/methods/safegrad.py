"""SafeGrad: surgery against the safety gradient (PCGrad's on-conflict rule, Yi et al. 2025).

Let s be the gradient of the safety loss L_s. A parameter change Δθ changes L_s by
≈ s·Δθ (first order), so a change *conflicts* with safety when s·Δθ > 0. The rule removes
exactly the conflicting component along s and leaves every agreeing change untouched:

    space: gradient  (the published rule) — the optimizer will move along -g, so g
        conflicts when g·s < 0; then g <- g - (g·s / ||s||²) s, written back into `.grad`
        before clipping and the optimizer step.
    space: update    — AdamW rescales each coordinate, so a projected *gradient* can still
        give a conflicting *update*. Here the optimizer steps normally and the applied
        change d = θ_new - θ_old is projected: if d·s > 0, θ <- θ_new - (d·s / ||s||²) s,
        so the change that stays in the weights is d - (d·s/||s||²) s, with d·s = 0.
        AdamW's moments are left as they are (they keep describing the task gradient).

Options (both spaces):
- `projection`: `global` (one dot product over all trainable parameters), `per_tensor`
  (the rule per tensor), `per_layer` (per decoder layer; everything outside the decoder
  layers is one more group).
- `margin: m`: treat a change as conflicting until it *lowers* L_s a little:
  conflict when cos(step, -s) < m, projected so that cos(step, -s) = m afterwards
  (m = 0 is the plain rule).
- `safety_every: k`: recompute s every k steps and reuse the cached s in between.
- `safety_average: β`: the cached s is an exponential average over recomputations,
  s <- β s + (1-β) s_new (less noise from the small safety batches; 0 = the latest s).
- `safety_data: refusals_and_borderline`: L_s = L(refusals) + w · L(borderline), each the
  safety loss on its own batch of `safety_batch_size` (data.safety and data.borderline).
  Refusals alone make s point at "refuse more"; whatever share of s reaches the weights
  (Adam amplifies it, the margin adds it on purpose) then teaches refusing benign
  look-alikes. The borderline term makes s also mean "keep answering the benign ones".

Memory: the cached s (one copy of the trainable parameters' size); `space: update` also
keeps θ_old during the step, reused in place as d (one more copy, freed after the step).
The dot products and the projection work one tensor at a time (no further gradient-size
copy) and without a host sync: nothing waits for the GPU until the loop logs.
"""

from __future__ import annotations

import torch

from safetune.methods.base import MethodContext, SafetyMethod
from safetune.methods.layers import decoder_layers, layer_of
from safetune.distributed import distribute_like, is_sharded, local_shard, sum_over_shards
from safetune.methods.safety_signal import borderline_batch, loss_gradients, safety_batch, safety_objective


def project_conflicting(
    vectors: list[torch.Tensor],
    safety: list[torch.Tensor],
    mode: str = "global",
    *,
    applied: bool = False,
    margin: float = 0.0,
    groups: list[int] | None = None,
    target: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Remove the component of `vectors` along `safety` where they conflict.

    `applied=False`: `vectors` are gradients (the step goes along -g): L_s rises by ≈ -g·s.
    `applied=True`: `vectors` are applied changes d: L_s rises by ≈ d·s.
    mode `global` uses one group; `per_tensor` one group per tensor; `groups` (a group id
    per tensor) gives any other grouping. The correction -c·s is added to `target`
    (default: `vectors` themselves) in place.

    Returns cos(step, -s) before surgery (negative = conflict), whether anything was
    projected, and the norm removed.

    FSDP shards: each rank computes the per-tensor sums over its shards and one all-reduce
    adds them up, so every rank finds the same coefficients and edits its own shards.
    """
    sharded = is_sharded(vectors[0])
    vectors, safety = [local_shard(v) for v in vectors], [local_shard(s) for s in safety]
    target = vectors if target is None else [local_shard(t) for t in target]
    sign = 1.0 if applied else -1.0  # L_s rises by ≈ sign · (v·s) along the step
    # one tensor's product at a time: never a second copy of the whole gradient
    sums = torch.stack([torch.stack([(v * s).sum() for v, s in zip(vectors, safety)]).float(),
                        torch.stack(torch._foreach_norm(safety)).float() ** 2,
                        torch.stack(torch._foreach_norm(vectors)).float() ** 2])
    dots, safety_sq, vector_sq = sum_over_shards(sums, sharded)
    # No host sync below (no float(), no branch on a value): the statistics stay tensors
    # until the loop logs them, and "no conflict" is a coefficient of 0.
    cosine = -sign * dots.sum() / (vector_sq.sum().sqrt() * safety_sq.sum().sqrt()).clamp(min=1e-20)
    if mode == "global":
        rise, norm_sq = sign * dots.sum(), safety_sq.sum()
        allowed = -margin * (vector_sq.sum() * norm_sq).sqrt()  # the rise we tolerate (<= 0)
        conflict = (rise > allowed) & (norm_sq > 0)
        coefficient = torch.where(conflict, sign * (rise - allowed) / norm_sq.clamp(min=1e-30), 0.0)
        torch._foreach_addcmul_(target, safety, [coefficient] * len(safety), value=-1)
        return {"cosine": cosine, "projected": conflict.float(), "removed_norm": coefficient.abs() * norm_sq.sqrt()}
    # grouped: each group of tensors gets its own coefficient from its own dot products
    device = dots.device
    index = torch.arange(len(vectors), device=device) if groups is None else torch.tensor(groups, device=device)
    count = len(vectors) if groups is None else max(groups) + 1
    group_dots = torch.zeros(count, device=device).index_add_(0, index, dots)
    group_safety_sq = torch.zeros(count, device=device).index_add_(0, index, safety_sq)
    group_vector_sq = torch.zeros(count, device=device).index_add_(0, index, vector_sq)
    rise = sign * group_dots
    allowed = -margin * (group_vector_sq * group_safety_sq).sqrt()
    present = group_safety_sq > 0
    conflict = (rise > allowed) & present
    coefficients = torch.where(conflict, sign * (rise - allowed) / group_safety_sq.clamp(min=1e-30),
                               torch.zeros_like(rise))
    for tensor, direction, coefficient in zip(target, safety, coefficients[index].unbind()):
        tensor.sub_(direction * coefficient)
    removed = (coefficients**2 * group_safety_sq).sum().sqrt()
    return {"cosine": cosine, "projected": conflict.any().float(), "removed_norm": removed,
            "conflicting_groups": conflict.sum() / present.sum().clamp(min=1)}


def layer_groups(model: torch.nn.Module, names: list[str]) -> list[int]:
    """Group id per parameter: its decoder layer, or one extra group for everything else."""
    prefix, blocks = decoder_layers(model)
    layers = [layer_of(name, prefix) for name in names]
    return [len(blocks) if layer is None else layer for layer in layers]


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
        self.params: list[torch.nn.Parameter] = []  # this step's parameters, in the order of `cached`
        self.groups: list[int] | None = None
        self.before: list[torch.Tensor] | None = None

    def setup(self, ctx: MethodContext) -> None:
        safety_batch(ctx, 1, draw=0)  # fail early, with a clear message, when there is no safety data
        if self.config.safety_data == "refusals_and_borderline":
            borderline_batch(ctx, 1, draw=0, method="safegrad")

    def safety_gradient(self, ctx: MethodContext, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        loss = safety_objective(ctx, self.config, draw=ctx.step, method=self.name)
        return loss_gradients(loss, params)  # the accumulated task gradient in .grad stays as it is

    def refresh_safety_gradient(self, ctx: MethodContext, params: list[torch.nn.Parameter]) -> None:
        if self.cached is not None and self.cached[0].device != params[0].device:  # restored on the CPU
            self.cached = [c.to(p.device) for c, p in zip(self.cached, params)]
        if self.cached is not None and is_sharded(params[0]) and not is_sharded(self.cached[0]):
            self.cached = [distribute_like(c, p) for c, p in zip(self.cached, params)]  # FSDP resume
        if self.cached is None or ctx.step % self.config.safety_every == 0:
            fresh = self.safety_gradient(ctx, params)
            ctx.broadcast_tensors(fresh)  # every rank projects against the same s
            beta = self.config.safety_average
            if self.cached is None or beta == 0:
                self.cached = fresh
            else:  # exponential average across recomputations, in place
                torch._foreach_lerp_(self.cached, fresh, 1 - beta)
            self.cached_at = ctx.step
            self.recomputed += 1

    def project(self, vectors, *, applied: bool, target=None) -> dict[str, float]:
        stats = project_conflicting(vectors, self.cached, self.config.projection, applied=applied,
                                    margin=self.config.margin, groups=self.groups, target=target)
        self.steps += 1
        self.projections = self.projections + stats["projected"]  # a tensor: summed without a host sync
        return {f"safegrad/{key}": value for key, value in stats.items()}

    def after_backward(self, ctx: MethodContext) -> dict[str, float]:
        named = [(n, p) for n, p in ctx.trainable_parameters() if p.grad is not None]
        self.params = [p for _, p in named]
        if self.config.projection == "per_layer" and self.groups is None:
            self.groups = layer_groups(ctx.model, [n for n, _ in named])
        self.refresh_safety_gradient(ctx, self.params)
        if self.config.space == "update":
            return {}  # the applied update is projected in after_step
        return self.project([p.grad for p in self.params], applied=False)

    def before_step(self, ctx: MethodContext) -> None:
        if self.config.space == "update":
            self.before = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def after_step(self, ctx: MethodContext) -> dict[str, float]:
        if self.config.space != "update" or self.before is None:
            return {}
        # d = θ_new - θ_old, computed in the buffer that held θ_old (no further copy)
        delta = self.before
        torch._foreach_sub_(delta, self.params)
        torch._foreach_neg_(delta)
        stats = self.project(delta, applied=True, target=[p.data for p in self.params])
        self.before = None
        return stats

    def summary(self) -> dict:
        return {"conflict_rate": float(self.projections) / max(self.steps, 1), "steps": self.steps,
                "safety_gradients_computed": self.recomputed, "space": self.config.space,
                "projection": self.config.projection, "margin": self.config.margin,
                "safety_average": self.config.safety_average, "safety_loss": self.config.safety_loss,
                "safety_every": self.config.safety_every, "safety_data": self.config.safety_data}

    def state_dict(self) -> dict:
        # The cached safety gradient is part of the state: a resume mid-cycle must reuse it.
        return {"cached": self.cached, "cached_at": self.cached_at, "steps": self.steps,
                "projections": int(self.projections), "recomputed": self.recomputed}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
