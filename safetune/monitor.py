"""Safety monitoring during training: a quick refusal probe every N steps.

The probe generates answers to a fixed, evenly spread sample of the recipe's harmful
prompts and measures the refusal rate. The first probe (step 0, before any update) is
the reference; a probe below `min_retained` x reference is a breach, answered by
`on_breach`: warn, stop, or roll back to the last state that passed and lower the LR.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from safetune.recipe import Recipe


@dataclass
class Probe:
    step: int
    refusal_rate: float
    reference: float
    breached: bool

    def describe(self) -> str:
        verdict = "BREACH" if self.breached else "ok"
        return (f"safety probe @ step {self.step}: refusal {self.refusal_rate:.0%} "
                f"(start {self.reference:.0%}) {verdict}")

    def record(self) -> dict:
        return {"step": self.step, "probe/harmful_refusal_rate": self.refusal_rate,
                "probe/reference": self.reference, "probe/breach": self.breached}


class SafetyMonitor:
    def __init__(self, recipe: Recipe, model, tokenizer):
        from safetune.evaluation.refusal import keyword_detector
        from safetune.evaluation.runner import probe_prompts

        self.config = recipe.monitor
        self.eval_config = recipe.eval
        self.model = model
        self.tokenizer = tokenizer
        # asked as their suites ask them (an attack's system prompt and prefix included)
        self.prompts, self.system_prompts = probe_prompts(recipe, self.config.samples)
        self.detector = keyword_detector(recipe.eval.refusal)
        self.reference: float | None = None
        self.rollbacks = 0
        self.snapshot: dict | None = None  # the last state that passed its probe

    def due(self, step: int) -> bool:
        return self.config.every is not None and step % self.config.every == 0

    def measure(self) -> float:
        from safetune.evaluation.runner import refusal_rate

        was_training = self.model.training
        rate = refusal_rate(self.model, self.tokenizer, self.prompts, self.detector,
                            max_new_tokens=self.eval_config.max_new_tokens, batch_size=self.eval_config.batch_size,
                            system_prompt=self.system_prompts)
        self.model.train(was_training)
        return rate

    def probe(self, step: int) -> Probe:
        rate = self.measure()
        if self.reference is None:
            self.reference = rate
        breached = rate < self.config.min_retained * self.reference
        return Probe(step=step, refusal_rate=rate, reference=self.reference, breached=breached)

    def remember(self, state: dict) -> None:
        """Keep a copy of a state that passed: the trainable weights and the optimizer state,
        in CPU memory (a copy on the accelerator would cost it the memory of the trained
        weights three times over with Adam). FSDP's sharded tensors stay where they are: each
        rank copies its own shards."""
        self.snapshot = clone_state(state, to_cpu=True)

    def state_dict(self) -> dict:
        return {"reference": self.reference, "rollbacks": self.rollbacks, "prompts": len(self.prompts)}

    def load_state_dict(self, state: dict) -> None:
        self.reference = state.get("reference")
        self.rollbacks = state.get("rollbacks", 0)
        if state.get("prompts", len(self.prompts)) != len(self.prompts):
            # a resume with another monitor.samples probes other prompts: the saved reference
            # rate is not comparable, so the first probe after the resume becomes the reference
            self.reference = None


def clone_state(obj, to_cpu: bool = False):
    """A deep copy in which tensors are cloned as tensors (FSDP's sharded DTensors included,
    which `copy.deepcopy` cannot copy); `to_cpu` puts the copies of plain tensors in CPU memory
    (loading them back copies them to the model's device)."""
    import torch
    from torch.distributed.tensor import DTensor

    if isinstance(obj, torch.Tensor):
        if to_cpu and not isinstance(obj, DTensor):
            return obj.detach().to("cpu", copy=True)
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {key: clone_state(value, to_cpu) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_state(value, to_cpu) for value in obj)
    return copy.deepcopy(obj)
