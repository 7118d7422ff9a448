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
- `safety_tokens: k`: L_s over the first k response tokens of each safety example only,
  where the refuse-or-answer decision is made (`safety_signal.first_response_tokens`).
- `restore: μ` (for `safety_every: k` > 1): at each fresh s also add μ·s to the gradient
  (μ·(s_refusals + s_borderline) with separate constraints), a step *down* the safety loss
  from the gradient just computed, at no extra pass. Between refreshes the projection
  against a stale s only slows the drift; the periodic descent pulls the boundary back.
- `stale_projection: false` (for `safety_every: k` > 1): project only the step that computed
  s and leave the k - 1 steps after it alone. On the lab (k = 24, `restore: 16`) the cached
  s drifts away from the current one within the window (cosine with a fresh 192-example s:
  0.6-0.85 one step after a refresh, -0.25 to 0.56 at its end; bench/safety_gradient_noise.py),
  projecting against it changed no refusal figure (docs/research-notes.md), and it
  costs every step a pass over s.
- `safety_average: β`: the cached s is an exponential average over recomputations,
  s <- β s + (1-β) s_new (less noise from the small safety batches; 0 = the latest s).
- `safety_data: refusals_and_borderline`: L_s = L(refusals) + w · L(borderline), each the
  safety loss on its own batch of `safety_batch_size` (data.safety and data.borderline).
  Refusals alone make s point at "refuse more"; whatever share of s reaches the weights
  (Adam amplifies it, the margin adds it on purpose) then teaches refusing benign
  look-alikes. The borderline term makes s also mean "keep answering the benign ones".
- `constraints: separate` (with `refusals_and_borderline`): two constraints instead of one
  sum. The summed s lets a step trade one term for the other -- lower L(refusals) a lot
  while L(borderline) rises, i.e. learn to refuse the benign look-alikes -- and still
  count as agreeing. Separately, the step is the smallest change of the original for which
  *neither* loss rises (each with the margin): the projection onto {v : v·s_i ≤ allowed_i}
  for i = refusals, borderline, solved exactly by trying the active sets {}, {1}, {2},
  {1, 2} (KKT: multipliers ≥ 0, both constraints met) and keeping the cheapest valid one.

Memory: the cached s (one copy of the trainable parameters' size, two with `constraints:
separate`; the old s is freed before a refresh computes the new one, unless `safety_average`
needs it); `space: update` also
keeps θ_old during the step, reused in place as d (one more copy, freed after the step).
The dot products and the projection work one tensor at a time (no further gradient-size
copy) and without a host sync: nothing waits for the GPU until the loop logs. The Gram
statistics of the cached s (‖s‖², or s1·s1, s1·s2, s2·s2) change only when s does, so they
are computed once per refresh (`safety_gram`), not at every step: per step there is one dot
product per constraint and tensor, one norm and one fused update (`_foreach_addcmul_`).
With two constraints (not under FSDP) s1 and s2 are stored as the two rows of one
[2, numel] buffer per tensor (`stack_pair`: the same memory, s1 and s2 are views of it), so
both dot products are one matrix-vector product (`torch.mv`) and the update one `addmv_`:
each pass reads the step once instead of twice. The step is memory-bound on a CPU (a few
flops per number read), so that takes the stale step of `safety_every: k` from ~6.5 to
~4.5 ms on the lab model (a `standard` step: ~85 ms).
"""

from __future__ import annotations

import torch

from safetune.methods.base import MethodContext, SafetyMethod
from safetune.model_layers import decoder_layers, layer_of
from safetune.distributed import distribute_like, is_sharded, local_shard, sum_over_shards
from safetune.methods.safety_signal import borderline_batch, loss_gradients, safety_batch, safety_objective


def project_conflicting(
    vectors: list[torch.Tensor],
    safety: list[torch.Tensor],
    mode: str = "global",
    *,
    applied: bool = False,
    margin: float = 0.0,
    second_margin: float | None = None,
    groups: list[int] | None = None,
    target: list[torch.Tensor] | None = None,
    gram: torch.Tensor | None = None,
    stacked: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Remove the component of `vectors` along `safety` where they conflict.

    `safety` is one gradient (a list of tensors) or two constraint gradients (a pair of
    such lists, see `constraints: separate` above; `project_pair`); `second_margin` is the
    second constraint's margin (default: `margin`).

    `applied=False`: `vectors` are gradients (the step goes along -g): L_s rises by ≈ -g·s.
    `applied=True`: `vectors` are applied changes d: L_s rises by ≈ d·s.
    mode `global` uses one group; `per_tensor` one group per tensor; `groups` (a group id
    per tensor) gives any other grouping. The correction -c·s is added to `target`
    (default: `vectors` themselves) in place. `gram` is `safety_gram(safety)` when the
    caller has it cached (it is computed here otherwise). `stacked` is `stack_pair(safety)`
    when the caller has it (a pair only): the same projection, fewer passes over memory.

    Returns cos(step, -s) before surgery (negative = conflict), whether anything was
    projected, and the norm removed.

    FSDP shards: each rank computes the per-tensor sums over its shards and one all-reduce
    adds them up, so every rank finds the same coefficients and edits its own shards.
    """
    sharded = is_sharded(vectors[0])
    vectors = [local_shard(v) for v in vectors]
    target = vectors if target is None else [local_shard(t) for t in target]
    sign = 1.0 if applied else -1.0  # L_s rises by ≈ sign · (v·s) along the step
    if gram is None:
        gram = safety_gram(safety)
    if isinstance(safety[0], (list, tuple)):
        first, second = ([local_shard(s) for s in part] for part in safety)
        index, count = group_index(mode, len(vectors), groups, vectors[0].device)
        margins = (margin, margin if second_margin is None else second_margin)
        return project_pair(vectors, first, second, target, gram, sign=sign, margins=margins, index=index,
                            count=count, sharded=sharded, stacked=stacked)
    safety = [local_shard(s) for s in safety]
    # (v * s).sum() rather than tensor_dots: the one-gradient rule keeps the published
    # method's rounding bit for bit (tests/test_methods_safegrad.py)
    sums = torch.stack([torch.stack([(v * s).sum() for v, s in zip(vectors, safety)]).float(),
                        torch.stack(torch._foreach_norm(vectors)).float() ** 2])
    dots, vector_sq = sum_over_shards(sums, sharded)
    safety_sq = gram[0]
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
    index, count = group_index(mode, len(vectors), groups, device)
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
        tensor.sub_(direction * coefficient)  # not a fused addcmul: the published rule's rounding
    removed = (coefficients**2 * group_safety_sq).sum().sqrt()
    return {"cosine": cosine, "projected": conflict.any().float(), "removed_norm": removed,
            "conflicting_groups": conflict.sum() / present.sum().clamp(min=1)}


def tensor_dots(first: list[torch.Tensor], second: list[torch.Tensor]) -> torch.Tensor:
    """The dot product of each pair of tensors, as float32: one fused kernel per pair and no
    temporary of the tensor's size (never a second copy of the whole gradient)."""
    return torch.stack([torch.vdot(a.reshape(-1), b.reshape(-1)) for a, b in zip(first, second)]).float()


def stack_pair(pair: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Store a constraint pair (s1, s2) as one [2, numel] buffer per tensor, in place: each
    pair[0][i], pair[1][i] becomes a view of row 0 / 1 of buffer i (built one tensor at a
    time, so memory peaks at one tensor more, not one gradient more). Returns the buffers."""
    buffers = []
    for i, (a, b) in enumerate(zip(*pair)):
        buffer = torch.stack([a.reshape(-1), b.reshape(-1)])
        pair[0][i], pair[1][i] = buffer[0].view_as(a), buffer[1].view_as(b)
        buffers.append(buffer)
    return buffers


def safety_gram(safety) -> torch.Tensor:
    """Per-tensor Gram statistics of the safety gradient(s), summed over FSDP shards: a
    (1, tensors) row of ‖s‖² for one gradient, (3, tensors) rows s1·s1, s1·s2, s2·s2 for a
    pair. They depend on s only, so SafeGrad computes them once per refresh of s."""
    if isinstance(safety[0], (list, tuple)):
        first, second = ([local_shard(s) for s in part] for part in safety)
        rows = torch.stack([tensor_dots(first, first), tensor_dots(first, second), tensor_dots(second, second)])
        return sum_over_shards(rows, is_sharded(safety[0][0]))
    local = [local_shard(s) for s in safety]
    return sum_over_shards(torch.stack(torch._foreach_norm(local)).float()[None] ** 2, is_sharded(safety[0]))


def group_index(mode: str, tensors: int, groups: list[int] | None, device) -> tuple[torch.Tensor, int]:
    """The group id of each tensor, and the number of groups (`global`: all in group 0)."""
    if mode == "global":
        return torch.zeros(tensors, dtype=torch.long, device=device), 1
    if groups is None:
        return torch.arange(tensors, device=device), tensors
    return torch.tensor(groups, device=device), max(groups) + 1


def project_pair(vectors, first, second, target, gram: torch.Tensor, *, sign: float, margins: tuple[float, float],
                 index: torch.Tensor, count: int, sharded: bool,
                 stacked: list[torch.Tensor] | None = None) -> dict[str, float]:
    """The step closest to the original for which neither safety loss rises (per group):
    `project_conflicting` with two constraint gradients `first` (s1) and `second` (s2).

    With u the step (u = -g for gradients, the change d itself when `applied`) and s1, s2
    the two safety gradients, L_i rises by ≈ u·s_i. Wanted: the nearest u' with
    u'·s_i ≤ a_i = -m_i·‖u‖·‖s_i‖ for both i (margins m_1, m_2). The answer is u' = u - λ1·s1 - λ2·s2 with
    λ ≥ 0 (KKT); with e_i = u·s_i - a_i (> 0: violated) and G the Gram matrix of s1, s2:
      {}      λ = 0                        valid when e ≤ 0
      {i}     λ_i = e_i / G_ii             valid when e_i > 0 and the other stays met
      {1, 2}  G λ = e (2 × 2)              valid when λ ≥ 0
    and the valid set with the smallest correction λᵀGλ wins. If none is valid (the two
    constraints cannot both hold, e.g. s2 ≈ -s1 with a margin), the sum s1 + s2 is
    projected as one constraint (the `joint` rule). No host sync; FSDP shards as above.
    `gram` holds G per tensor (`safety_gram`), so a step computes only u·s1, u·s2 and ‖u‖²;
    with `stacked` (`stack_pair`) both dot products of a tensor are one matrix-vector product.
    """
    # the [2, numel] rows are only usable on tensors that are one block of memory
    stacked = stacked if stacked is not None and all(t.is_contiguous() for t in (*vectors, *target)) else None
    if stacked is None:
        dots = torch.stack([tensor_dots(vectors, first), tensor_dots(vectors, second)])
    else:
        dots = torch.stack([torch.mv(pair, v.reshape(-1)) for pair, v in zip(stacked, vectors)], dim=1).float()
    per_tensor = torch.cat([dots, torch.stack(torch._foreach_norm(vectors)).float()[None] ** 2])
    per_tensor = torch.cat([sum_over_shards(per_tensor, sharded), gram])  # gram: already summed over shards
    dot1, dot2, vector_sq, g11, g12, g22 = torch.zeros(6, count, device=per_tensor.device).index_add_(
        1, index, per_tensor)
    margin1, margin2 = margins
    e1 = sign * dot1 + margin1 * (vector_sq * g11).sqrt()
    e2 = sign * dot2 + margin2 * (vector_sq * g22).sqrt()
    present1, present2 = g11 > 0, g22 > 0
    tolerance = 1e-6 * (e1.abs() + e2.abs() + 1e-30)
    zero, inf = torch.zeros_like(e1), torch.full_like(e1, float("inf"))
    # candidate multipliers (λ1, λ2) and whether each active set is valid
    only1 = torch.where(present1, e1 / g11.clamp(min=1e-30), zero)
    only2 = torch.where(present2, e2 / g22.clamp(min=1e-30), zero)
    det = g11 * g22 - g12**2
    usable = det > 1e-12 * g11 * g22
    both1 = torch.where(usable, (e1 * g22 - e2 * g12) / det.clamp(min=1e-30), zero)
    both2 = torch.where(usable, (e2 * g11 - e1 * g12) / det.clamp(min=1e-30), zero)
    met1, met2 = (e1 <= 0) | ~present1, (e2 <= 0) | ~present2
    candidates = [
        (zero, zero, met1 & met2),
        (only1, zero, present1 & (e1 > 0) & ((e2 - only1 * g12 <= tolerance) | ~present2)),
        (zero, only2, present2 & (e2 > 0) & ((e1 - only2 * g12 <= tolerance) | ~present1)),
        (both1, both2, usable & (both1 >= 0) & (both2 >= 0)),
    ]
    costs = torch.stack([torch.where(valid, l1 * l1 * g11 + 2 * l1 * l2 * g12 + l2 * l2 * g22, inf)
                         for l1, l2, valid in candidates])
    choice = costs.argmin(dim=0)
    lambda1 = torch.stack([c[0] for c in candidates]).gather(0, choice[None])[0]
    lambda2 = torch.stack([c[1] for c in candidates]).gather(0, choice[None])[0]
    # neither set valid: the joint rule on s1 + s2
    stuck = torch.isinf(costs.min(dim=0).values)
    joint_sq = g11 + 2 * g12 + g22
    joint_e = sign * (dot1 + dot2) + margin1 * (vector_sq * joint_sq).sqrt()
    joint = torch.where((joint_e > 0) & (joint_sq > 0), joint_e / joint_sq.clamp(min=1e-30), zero)
    lambda1, lambda2 = torch.where(stuck, joint, lambda1), torch.where(stuck, joint, lambda2)
    # u' = u - λ1 s1 - λ2 s2, i.e. v' = v - sign·(λ1 s1 + λ2 s2) for v = sign·u
    if stacked is None:
        torch._foreach_addcmul_(target, first, list(lambda1[index].unbind()), value=-sign)
        torch._foreach_addcmul_(target, second, list(lambda2[index].unbind()), value=-sign)
    else:
        coefficients = (-sign * torch.stack([lambda1[index], lambda2[index]], dim=1)).to(stacked[0].dtype)
        for tensor, pair, coefficient in zip(target, stacked, coefficients.unbind()):
            tensor.view(-1).addmv_(pair.t(), coefficient)
    corrected = lambda1**2 * g11 + 2 * lambda1 * lambda2 * g12 + lambda2**2 * g22
    joint_dot = -sign * (dot1 + dot2).sum()
    cosine = joint_dot / (vector_sq.sum().sqrt() * joint_sq.sum().clamp(min=0).sqrt()).clamp(min=1e-20)
    projected = (lambda1 > 0) | (lambda2 > 0)
    return {"cosine": cosine, "projected": projected.any().float(), "removed_norm": corrected.clamp(min=0).sum().sqrt(),
            "refusal_constraint": (lambda1 > 0).float().mean(), "borderline_constraint": (lambda2 > 0).float().mean()}


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
        self.gram: torch.Tensor | None = None  # safety_gram(cached), for the s of step `gram_of`
        self.gram_of: int | None = None
        self.stacked: list[torch.Tensor] | None = None  # stack_pair(cached), also for step `gram_of`

    def setup(self, ctx: MethodContext) -> None:
        safety_batch(ctx, 1, draw=0)  # fail early, with a clear message, when there is no safety data
        if self.config.safety_data == "refusals_and_borderline":
            borderline_batch(ctx, 1, draw=0, method="safegrad")

    @property
    def separate(self) -> bool:
        return self.config.constraints == "separate"

    def safety_gradient(self, ctx: MethodContext, params: list[torch.nn.Parameter]):
        """s (a list of tensors), or with `constraints: separate` the pair (s_refusals, s_borderline)."""
        if self.separate:
            refusals, borderline = safety_objective(ctx, self.config, draw=ctx.step, method=self.name, split=True)
            return [loss_gradients(refusals, params), loss_gradients(borderline, params)]
        loss = safety_objective(ctx, self.config, draw=ctx.step, method=self.name)
        return loss_gradients(loss, params)  # the accumulated task gradient in .grad stays as it is

    def cached_parts(self) -> list[list[torch.Tensor]]:
        return self.cached if self.separate else [self.cached]

    def refresh_safety_gradient(self, ctx: MethodContext, params: list[torch.nn.Parameter]) -> None:
        if self.cached is not None:
            parts = self.cached_parts()
            if parts[0][0].device != params[0].device:  # restored on the CPU
                parts = [[c.to(p.device) for c, p in zip(part, params)] for part in parts]
            if is_sharded(params[0]) and not is_sharded(parts[0][0]):  # FSDP resume
                parts = [[distribute_like(c, p) for c, p in zip(part, params)] for part in parts]
            self.cached = parts if self.separate else parts[0]
        if self.cached is None or ctx.step % self.config.safety_every == 0:
            beta = self.config.safety_average
            if beta == 0:  # the old s is not needed: free it first, so two copies of s never coexist
                self.cached = self.stacked = self.gram = None
            fresh = self.safety_gradient(ctx, params)
            fresh_parts = fresh if self.separate else [fresh]
            for part in fresh_parts:
                ctx.broadcast_tensors(part)  # every rank projects against the same s
            if self.cached is None:
                self.cached = fresh
            else:  # exponential average across recomputations, in place
                for part, new in zip(self.cached_parts(), fresh_parts):
                    torch._foreach_lerp_(part, new, 1 - beta)
            self.cached_at = ctx.step
            self.recomputed += 1

    def project(self, vectors, *, applied: bool, target=None) -> dict[str, float]:
        if self.gram is None or self.gram_of != self.cached_at:  # s is new (or restored by a resume)
            self.gram, self.gram_of = safety_gram(self.cached), self.cached_at
            # stacking copies s once; it pays off when s serves several steps (safety_every > 1)
            reused = self.config.safety_every > 1 and self.separate and not is_sharded(self.cached[0][0])
            self.stacked = stack_pair(self.cached) if reused else None
        stats = project_conflicting(vectors, self.cached, self.config.projection, applied=applied,
                                    margin=self.config.margin, second_margin=self.config.borderline_margin,
                                    groups=self.groups, target=target, gram=self.gram, stacked=self.stacked)
        self.steps += 1
        self.projections = self.projections + stats["projected"]  # a tensor: summed without a host sync
        return {f"safegrad/{key}": value for key, value in stats.items()}

    def after_backward(self, ctx: MethodContext) -> dict[str, float]:
        named = [(n, p) for n, p in ctx.trainable_parameters() if p.grad is not None]
        self.params = [p for _, p in named]
        if self.config.projection == "per_layer" and self.groups is None:
            self.groups = layer_groups(ctx.model, [n for n, _ in named])
        self.refresh_safety_gradient(ctx, self.params)
        if self.config.space == "update" or not self.projects(ctx):
            stats = {}  # in update space the applied update is projected in after_step
        else:
            stats = self.project([p.grad for p in self.params], applied=False)
        if self.config.restore and self.cached_at == ctx.step:  # a fresh s: descend the safety loss too
            for part in self.cached_parts():
                torch._foreach_add_([local_shard(p.grad) for p in self.params], [local_shard(s) for s in part],
                                    alpha=self.config.restore)
        return stats

    def projects(self, ctx: MethodContext) -> bool:
        """Whether this step is projected: always, or with `stale_projection: false` only when
        this step computed s."""
        return self.config.stale_projection or self.cached_at == ctx.step

    def before_step(self, ctx: MethodContext) -> None:
        if self.config.space == "update" and self.projects(ctx):
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
                "safety_every": self.config.safety_every, "safety_data": self.config.safety_data,
                "constraints": self.config.constraints, "safety_tokens": self.config.safety_tokens,
                "stale_projection": self.config.stale_projection}

    def state_dict(self) -> dict:
        # The cached safety gradient is part of the state: a resume mid-cycle must reuse it.
        return {"cached": self.cached, "cached_at": self.cached_at, "steps": self.steps,
                "projections": int(self.projections), "recomputed": self.recomputed}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
