"""Safety-Aware Probing (SAP; Wu et al. 2025, arXiv 2505.16737).

A *probe* - a bias added to the output of the MLP down-projection of a few decoder
layers - is trained to make the task loss as large as possible at a point shifted toward
harm; the task step is then taken with that probe in place, so the optimizer prefers
updates that keep the task loss low even where safety is most fragile. Per optimizer step
(`loss` does 1-4 on the step's first micro-batch and returns None, so the loop - or
another method - computes the task loss with the probe active):

1. harmful direction d: the gradient, over the trainable weights, of the contrastive
   loss -log σ(log p(chosen) - log p(rejected)) on `pairs_per_step` preference pairs
   (chosen = a refusal, rejected = a harmful compliance), L2-normalised. Moving along +d
   makes the compliance more likely relative to the refusal.
2. shift θ <- θ + ε·‖θ‖·d (‖θ‖: norm of all trainable weights; the adapters under LoRA).
3. `probe_steps` gradient-ascent steps on the probe (Adam, lr `probe_lr`, fresh each
   time) that raise the task loss at the shifted θ.
4. restore θ from a saved copy, bit for bit.
5. the task forward/backward runs with the probe active; right after the backward the
   probe is set back to zero (`after_backward`, which runs on every step, a skipped
   non-finite one too, so no later probe, evaluation or other method sees it set).

In a distributed run each rank trains its probe on its own micro-batch (the pairs, and so
the shift, are the same on every rank); the probes are not averaged across ranks.

Cost of a probed step, on top of the task's own forward/backward: forward/backward passes
over 2·pairs_per_step sequences, `pairs_per_pass` pairs at a time (step 1), `probe_steps` forward/backward passes on the task
micro-batch (step 3; the backward stops at the lowest probed layer), and one copy of the
trainable weights. `every: k` trains the probe every k-th step and reuses its trained
values in between, so the amortised cost is that divided by k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from safetune.errors import SafetuneError
from safetune.loss import next_token_loss
from safetune.methods.base import MethodContext, SafetyMethod
from safetune.model_layers import decoder_layers
from safetune.methods.safety_signal import (draw_examples, global_norm, harmful_examples, loss_gradients,
                                            preference_pairs, sequence_logprob)

# Where the MLP writes back into the residual stream, by architecture:
# Llama/Qwen2/Mistral/Gemma, GPT-NeoX, GPT-2, OPT/Phi, Mixtral-style w2.
MLP_OUTPUT_PATHS = ("mlp.down_proj", "mlp.dense_4h_to_h", "mlp.c_proj", "mlp.fc2", "fc2", "mlp.w2")


def mlp_output(block: nn.Module) -> nn.Module | None:
    """The MLP output projection of one decoder layer (under peft: the LoRA wrapper of it)."""
    for path in MLP_OUTPUT_PATHS:
        module = block
        for part in path.split("."):
            module = getattr(module, part, None)
            if not isinstance(module, nn.Module):
                break
        if isinstance(module, nn.Module):
            return module
    return None


def default_layers(count: int) -> list[int]:
    """The two middle decoder layers (the one layer of a one-layer model)."""
    return sorted({max(count // 2 - 1, 0), min(count // 2, count - 1)})


class SAP(SafetyMethod):
    name = "sap"
    # after freeze/EWC set-up, before SafeGrad: its after_backward resets the probe before
    # SafeGrad's safety forward pass, which must see the model without it
    setup_order = 0.75

    def __init__(self, config):
        super().__init__(config)
        self.probes: list[torch.Tensor] = []  # one bias per probed layer; zero outside a step
        self.cached: list[torch.Tensor] | None = None  # last trained probe values (reused when every > 1)
        self.probed_at: int | None = None  # the step whose probe is in place
        self.trained = 0
        self.last: dict[str, float] = {}
        self.sums = {"shifted_loss": 0.0, "probe_norm": 0.0, "shift_norm": 0.0}  # over trained probes

    # ------------------------------------------------------------------ set-up
    def setup(self, ctx: MethodContext) -> None:
        try:
            _, blocks = decoder_layers(ctx.model)
        except SafetuneError:
            raise SafetuneError("method[sap]: cannot find the decoder layers of this model") from None
        self.layers = self.config.layers or default_layers(len(blocks))
        missing = [i for i in self.layers if i >= len(blocks)]
        if missing:
            raise SafetuneError(f"method[sap].layers: layer {missing[0]} does not exist (the model has {len(blocks)} layers)")
        hidden = getattr(ctx.model.config, "hidden_size", None)
        for index in self.layers:
            module = mlp_output(blocks[index])
            if module is None:
                raise SafetuneError(f"method[sap].layers: decoder layer {index} has no MLP output projection "
                                    f"(looked for {', '.join(MLP_OUTPUT_PATHS)})")
            size = getattr(module, "out_features", None) or hidden
            probe = torch.zeros(size, device=ctx.device)
            self.probes.append(probe)
            # a hook, not a new parameter: works on any architecture and under LoRA, and the
            # saved model never contains the probe
            module.register_forward_hook(lambda _module, _inputs, output, probe=probe: output + probe.to(output.dtype))
        self.pairs = preference_pairs(ctx.safety, harmful_examples(ctx, self.name), ctx.tokenizer,
                                      ctx.recipe.data.max_seq_len)

    # ------------------------------------------------------------------ the probe
    def harmful_direction(self, ctx: MethodContext, params: list[nn.Parameter]) -> list[torch.Tensor]:
        """Step 1: the normalised gradient of the contrastive loss (+d favours the compliance)."""
        picks = draw_examples(self.pairs, self.config.pairs_per_step, ctx.seed, draw=ctx.step)
        # the loss is a mean over pairs: pass by pass, each pass's gradient summed, is the same
        # gradient, and no pass holds more activations than a task batch does
        per_pass = self.config.pairs_per_pass or max(1, ctx.recipe.train.batch_size // 2)
        grads = None
        for start in range(0, len(picks), per_pass):
            chunk = picks[start : start + per_pass]
            batch = ctx.batch_to_device([chosen for chosen, _ in chunk] + [rejected for _, rejected in chunk])
            log_p = sequence_logprob(ctx.model, batch)
            size = len(chunk)
            contrastive = -F.logsigmoid(log_p[:size] - log_p[size:]).sum() / len(picks)
            part = loss_gradients(contrastive, params)
            grads = part if grads is None else torch._foreach_add(grads, part)
        norm = global_norm(grads)
        return [g / norm for g in grads] if norm > 0 else grads

    def task_loss(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return next_token_loss(ctx.model, batch)  # logits only where a trained token is predicted

    def train_probe(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> None:
        """Steps 1-4: direction, shift, probe ascent at the shifted point, exact undo."""
        params = [p for _, p in ctx.trainable_parameters()]
        direction = self.harmful_direction(ctx, params)
        saved = [p.detach().clone() for p in params]
        shift = self.config.epsilon * float(global_norm([p.detach() for p in params]))
        with torch.no_grad():
            torch._foreach_add_(params, direction, alpha=shift)
        try:
            for probe in self.probes:
                probe.requires_grad_(True)
            optimizer = torch.optim.Adam(self.probes, lr=self.config.probe_lr, maximize=True)
            for index in range(self.config.probe_steps):
                loss = self.task_loss(ctx, batch)
                if index == 0:
                    self.last["shifted_loss"] = float(loss.detach())
                # gradients for the probe only: the task gradient accumulated in .grad stays as it is
                grads = torch.autograd.grad(loss, self.probes)
                for probe, grad in zip(self.probes, grads):
                    probe.grad = grad
                optimizer.step()
        finally:
            for probe in self.probes:
                probe.requires_grad_(False)
                probe.grad = None
            with torch.no_grad():  # undo by copying back, not by subtracting: bit for bit
                for p, original in zip(params, saved):
                    p.copy_(original)
        self.last["shift_norm"] = shift
        self.last["probe_norm"] = float(global_norm(self.probes))
        for key in self.sums:
            self.sums[key] += self.last[key]
        self.trained += 1

    def loss(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> None:
        if self.probed_at == ctx.step:  # a later micro-batch of the same step: the probe is in place
            return None
        self.probed_at = ctx.step
        with torch.no_grad():
            for probe in self.probes:
                probe.zero_()
        if self.cached is None or ctx.step % self.config.every == 0:
            self.train_probe(ctx, batch)
            self.cached = [probe.detach().clone() for probe in self.probes]
        else:
            with torch.no_grad():
                for probe, value in zip(self.probes, self.cached):
                    probe.copy_(value.to(probe.device))
        return None  # the task loss is computed by the loop (or another method) with the probe active

    def after_backward(self, ctx: MethodContext) -> dict[str, float]:
        with torch.no_grad():
            for probe in self.probes:
                probe.zero_()
        return {f"sap/{key}": value for key, value in self.last.items()}

    # ------------------------------------------------------------------ report, checkpoint
    def summary(self) -> dict:
        steps = max(self.trained, 1)
        return {"layers": getattr(self, "layers", self.config.layers), "epsilon": self.config.epsilon,
                "probe_lr": self.config.probe_lr, "probe_steps": self.config.probe_steps,
                "every": self.config.every, "probes_trained": self.trained,
                "mean_probe_norm": self.sums["probe_norm"] / steps, "mean_shift_norm": self.sums["shift_norm"] / steps,
                "mean_shifted_loss": self.sums["shifted_loss"] / steps}

    def state_dict(self) -> dict:
        # The probe is zero between steps; what a resume needs is the cached probe (every > 1).
        return {"cached": [c.cpu() for c in self.cached] if self.cached is not None else None,
                "probed_at": self.probed_at, "trained": self.trained, "sums": dict(self.sums)}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.cached = state["cached"]
        self.probed_at = state["probed_at"]
        self.trained = state["trained"]
        self.sums = dict(state["sums"])
