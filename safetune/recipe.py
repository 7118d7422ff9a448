"""The recipe: one YAML file, validated by the pydantic models below.

Every section forbids unknown keys, so a typo is an error rather than a silently
ignored setting. `load_recipe` reads the YAML, merges it over the files named by its
`base:` key (see "composition"), applies `key.sub=value` overrides and turns every
validation problem into one readable line (`train.lerning_rate: unknown key (did you
mean learning_rate?)`), naming the base file and line when a base set that key.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safetune.errors import RecipeError, UsageError


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- model
class LoraSettings(Section):
    """Train low-rank adapters (peft) instead of all weights; methods then act on the adapters."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"


class ModelConfig(Section):
    path: str = Field(description="local directory, hub id, or 'lab' for the lab model")
    lora: LoraSettings | None = Field(None, description="LoRA adapters via peft; null = full fine-tuning")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = Field(
        False, description="also load .bin/.pt/.pth weights (pickle: can run code when loaded); default safetensors only"
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template overriding the tokenizer's own"
    )


# --------------------------------------------------------------------------- data
class SourceConfig(Section):
    """A data source: a local JSONL/JSON/CSV/Parquet file or a `datasets` hub id."""

    path: str
    split: str = "train"
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str | None = Field(None, description="use a chat `messages` list instead")
    category_field: str | None = "category"
    limit: int | None = Field(None, ge=1)


class AuditConfig(Section):
    """Before training, flag harmful -> compliance rows of data.train and drop (or only report) them."""

    checks: list[Literal["refusal_conflict", "judge"]] = Field(
        default_factory=lambda: ["refusal_conflict"],
        description="refusal_conflict: the aligned model refuses the prompt but the row's response complies; "
        "judge: a safety classifier labels (prompt, response) unsafe",
    )
    judge: str | None = Field(None, description="sequence-classification model path, hub id, or 'lab'")
    judge_unsafe_labels: list[str] = Field(default_factory=lambda: ["unsafe", "harmful"])
    action: Literal["drop", "report"] = "drop"
    max_flagged: float = Field(
        0.5, gt=0.0, le=1.0, description="more flagged rows than this share is an error (the checks cannot tell)"
    )
    max_new_tokens: int = Field(32, ge=1, description="refusal_conflict: tokens generated per prompt")
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _judge_needed(self) -> "AuditConfig":
        if not self.checks:
            raise ValueError("checks: give at least one of refusal_conflict, judge")
        if "judge" in self.checks and not self.judge:
            raise ValueError("the judge check needs data.audit.judge (a sequence-classification model)")
        return self


class DataConfig(Section):
    train: SourceConfig
    eval: SourceConfig | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    safety: SourceConfig | None = Field(None, description="prompt -> safe response, used by methods")
    borderline: SourceConfig | None = Field(
        None, description="benign prompts that look sensitive -> normal answers (mix replays them)"
    )
    harmful: SourceConfig | None = Field(None, description="prompt -> harmful compliance")
    harmful_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    max_seq_len: int = Field(256, ge=8)
    truncation: Literal["truncate_prompt", "drop", "error"] = Field(
        "truncate_prompt", description="an example longer than max_seq_len: keep the response and cut the "
        "prompt from the left (the response's end only if it alone needs over 3/4), drop it, or stop with an error",
    )
    shuffle: bool = True
    packing: bool = Field(
        False, description="pack several short examples into one sequence of up to max_seq_len tokens "
        "(attention stays within each example; train.batch_size then counts packed sequences)",
    )
    split_by_length: bool = Field(
        True, description="run a batch of short and long examples (task rows + mix's replay) as two passes, "
        "each padded to its own longest: the same gradient with less padding",
    )
    audit: AuditConfig | None = Field(None, description="score the training rows before training (audit.py)")

    @model_validator(mode="after")
    def _harmful_source_needed(self) -> "DataConfig":
        if self.harmful_ratio > 0 and self.harmful is None:
            raise ValueError("harmful_ratio > 0 needs a data.harmful source")
        if self.eval is not None and self.eval_fraction > 0:
            raise ValueError("give either data.eval or data.eval_fraction, not both")
        return self


# --------------------------------------------------------------------------- methods
class StandardMethod(Section):
    """Plain fine-tuning: no protection (the baseline that erodes safety)."""

    name: Literal["standard"]


class MixMethod(Section):
    """Replay safety examples inside every task batch (the data-mixing baseline)."""

    name: Literal["mix"]
    safety_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of each batch")
    borderline_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of each batch from data.borderline (benign, normal answers)"
    )

    @model_validator(mode="after")
    def _shares_fit(self) -> "MixMethod":
        if self.safety_fraction + self.borderline_fraction >= 1:
            raise ValueError("safety_fraction + borderline_fraction must be below 1 (task examples need room)")
        return self


# What a method's safety objective covers: refusals only, or also data.borderline's normal
# answers (so keeping refusals does not teach refusing benign look-alikes). Shared by
# safegrad, token_weighting and ewc (its Fisher): L_s = L(refusals) + borderline_weight · L(borderline).
SafetyData = Literal["refusals", "refusals_and_borderline"]
SAFETY_DATA_FIELD = Field("refusals", description="refusals only, or also data.borderline's normal answers")
BORDERLINE_WEIGHT_FIELD = Field(1.0, gt=0.0, description="L_s = L_refusals + w · L_borderline")


class SafeGradMethod(Section):
    """Gradient surgery: drop the part of the task gradient that conflicts with safety."""

    name: Literal["safegrad"]
    space: Literal["gradient", "update"] = Field(
        "gradient", description="project the gradient (before AdamW) or the applied parameter update (after it)"
    )
    projection: Literal["global", "per_tensor", "per_layer"] = "global"
    margin: float = Field(0.0, ge=0.0, lt=1.0, description="also project until cos(step, -s) >= margin")
    safety_average: float = Field(0.0, ge=0.0, lt=1.0, description="EMA factor for s across recomputations")
    safety_loss: Literal["refusal_ce", "kl_to_base"] = "refusal_ce"
    safety_every: int = Field(1, ge=1, description="recompute the safety gradient every k steps")
    safety_batch_size: int = Field(8, ge=1)
    safety_micro_batch: int = Field(
        16, ge=1, description="rows per safety forward pass; a larger safety batch runs in length-sorted micro-batches"
    )
    safety_data: SafetyData = SAFETY_DATA_FIELD
    borderline_weight: float = BORDERLINE_WEIGHT_FIELD
    safety_tokens: int | None = Field(
        None, ge=1, description="safety loss on the first k response tokens only (the refuse-or-answer decision)"
    )
    constraints: Literal["joint", "separate"] = Field(
        "joint", description="one constraint on L(refusals) + w·L(borderline), or one on each (separate)"
    )
    borderline_margin: float | None = Field(
        None, ge=0.0, lt=1.0, description="separate constraints: the borderline constraint's margin (default: margin)"
    )
    restore: float = Field(
        0.0, ge=0.0, description="at each fresh safety gradient s, also step down the safety loss: .grad += restore·s"
    )
    stale_projection: bool = Field(
        True, description="safety_every > 1: also project the steps between refreshes against the cached s "
                          "(false: only the step that computed s is projected)"
    )

    @model_validator(mode="after")
    def _separate_needs_borderline(self) -> "SafeGradMethod":
        if self.constraints == "separate" and self.safety_data != "refusals_and_borderline":
            raise ValueError("constraints: separate needs safety_data: refusals_and_borderline (two losses to keep)")
        if self.borderline_margin is not None and self.constraints != "separate":
            raise ValueError("borderline_margin needs constraints: separate (a margin of its own for the borderline loss)")
        return self


class FreezeMethod(Section):
    """Freeze safety-critical decoder layers (given, or found automatically)."""

    name: Literal["freeze"]
    layers: Union[Literal["auto"], list[Annotated[int, Field(ge=0)]]] = "auto"
    detector: Literal["fisher", "ablation"] = "fisher"
    top_k: int | None = Field(None, ge=1, description="freeze the k best-scoring layers (default 1)")
    threshold: float | None = Field(None, gt=0.0, le=1.0, description="or: score >= threshold x best")
    samples: int = Field(64, ge=1, description="safety examples used by the detector")
    batch_size: int = Field(8, ge=1)
    ablation_scale: float = Field(0.0, ge=0.0, description="0 = skip the layer; 1.1 = Li et al.")
    max_new_tokens: int = Field(24, ge=1, description="ablation: tokens generated per probe")

    @model_validator(mode="after")
    def _one_rule(self) -> "FreezeMethod":
        if self.top_k is not None and self.threshold is not None:
            raise ValueError("give top_k or threshold, not both")
        if self.top_k is None and self.threshold is None:
            self.top_k = 1
        return self


class EWCMethod(Section):
    """Elastic weight consolidation toward the aligned weights, Fisher of the refusal loss."""

    name: Literal["ewc"]
    strength: float = Field(1000.0, gt=0.0, description="lambda")
    fisher_samples: int = Field(128, ge=1)
    fisher_batch_size: int = Field(8, ge=1)
    # also anchor what answers benign look-alikes: F = F(refusals) + w · F(borderline)
    safety_data: SafetyData = SAFETY_DATA_FIELD
    borderline_weight: float = BORDERLINE_WEIGHT_FIELD


class SAPMethod(Section):
    """Safety-aware probing: a probe trained where a harmful weight shift raises the task loss."""

    name: Literal["sap"]
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, description="decoder layers whose MLP output gets the probe (default: two middle layers)")
    epsilon: float = Field(2e-5, gt=0.0, description="weight shift along the harmful direction, x ||theta||")
    probe_lr: float = Field(0.05, gt=0.0)
    probe_steps: int = Field(1, ge=1, description="probe updates per probed step")
    pairs_per_step: int = Field(8, ge=1, description="safety preference pairs for the harmful direction")
    every: int = Field(1, ge=1, description="retrain the probe every k steps, reuse it in between")

    @property
    def needs_harmful_data(self) -> bool:
        return True  # the rejected side of the preference pairs


class TokenWeightingMethod(Section):
    """Per-token weights on the task loss plus a safety objective (refusal CE, optional NPO)."""

    name: Literal["token_weighting"]
    scorer: Literal["reference", "classifier", "none"] = "reference"
    gamma: float = Field(1.0, gt=0.0, description="reference scorer: sharpness")
    min_weight: float = Field(0.1, ge=0.0, le=1.0, description="weights are clamped to [min_weight, 1]")
    classifier: str = Field("lab", description="classifier scorer: HF sequence-classification folder, or 'lab'")
    unsafe_label: str = Field("unsafe", description="classifier scorer: the label that means unsafe")
    safety_data: SafetyData = SAFETY_DATA_FIELD
    borderline_weight: float = BORDERLINE_WEIGHT_FIELD
    segment_tokens: int = Field(4, ge=1, description="classifier scorer: score the response prefix every k tokens")
    alpha: float = Field(0.2, ge=0.0, description="weight of the safety objective")
    safety_batch_size: int = Field(8, ge=1)
    npo_weight: float = Field(0.0, ge=0.0, description="NPO on data.harmful completions (0 = off)")
    npo_beta: float = Field(0.5, gt=0.0)

    @property
    def needs_harmful_data(self) -> bool:
        return self.alpha > 0 and self.npo_weight > 0


MethodConfig = Annotated[
    Union[StandardMethod, MixMethod, SafeGradMethod, FreezeMethod, EWCMethod, SAPMethod, TokenWeightingMethod],
    Field(discriminator="name"),
]
METHOD_CLASSES: dict[str, type[Section]] = {
    "standard": StandardMethod, "mix": MixMethod, "safegrad": SafeGradMethod,
    "freeze": FreezeMethod, "ewc": EWCMethod, "sap": SAPMethod, "token_weighting": TokenWeightingMethod,
}
# Methods that compute something from the safety examples need data.safety.
NEEDS_SAFETY_DATA = {"mix", "safegrad", "ewc", "sap"}


# --------------------------------------------------------------------------- train
class DistributedConfig(Section):
    """How a run launched on several processes (torchrun / accelerate launch) shares the model."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: a whole model per process; fsdp: parameters, gradients and optimizer "
                           "state sharded across processes (FSDP2), for models that do not fit one device")


class TrainConfig(Section):
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    save_every: int | None = Field(None, ge=1)
    # how many step-N checkpoints to keep (the newest); null keeps them all. A full
    # checkpoint holds the weights and the optimizer state: ~12 bytes per parameter in fp32.
    keep_checkpoints: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast mixed precision over the loaded weights (keep model.dtype float32)")
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, ~30% slower")
    compile: bool = Field(
        False, description="torch.compile the training forward pass (a GPU speed-up; the first steps pay the "
        "compile time; safety passes and generation stay eager)")
    max_bad_steps: int = Field(3, ge=1, description="non-finite steps in a row before on_nonfinite acts")
    on_nonfinite: Literal["rollback", "stop"] = Field(
        "rollback", description="rollback: to the last checkpoint/passing probe with LR x0.5; stop: error")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _one_length(self) -> "TrainConfig":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of train.max_steps and train.epochs")
        return self


# --------------------------------------------------------------------------- monitor
class MonitorConfig(Section):
    """Safety probes during training (a quick harmful-refusal check every N steps)."""

    every: int | None = Field(None, ge=1, description="probe every N optimizer steps; off if null")
    samples: int = Field(64, ge=1, description="harmful prompts per probe")
    min_retained: float = Field(0.9, gt=0.0, le=1.0, description="breach below this x baseline")
    on_breach: Literal["warn", "rollback", "stop"] = "rollback"
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0, description="LR multiplier after a rollback")
    max_rollbacks: int = Field(3, ge=0)


# --------------------------------------------------------------------------- eval
class SuiteConfig(Section):
    """One evaluation suite: a kind and a data source with a column mapping."""

    kind: Literal["harmful", "over_refusal", "task", "capability"]
    name: str | None = None
    path: str
    split: str = "train"
    format: Literal["auto", "jsonl", "json", "csv", "txt", "parquet", "hub"] = "auto"
    prompt_field: str = "prompt"
    category_field: str | None = None
    label_field: str | None = None
    label_values: list[str] | None = Field(None, description="keep rows whose label is one of these")
    reference_field: str | None = None
    metric: Literal["exact_match", "contains", "regex"] = "exact_match"
    limit: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1, description="default: eval.max_new_tokens")

    @field_validator("label_values", mode="before")
    @classmethod
    def _one_value(cls, value: Any) -> Any:
        # Labels are compared as text, so `label_values: 1` matches a CSV's "1" and JSON's 1.
        if value is None:
            return None
        values = value if isinstance(value, list) else [value]
        return [str(v) if isinstance(v, (int, float, bool)) else v for v in values]

    @model_validator(mode="after")
    def _check(self) -> "SuiteConfig":
        if self.kind in ("task", "capability") and not self.reference_field:
            raise ValueError(f"a {self.kind} suite needs reference_field (the expected answer)")
        if (self.label_field is None) != (self.label_values is None):
            raise ValueError("label_field and label_values go together")
        if self.name is None:
            self.name = self.kind
        return self


GENERATIVE_JUDGE_KEYS = ("judge_template", "judge_prompt", "judge_prompt_format", "judge_labels", "judge_max_new_tokens")


class RefusalConfig(Section):
    """How refusals are counted; docs/evaluation.md#refusal-detectors has the verdict -> refusal mapping."""

    detector: Literal["keyword", "judge", "both"] = "keyword"
    keywords: list[str] | None = Field(None, description="replace the default refusal markers")
    extra_keywords: list[str] = Field(default_factory=list)
    judge: str | None = Field(None, description="judge model: local folder, hub id, or 'lab' (the lab's safety classifier)")
    judge_kind: Literal["classifier", "generative"] = Field(
        "classifier", description="classifier: sequence classification; generative: a causal LM that answers a prompt")
    judge_refusal_labels: list[str] | None = Field(
        None, description="judge labels counted as a refusal; default: classifier [refusal, safe, LABEL_1], "
        "llama_guard [safe], harmbench [no]")
    judge_suites: list[Literal["harmful", "over_refusal"]] | None = Field(
        None, description="suite kinds the judge decides (keywords decide the others); "
        "default: harmful for generative judges, both for classifiers")
    # generative judges only
    judge_template: Literal["llama_guard", "harmbench", "custom"] = "llama_guard"
    judge_prompt: str | None = Field(None, description="custom: the judge's input, with {prompt} and {response}")
    judge_prompt_format: Literal["chat", "raw"] = Field(
        "chat", description="custom: chat = one user turn of the judge's chat template; raw = the text as is")
    judge_labels: dict[str, str] | None = Field(
        None, description="label -> regex searched in the judge's answer (case-insensitive, first match wins); "
        "default per template")
    judge_max_new_tokens: int = Field(16, ge=1, description="length of the judge's answer")

    @model_validator(mode="after")
    def _judge_settings(self) -> "RefusalConfig":
        if self.detector != "keyword" and not self.judge:
            raise ValueError(f"detector '{self.detector}' needs eval.refusal.judge")
        if self.judge_kind == "classifier":
            for key in GENERATIVE_JUDGE_KEYS:
                # a resolved recipe spells out every default, so only a non-default value is a mistake
                if key in self.model_fields_set and getattr(self, key) != type(self).model_fields[key].get_default(
                        call_default_factory=True):
                    raise ValueError(f"{key} is for generative judges; set judge_kind: generative")
            return self
        if self.judge == "lab":
            raise ValueError("judge 'lab' is the lab's safety classifier; use judge_kind: classifier")
        if self.judge_template == "custom":
            if not self.judge_prompt or "{response}" not in self.judge_prompt:
                raise ValueError("judge_template 'custom' needs judge_prompt, a text with {prompt} and {response}")
            if not self.judge_labels or not self.judge_refusal_labels:
                raise ValueError("judge_template 'custom' needs judge_labels and judge_refusal_labels")
        elif self.judge_prompt is not None:
            raise ValueError(f"judge_prompt needs judge_template: custom (not {self.judge_template})")
        elif "over_refusal" in (self.judge_suites or []):
            # a guard model calls a helpful answer to a benign prompt "safe": every one would count as refused
            raise ValueError(f"judge_suites: the {self.judge_template} template judges harm, not refusal, so it "
                             "cannot decide over_refusal suites (keywords do; or use a custom template)")
        for label, pattern in (self.judge_labels or {}).items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"judge_labels.{label}: invalid regular expression {pattern!r} ({err})") from None
        if self.judge_labels and self.judge_refusal_labels:
            unknown = [label for label in self.judge_refusal_labels if label not in self.judge_labels]
            if unknown:
                raise ValueError(f"judge_refusal_labels: {unknown} not among judge_labels ({', '.join(self.judge_labels)})")
        return self


class GateConfig(Section):
    """Pass/fail thresholds; null turns a check off. `*_retained` = current / baseline."""

    min_harmful_retained: float | None = Field(0.9, ge=0.0, le=2.0)
    min_category_retained: float | None = Field(None, ge=0.0, le=2.0, description="every harmful category")
    max_over_refusal_increase: float | None = Field(0.1, ge=0.0, le=1.0)
    min_task_score: float | None = Field(None, ge=0.0, le=1.0)
    min_capability_retained: float | None = Field(None, ge=0.0, le=2.0)
    exit_on_fail: bool = Field(True, description="`safetune train` exits 3 when the final gate fails")


class EvalConfig(Section):
    suites: list[SuiteConfig] = Field(default_factory=list)
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(32, ge=1)
    refusal: RefusalConfig = Field(default_factory=RefusalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    at_end: bool = Field(True, description="evaluate final/ when training ends")
    baseline_cache: bool = Field(
        True, description="reuse the base model's evaluation across runs (same model files and eval settings); "
        "kept under $SAFETUNE_CACHE/baselines or ~/.cache/safetune/baselines")

    @model_validator(mode="after")
    def _unique_names(self) -> "EvalConfig":
        names = [suite.name for suite in self.suites]
        if len(set(names)) != len(names):
            raise ValueError(f"suites: give each suite a distinct name (got {names})")
        return self


# --------------------------------------------------------------------------- output
class OutputConfig(Section):
    dir: str | None = Field(None, description="default: runs/<recipe name>")
    overwrite: bool = False
    tensorboard: bool = False


# --------------------------------------------------------------------------- recipe
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # a folder name that stays inside runs/


class Recipe(Section):
    name: str = Field("run", description="names the run folder runs/<name> (default: the file name)")
    description: str = ""
    model: ModelConfig
    data: DataConfig
    method: list[MethodConfig] = Field(default_factory=lambda: [StandardMethod(name="standard")])
    train: TrainConfig
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        # The name becomes a folder: no path separators, and no leading dot ("..", hidden folders).
        if not RUN_NAME.fullmatch(value):
            raise ValueError(f"use letters, digits, '.', '_' and '-', not starting with a dot (got {value!r})")
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _methods_as_list(cls, value: Any) -> Any:
        # `method: mix`, `method: {name: mix, ...}` and `method: [freeze, safegrad]` all work.
        items = value if isinstance(value, list) else [value]
        return [{"name": item} if isinstance(item, str) else item for item in items]

    @model_validator(mode="after")
    def _method_combination(self) -> "Recipe":
        names = [m.name for m in self.method]
        if len(set(names)) != len(names):
            raise ValueError(f"method: each method may appear once (got {names})")
        if "standard" in names and len(names) > 1:
            raise ValueError("method: 'standard' means no protection; do not combine it")
        for method in self.method:
            needs = method.name in NEEDS_SAFETY_DATA or (method.name == "freeze" and method.layers == "auto")
            needs = needs or (method.name == "token_weighting" and method.alpha > 0)
            if needs and self.data.safety is None:
                raise ValueError(f"method '{method.name}' needs a data.safety source")
            if method.name == "mix" and method.borderline_fraction > 0 and self.data.borderline is None:
                raise ValueError("method 'mix' with borderline_fraction > 0 needs a data.borderline source")
            if getattr(method, "safety_data", None) == "refusals_and_borderline" and self.data.borderline is None:
                raise ValueError(f"method '{method.name}' with safety_data refusals_and_borderline needs "
                                 "a data.borderline source")
            if getattr(method, "needs_harmful_data", False) and self.data.harmful is None:
                raise ValueError(f"method '{method.name}' needs a data.harmful source (prompt -> harmful compliance)")
        if self.data.packing and "token_weighting" in names:  # it weights tokens per example row
            raise ValueError("data.packing: not supported with method 'token_weighting'; set data.packing=false")
        if self.monitor.every is not None and not any(s.kind == "harmful" for s in self.eval.suites):
            raise ValueError("monitor.every needs a harmful suite in eval.suites")
        return self

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.method]

    def output_dir(self) -> Path:
        return Path(self.output.dir) if self.output.dir else Path("runs") / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- loading
def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """`train.learning_rate=1e-4` -> (['train', 'learning_rate'], 0.0001), YAML scalar rules."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or key.startswith("-"):
            raise UsageError(f"override '{item}': expected key.sub=value (e.g. train.max_steps=100)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.split("."), value))
    return parsed


def apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node: Any = tree
    for depth, key in enumerate(keys[:-1]):
        here = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, key, here)]
            continue
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif isinstance(child, str) and key == "method":
            child = node[key] = {"name": child}  # `method: mix` then `method.safety_fraction=…`
        elif isinstance(child, list) and len(child) == 1 and not keys[depth + 1].isdigit():
            child = child[0]
            if isinstance(child, str):
                child = node[key][0] = {"name": child}
        node = child
        if not isinstance(node, (dict, list)):
            raise UsageError(f"override '{'.'.join(keys)}': {here} is not a section")
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(keys))] = value
    else:
        node[last] = value


def _list_index(node: list, key: str, where: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise UsageError(f"override '{where}': index must be 0..{len(node) - 1}")
    return int(key)


def read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give a recipe YAML file")
    if not path.is_file():
        raise UsageError(f"{path}: recipe file not found")
    try:
        raw = path.read_bytes()
        tree = yaml.safe_load(raw.decode("utf-8"))
    except OSError as err:
        raise UsageError(f"{path}: cannot read the recipe: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the recipe as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{where}: invalid YAML: {problem}") from None
    if tree is None:
        raise UsageError(f"{path}: recipe file is empty")
    if not isinstance(tree, dict):
        raise UsageError(f"{path}: a recipe is a mapping of sections (model, data, train, ...)")
    return tree


# --------------------------------------------------------------------------- composition
# `base: file.yaml` (or a list of files; paths relative to the recipe's folder) puts the
# recipe on top of other recipe files: their trees are deep-merged under it before
# validation, each base over the one before it and the recipe over all. Mappings merge key
# by key; anything else (a value, a list, null) replaces what the base had. A base may have
# bases of its own. Two exceptions keep a merge from mixing what must not mix: a base's
# `name` is never inherited (each recipe names its own run folder), and a method mapping
# naming another method replaces the base's rather than merging two methods' settings.
Origins = dict[tuple, Path]  # key path -> the file whose value the merged recipe holds there


def compose(path: Path) -> tuple[dict, Origins]:
    """The recipe at `path` merged over its bases, and which file set each key."""
    layers = _layers(path, ())
    merged: dict = {}
    origins: Origins = {}
    for number, (source, tree) in enumerate(layers, start=1):
        if number < len(layers):
            tree.pop("name", None)
        merged = _merge(merged, tree, origins, source, ())
    return merged, origins


def _layers(path: Path, chain: tuple[Path, ...]) -> list[tuple[Path, dict]]:
    """The files that make up a recipe, deepest base first, each as its own tree without `base`."""
    tree = read_yaml(path)
    layers = []
    for base in _bases(path, tree.pop("base", None)):
        if base.resolve() in {link.resolve() for link in (*chain, path)}:
            circle = " -> ".join(map(str, (*chain, path, base)))
            raise UsageError(f"{path}: base: recipes that are each other's base ({circle})")
        layers += _layers(base, (*chain, path))
    return [*layers, (path, tree)]


def _bases(path: Path, value: Any) -> list[Path]:
    if value is None:
        return []
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise UsageError(f"{path}: base: give a recipe file (a path relative to this recipe) or a list of them")
    bases = [Path(os.path.normpath(path.parent / name)) for name in names]
    for name, base in zip(names, bases):
        if not base.is_file():
            raise UsageError(f"{path}: base '{name}': recipe file not found ({base})")
    return bases


def _merge(under: dict, over: dict, origins: Origins, source: Path, prefix: tuple) -> dict:
    """`over` deep-merged onto a copy of `under`; `origins` records `source` for the keys it sets."""
    merged = dict(under)
    for key, value in over.items():
        where = (*prefix, key)
        below = merged.get(key)
        both_mappings = isinstance(value, dict) and isinstance(below, dict)
        if not (both_mappings and value.get("name", below.get("name")) == below.get("name")):
            _forget(origins, where)
            below = {}
        merged[key] = _merge(below, value, origins, source, where) if isinstance(value, dict) else value
        origins[where] = source
    return merged


def _forget(origins: Origins, where: tuple) -> None:
    """A value replaced at `where`: what the files said below it no longer counts."""
    for stale in [key for key in origins if key[: len(where)] == where]:
        del origins[stale]


def _origin(loc: tuple, origins: Origins) -> tuple[Path, tuple] | None:
    """The file that set the deepest recorded key on the way to `loc`, and that key."""
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in origins:
            return origins[loc[:depth]], loc[:depth]
    return None


def _line_of(path: Path, keys: tuple) -> int | None:
    """The line of `keys` (a path of mapping keys) in the YAML file at `path`."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        found = next(((k, v) for k, v in node.value if k.value == key), None)
        if found is None:
            break
        line, node = found[0].start_mark.line + 1, found[1]
    return line


# --------------------------------------------------------------------------- loading
def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, compose, override and validate a recipe; raise RecipeError listing every problem."""
    path = Path(path)
    tree, origins = compose(path)
    tree.setdefault("name", default_run_name(path.stem))
    for keys, value in parse_overrides(overrides or []):
        apply_override(tree, keys, value)
        # what an override sets is the command line's doing, not a base's: blame the recipe
        _forget(origins, tuple(keys))
        origins[tuple(keys)] = path
    return validate_tree(tree, source=str(path), origins=origins)


def resolved_tree(path: str | Path) -> dict:
    """The recipe at `path` with its bases merged in (no `base` key), sections in the usual order."""
    tree, _ = compose(Path(path))
    order = list(Recipe.model_fields)
    return dict(sorted(tree.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def standalone_yaml(path: Path, name: str) -> str:
    """A recipe built on bases as one file that stands alone (what `safetune init` writes):
    the recipe's leading comments, then the merged YAML, run name `name`. Only the values
    the files set are written (defaults stay defaults), so the file reads like the recipe."""
    text = path.read_text(encoding="utf-8")
    comments = list(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines()))
    tree = {"name": name} | {key: value for key, value in resolved_tree(path).items() if key != "name"}
    lines = [*comments, f"# {path.name} with its bases merged in: this file stands alone."]
    # sections as blocks, each setting in them on one line, lists of mappings (eval.suites)
    # one item a line: the way the bundled recipes are written
    for key, value in tree.items():
        if not (isinstance(value, dict) and value):
            lines.append(_flow({key: value})[1:-1])
            continue
        lines.append(f"{key}:")
        for sub, inner in value.items():
            if isinstance(inner, list) and inner and all(isinstance(item, dict) for item in inner):
                lines += [f"  {sub}:", *(f"    - {_flow(item)}" for item in inner)]
            else:
                lines.append("  " + _flow({sub: inner})[1:-1])
    return "\n".join(lines) + "\n"


def _flow(value: Any) -> str:
    """`value` as one line of YAML (flow style)."""
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=True, allow_unicode=True, width=1 << 20).strip()


def default_run_name(stem: str) -> str:
    """A valid `name` from a file name the user chose freely: `my recipe (2)` -> `my-recipe-2`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-") or "run"


def validate_tree(tree: dict, source: str = "recipe", origins: Origins | None = None) -> Recipe:
    """Validate; a problem in a key that a base file set names that file and line."""
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            problem = format_problem(error)
            found = _origin(tuple(error["loc"]), origins or {})
            if found and str(found[0]) != source:
                line = _line_of(*found)
                problem += f" (set in {found[0]}{f':{line}' if line else ''})"
            problems.append(problem)
        raise RecipeError(problems, source) from None


# --------------------------------------------------------------------------- errors
def format_problem(error: dict) -> str:
    """One pydantic error -> `path.to.field: message`, with did-you-mean for unknown keys."""
    loc = list(error["loc"])
    path = _display_path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_fields(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = f" (did you mean {guess[0]}?)" if guess else f" (known: {', '.join(known)})"
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: required field missing"
    if kind == "union_tag_invalid":
        name = error["input"].get("name")
        guess = difflib.get_close_matches(str(name), list(METHOD_CLASSES), n=1, cutoff=0.6)
        hint = f"did you mean {guess[0]}?" if guess else f"known: {', '.join(METHOD_CLASSES)}"
        return f"{path}: unknown method {name!r} ({hint})"
    if kind == "union_tag_not_found":
        return f"{path}: each method needs a name (known: {', '.join(METHOD_CLASSES)})"
    message = error["msg"].removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and not isinstance(error.get("input"), (dict, list)):
        message += f" (got {error.get('input')!r})"
    return f"{path}: {message}" if path else message


def _display_path(loc: list) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            # a method is shown by its name (`method[mix]`), other list items by position
            if not (i + 1 < len(loc) and loc[i + 1] in METHOD_CLASSES and loc[i - 1] == "method"):
                parts.append(f"[{part}]")
        elif i > 1 and loc[i - 2] == "method" and part in METHOD_CLASSES:
            parts.append(f"[{part}]")
        else:
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts)


def _known_fields(loc: list) -> list[str]:
    """Field names of the section at `loc` (for did-you-mean)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        if part in METHOD_CLASSES:
            model = METHOD_CLASSES[part]
            continue
        annotation = model.model_fields[part].annotation
        model = _section_in(annotation) or model
    return list(model.model_fields)


def _section_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_in(arg)
        if found is not None:
            return found
    return None
