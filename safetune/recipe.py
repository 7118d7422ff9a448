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
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from safetune.errors import RecipeError, UsageError


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class FileSection(Section):
    """A section naming a data file: a relative `path` is also looked up beside the recipe file
    that wrote it (`load_recipe` records that folder; data.resolve_local_path has the order)."""

    _folder: Path | None = PrivateAttr(default=None)

    @property
    def folder(self) -> Path | None:
        return self._folder

    def __eq__(self, other: object) -> bool:
        # where the recipe file was is no setting: the same settings are the same section
        return type(other) is type(self) and self.__dict__ == other.__dict__


# --------------------------------------------------------------------------- model
class LoraSettings(Section):
    """Train low-rank adapters (peft) instead of all weights; methods then act on the adapters."""

    r: int = Field(
        8, ge=1,
        description="Rank of each adapter's low-rank matrices: more rank, more trainable parameters.",
    )
    alpha: float = Field(16.0, gt=0.0, description="LoRA scaling: each adapter's output is multiplied by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input during training (0: none).")
    target_modules: Union[Literal["all-linear"], list[str]] = Field(
        "all-linear",
        description="`all-linear` (every linear layer except the output head) or a list of module names such as "
                    "[q_proj, v_proj].",
    )


class ModelConfig(Section):
    path: str = Field(
        description="The model to fine-tune: a local Hugging Face folder, a hub id (downloaded, or read from the "
                    "local hub cache), a `.gguf` file (llama.cpp's format, dequantized on load; needs the `gguf` "
                    "package; checkpoints are saved as safetensors), `lab` for the lab's tiny aligned model "
                    "(`safetune lab build`) or `real` for the aligned SmolLM2-135M-Instruct (`safetune real build`).",
    )
    lora: LoraSettings | None = Field(
        None,
        description="Train LoRA adapters (peft) instead of all weights: the safety methods then act on the "
                    "adapters only, checkpoints are PEFT folders, and `safetune eval` merges them into the base "
                    "model. null: full fine-tuning.",
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit) of a hub model; null: its default branch.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32",
        description="The dtype the weights are loaded in; `auto` keeps the checkpoint's. Keep `float32` with "
                    "train.precision bf16/fp16 (mixed precision over fp32 weights); `bfloat16` with precision "
                    "fp32 trains in pure bf16 (half the memory, less exact).",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with the model repository (some architectures need it). Off unless "
                    "you say so; when on, a warning names the model.",
    )
    allow_pickle: bool = Field(
        False,
        description="Also load .bin/.pt/.pth weight files. They are pickle files, which can run code when loaded; "
                    "by default only safetensors are read.",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template replacing the tokenizer's own. null: the tokenizer's template, or "
                    "safetune's `<|role|>` turns when it has none.",
    )


# --------------------------------------------------------------------------- data
class SourceConfig(FileSection):
    """A data source: a local JSONL/JSON/CSV/Parquet file or a `datasets` hub id."""

    path: str = Field(
        description="A local JSONL, JSON, CSV or Parquet file (a relative path is looked up in the working "
                    "directory, then in the safetune repository) or a `datasets` hub id.",
    )
    split: str = Field(
        "train",
        description="The split to read: of a hub dataset, or of a JSON file holding {split: [rows]}.",
    )
    prompt_field: str = Field("prompt", description="The column holding the user's prompt.")
    response_field: str = Field(
        "response",
        description="The column holding the assistant's answer, the tokens the loss is computed on.",
    )
    messages_field: str | None = Field(
        None,
        description="The column holding a whole chat (a list of {role, content} turns), used instead of "
                    "prompt_field and response_field; the loss covers the assistant turns.",
    )
    category_field: str | None = Field(
        "category",
        description="The column naming each row's harm category (safety examples are paired by it, e.g. for SAP's "
                    "preference pairs); null, or a row without it: no category.",
    )
    limit: int | None = Field(None, ge=1, description="Read only the first N rows; null: all of them.")


class AuditConfig(Section):
    """Before training, flag harmful -> compliance rows of data.train and drop (or only report) them."""

    checks: list[Literal["refusal_conflict", "judge"]] = Field(
        default_factory=lambda: ["refusal_conflict"],
        description="What flags a row: `refusal_conflict` (the aligned model refuses the prompt but the row's "
                    "response complies) and/or `judge` (a safety classifier labels the prompt and response "
                    "unsafe).",
    )
    judge: str | None = Field(
        None,
        description="The `judge` check's sequence-classification model: a local folder, a hub id, or `lab` (the "
                    "lab's safety classifier).",
    )
    judge_unsafe_labels: list[str] = Field(
        default_factory=lambda: ["unsafe", "harmful"],
        description="The judge's labels that flag a row.",
    )
    action: Literal["drop", "report"] = Field(
        "drop",
        description="`drop`: remove flagged rows before batches are formed; `report`: keep them and only list "
                    "them. Either way they are listed in <run>/data_audit.json.",
    )
    max_flagged: float = Field(
        0.5, gt=0.0, le=1.0,
        description="If more than this share of the rows is flagged, stop with an error: the checks cannot tell "
                    "this data apart (e.g. the model refuses the task's own prompts).",
    )
    max_new_tokens: int = Field(
        32, ge=1,
        description="refusal_conflict: tokens the aligned model generates per prompt.",
    )
    batch_size: int = Field(32, ge=1, description="Rows per generation or classifier batch.")

    @model_validator(mode="after")
    def _judge_needed(self) -> "AuditConfig":
        if not self.checks:
            raise ValueError("checks: give at least one of refusal_conflict, judge")
        if "judge" in self.checks and not self.judge:
            raise ValueError("the judge check needs data.audit.judge (a sequence-classification model)")
        return self


class DataConfig(Section):
    train: SourceConfig = Field(description="The task data to fine-tune on: a source (path and columns).")
    eval: SourceConfig | None = Field(
        None,
        description="Held-out task data; its loss is reported when training ends. null: none (or use "
                    "eval_fraction).",
    )
    eval_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Hold out this share of data.train as the held-out set instead of giving data.eval; 0: none.",
    )
    safety: SourceConfig | None = Field(
        None,
        description="Harmful prompts with safe responses (refusals). Used by mix, safegrad, ewc, sap, "
                    "token_weighting (alpha > 0) and freeze's layer detector.",
    )
    borderline: SourceConfig | None = Field(
        None,
        description="Benign prompts that look sensitive, with normal answers. mix replays them "
                    "(borderline_fraction); safegrad, ewc and token_weighting protect them with safety_data: "
                    "refusals_and_borderline, so keeping refusals does not teach over-refusal.",
    )
    harmful: SourceConfig | None = Field(
        None,
        description="Harmful prompts with harmful compliances: mixed into training by harmful_ratio (an attack "
                    "simulation), the rejected side of SAP's pairs, and token_weighting's NPO data.",
    )
    harmful_ratio: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of the training set made of data.harmful rows (0.1: one row in ten), to simulate "
                    "training data that cannot be trusted; needs data.harmful.",
    )
    max_seq_len: int = Field(
        256, ge=8,
        description="Longest example, in tokens (prompt, response and chat markup); longer ones are handled by "
                    "`truncation`. With packing, the length of a packed sequence.",
    )
    truncation: Literal["truncate_prompt", "drop", "error"] = Field(
        "truncate_prompt",
        description="An example longer than max_seq_len: `truncate_prompt` keeps the response and cuts the prompt "
                    "from the left (the response's end only if it alone needs over 3/4 of the length), `drop` "
                    "leaves it out, `error` stops. Every case is reported.",
    )
    shuffle: bool = Field(
        True,
        description="Shuffle the training rows every epoch (seeded by train.seed) and before an eval_fraction "
                    "split; false keeps the file order.",
    )
    packing: bool = Field(
        False,
        description="Pack several short examples into one sequence of up to max_seq_len tokens; attention stays "
                    "within each example and train.batch_size then counts packed sequences. Refused with "
                    "token_weighting, and for model code that ignores the position resets.",
    )
    empty_rows: Literal["skip", "error"] = Field(
        "skip",
        description="A row whose prompt or response is empty (it would teach nothing, or to answer nothing): "
                    "skip leaves such rows out and counts them in one warning; error stops at the first, "
                    "naming its line.",
    )
    split_by_length: bool = Field(
        True,
        description="Run a batch that holds short and long examples (task rows and mix's replayed answers) as two "
                    "passes, each padded to its own longest, when that pads at least 25% fewer tokens: the same "
                    "gradient with less padding. Off under FSDP.",
    )
    audit: AuditConfig | None = Field(
        None,
        description="Score every training row before the first step and drop (or report) harmful-to-compliance "
                    "rows; see the data audit in the methods guide. null: no audit.",
    )

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

    name: Literal["standard"] = Field(description="`standard`: plain fine-tuning, no protection.")


class MixMethod(Section):
    """Replay safety examples inside every task batch (the data-mixing baseline)."""

    name: Literal["mix"] = Field(description="`mix`: replay safety examples inside every task batch.")
    safety_fraction: float = Field(
        0.1, gt=0.0, lt=1.0,
        description="Share of each batch made of data.safety refusals; the batch's task examples stay as many as "
                    "without mix, the replayed rows are added.",
    )
    borderline_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of each batch made of data.borderline rows (benign look-alike prompts with normal "
                    "answers), so the replayed refusals do not teach over-refusal; needs data.borderline.",
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
SAFETY_DATA_FIELD = Field(
    "refusals",
    description="What the method's safety objective protects: `refusals` (data.safety) or "
                "`refusals_and_borderline` (also data.borderline's normal answers to benign look-alike prompts, so "
                "keeping refusals does not teach over-refusal; needs data.borderline).",
)
BORDERLINE_WEIGHT_FIELD = Field(
    1.0, gt=0.0,
    description="With refusals_and_borderline: the borderline term's weight w, L_s = L(refusals) + w * L(borderline).",
)
# Refusing or answering is decided in the first tokens of the answer; the rest of a long
# refusal costs a pass over the whole vocabulary per token and adds little to the signal.
SAFETY_TOKENS_FIELD = Field(
    None, ge=1,
    description="Compute the safety loss on the first k response tokens only, where refusing or answering is "
                "decided (a long refusal's later tokens add cost, little signal); null: the whole response.",
)


class SafeGradMethod(Section):
    """Gradient surgery: drop the part of the task gradient that conflicts with safety."""

    name: Literal["safegrad"] = Field(description="`safegrad`: gradient surgery against the safety gradient.")
    space: Literal["gradient", "update"] = Field(
        "gradient",
        description="`gradient`: project the task gradient before the optimizer (the published rule); `update`: "
                    "project the change AdamW actually applied (needs a copy of the trainable weights per step).",
    )
    projection: Literal["global", "per_tensor", "per_layer"] = Field(
        "global",
        description="How the conflict is measured: `global` (one dot product over all trainable parameters), "
                    "`per_tensor`, or `per_layer` (per decoder layer; everything else is one more group).",
    )
    margin: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Project until the step agrees with safety by at least this cosine: cos(step, -s) >= margin, "
                    "so every step lowers the safety loss a little. 0: only remove conflicts.",
    )
    safety_average: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Average the safety gradient over recomputations, s = beta*s + (1-beta)*s_new; 0: always the "
                    "fresh one.",
    )
    safety_loss: Literal["refusal_ce", "kl_to_base"] = Field(
        "refusal_ce",
        description="The safety loss s is the gradient of: `refusal_ce` (cross-entropy of the safe responses) or "
                    "`kl_to_base` (KL from the aligned model on the safety examples; keeps a frozen copy of the "
                    "model).",
    )
    safety_every: int = Field(
        1, ge=1,
        description="Recompute the safety gradient every k steps and reuse the cached one in between (amortised: "
                    "cheaper, less exact).",
    )
    safety_batch_size: int = Field(
        8, ge=1,
        description="Safety examples behind each safety gradient (as many borderline examples again with "
                    "safety_data: refusals_and_borderline).",
    )
    safety_micro_batch: int = Field(
        16, ge=1,
        description="Rows per safety forward pass: a larger safety batch runs as length-sorted micro-batches of "
                    "this size (same gradient, less padding).",
    )
    safety_data: SafetyData = SAFETY_DATA_FIELD
    borderline_weight: float = BORDERLINE_WEIGHT_FIELD
    safety_tokens: int | None = SAFETY_TOKENS_FIELD
    constraints: Literal["joint", "separate"] = Field(
        "joint",
        description="`joint`: one constraint on L(refusals) + w*L(borderline); `separate`: neither loss may rise "
                    "(an exact projection onto both constraints; needs safety_data: refusals_and_borderline).",
    )
    borderline_margin: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="With constraints: separate, the borderline constraint's own margin (a larger one pushes the "
                    "benign answers back harder); null: the same as margin.",
    )
    restore: float = Field(
        0.0, ge=0.0,
        description="At each fresh safety gradient s, also step down the safety loss: .grad += restore * s. Helps "
                    "amortised runs (safety_every > 1); 0: off.",
    )
    stale_projection: bool = Field(
        True,
        description="With safety_every > 1: also project the steps between refreshes against the cached s. false: "
                    "only the step that computed s is projected, which saves a pass over s per step.",
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

    name: Literal["freeze"] = Field(description="`freeze`: keep safety-critical decoder layers bit-identical.")
    layers: Union[Literal["auto"], list[Annotated[int, Field(ge=0)]]] = Field(
        "auto",
        description="Decoder layers to freeze (indices from 0), or `auto`: a detector scores every layer before "
                    "training and the best-scoring ones are frozen (`safetune layers RECIPE` prints the table).",
    )
    detector: Literal["fisher", "ablation"] = Field(
        "fisher",
        description="With layers: auto, how layers are scored: `fisher` (Fisher mass of the refusal loss per "
                    "parameter) or `ablation` (how much refusal changes when the layer is scaled by "
                    "ablation_scale).",
    )
    top_k: int | None = Field(
        None, ge=1,
        description="Freeze the k best-scoring layers; default 1 when threshold is not given.",
    )
    threshold: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Instead of top_k: freeze every layer scoring at least this share of the best layer's score.",
    )
    samples: int = Field(64, ge=1, description="Safety examples the detector uses.")
    batch_size: int = Field(8, ge=1, description="Detector batch size.")
    ablation_scale: float = Field(
        0.0, ge=0.0,
        description="ablation detector: factor the layer's attention and MLP matrices are scaled by (0 makes the "
                    "layer the identity; 1.1 is the Safety Layers paper's perturbation).",
    )
    max_new_tokens: int = Field(24, ge=1, description="ablation detector: tokens generated per probe prompt.")

    @model_validator(mode="after")
    def _one_rule(self) -> "FreezeMethod":
        if self.top_k is not None and self.threshold is not None:
            raise ValueError("give top_k or threshold, not both")
        if self.top_k is None and self.threshold is None:
            self.top_k = 1
        return self


class EWCMethod(Section):
    """Elastic weight consolidation toward the aligned weights, Fisher of the refusal loss."""

    name: Literal["ewc"] = Field(description="`ewc`: elastic weight consolidation toward the aligned weights.")
    strength: float = Field(
        1000.0, gt=0.0,
        description="lambda in lambda * sum F (theta - theta_aligned)^2; larger holds the weights that matter for "
                    "refusal closer to the aligned ones.",
    )
    fisher_samples: int = Field(
        128, ge=1,
        description="Safety examples behind the diagonal Fisher, computed once before training and cached in the "
                    "run folder.",
    )
    fisher_batch_size: int = Field(8, ge=1, description="Batch size of the Fisher computation.")
    # also anchor what answers benign look-alikes: F = F(refusals) + w · F(borderline)
    safety_data: SafetyData = SAFETY_DATA_FIELD
    borderline_weight: float = BORDERLINE_WEIGHT_FIELD


class SAPMethod(Section):
    """Safety-aware probing: a probe trained where a harmful weight shift raises the task loss."""

    name: Literal["sap"] = Field(description="`sap`: safety-aware probing.")
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1,
        description="Decoder layers whose MLP output gets the probe (a bias); null: the two middle layers.",
    )
    epsilon: float = Field(
        2e-5, gt=0.0,
        description="Size of the weight shift along the harmful direction, relative to the weights' norm.",
    )
    probe_lr: float = Field(0.05, gt=0.0, description="Learning rate of the probe's own Adam steps.")
    probe_steps: int = Field(1, ge=1, description="Probe updates per probed step.")
    pairs_per_step: int = Field(
        8, ge=1,
        description="Preference pairs (a refusal against a data.harmful compliance to the same prompt) behind the "
                    "harmful direction.",
    )
    pairs_per_pass: int | None = Field(
        None, ge=1,
        description="Preference pairs per forward pass behind the harmful direction (two rows each); null: half of "
                    "train.batch_size, so a pass holds no more rows than a task batch. The same direction, in less "
                    "memory.",
    )
    every: int = Field(1, ge=1, description="Retrain the probe every k steps and reuse it in between.")

    @property
    def needs_harmful_data(self) -> bool:
        return True  # the rejected side of the preference pairs


class TokenWeightingMethod(Section):
    """Per-token weights on the task loss plus a safety objective (refusal CE, optional NPO)."""

    name: Literal["token_weighting"] = Field(
        description="`token_weighting`: per-token weights on the task loss plus a safety objective.",
    )
    scorer: Literal["reference", "classifier", "none"] = Field(
        "reference",
        description="Where the weights come from: `reference` (tokens the aligned model finds much less likely "
                    "than the current model are down-weighted), `classifier` (tokens of response segments a "
                    "safety classifier calls unsafe), `none` (weight 1: the safety objective alone).",
    )
    gamma: float = Field(
        1.0, gt=0.0,
        description="reference scorer: sharpness of w = clamp(2*sigmoid(gamma*(log p_ref - log p)), min_weight, "
                    "1).",
    )
    min_weight: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Weights are clamped to [min_weight, 1]; a floor keeps learned task tokens training.",
    )
    classifier: str = Field(
        "lab",
        description="classifier scorer: a Hugging Face sequence-classification folder or hub id, or `lab` (the "
                    "lab's safety classifier).",
    )
    unsafe_label: str = Field("unsafe", description="classifier scorer: the classifier's label that means unsafe.")
    safety_data: SafetyData = SAFETY_DATA_FIELD
    borderline_weight: float = BORDERLINE_WEIGHT_FIELD
    segment_tokens: int = Field(4, ge=1, description="classifier scorer: score the response prefix every k tokens.")
    alpha: float = Field(
        0.2, ge=0.0,
        description="Weight of the safety objective (refusal cross-entropy, plus NPO when npo_weight > 0); 0: "
                    "weighted task loss only.",
    )
    safety_batch_size: int = Field(8, ge=1, description="Safety examples per step for the safety objective.")
    safety_tokens: int | None = SAFETY_TOKENS_FIELD
    npo_weight: float = Field(
        0.0, ge=0.0,
        description="Weight of NPO on data.harmful completions inside the safety objective (lowers their "
                    "probability below the aligned model's); 0: off. Needs data.harmful.",
    )
    npo_beta: float = Field(0.5, gt=0.0, description="NPO's beta (its temperature).")

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
        "ddp",
        description="`ddp`: a whole model per process (DistributedDataParallel); `fsdp`: parameters, gradients "
                    "and optimizer state sharded across processes (FSDP2), for models that do not fit one device.",
    )


class TrainConfig(Section):
    seed: int = Field(0, description="Seed of everything random: data order, method draws, initialisation of adapters.")
    batch_size: int = Field(
        8, ge=1,
        description="Examples per micro-batch, per process (global batch = batch_size x processes x grad_accum). "
                    "With data.packing, packed sequences.",
    )
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated into one optimizer step.")
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW's decoupled weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's (beta1, beta2).")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine",
        description="Learning rate after warm-up: `constant`, or decaying to 0 at the last step, `linear` or "
                    "`cosine`.",
    )
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up from 0 to learning_rate.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to train; give this or epochs.")
    epochs: float | None = Field(
        None, gt=0.0,
        description="Passes over the training data (may be fractional); give this or max_steps.",
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0.0,
        description="Clip the gradient's global norm to this; null: no clipping.",
    )
    save_every: int | None = Field(
        None, ge=1,
        description="Write a resumable checkpoint (weights, optimizer, scheduler, RNG and method state) every N "
                    "steps; null: only final/.",
    )
    keep_checkpoints: int | None = Field(
        None, ge=1,
        description="Keep only the N newest step checkpoints; null: all. A full checkpoint holds the weights and "
                    "the optimizer state, about 12 bytes per parameter in fp32.",
    )
    log_every: int = Field(
        10, ge=1,
        description="Write a metrics.jsonl line (loss, learning rate, throughput, the methods' statistics) and "
                    "update the progress line every N steps.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto",
        description="`auto`: CUDA when present, else CPU; or cpu, cuda, mps. Under torchrun each process takes "
                    "its own GPU.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="`fp32`, or autocast mixed precision `bf16` / `fp16` (fp16 with a loss scaler) over the "
                    "loaded weights; keep model.dtype float32 for fp32 master weights.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: less activation memory, about 30% slower, the "
                    "same gradients.",
    )
    compile: bool = Field(
        False,
        description="Run the training forward pass through torch.compile: a GPU speed-up once the first steps "
                    "have paid the compile time; safety passes and generation stay eager.",
    )
    max_bad_steps: int = Field(
        3, ge=1,
        description="Non-finite steps (skipped, no update) in a row before on_nonfinite acts.",
    )
    on_nonfinite: Literal["rollback", "stop"] = Field(
        "rollback",
        description="After max_bad_steps non-finite steps in a row: `rollback` to the last checkpoint or passing "
                    "safety probe with half the learning rate (at most 3 times), or `stop` with an error.",
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="How a run started by torchrun or accelerate launch spreads the model over its processes.",
    )

    @model_validator(mode="after")
    def _one_length(self) -> "TrainConfig":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of train.max_steps and train.epochs")
        return self


# --------------------------------------------------------------------------- monitor
class MonitorConfig(Section):
    """Safety probes during training (a quick harmful-refusal check every N steps)."""

    every: int | None = Field(
        None, ge=1,
        description="Probe harmful-prompt refusal every N optimizer steps; null: no probes. Needs a harmful suite "
                    "in eval.suites.",
    )
    samples: int = Field(
        64, ge=1,
        description="Harmful prompts per probe, spread evenly over the recipe's harmful suites.",
    )
    min_retained: float = Field(
        0.9, gt=0.0, le=1.0,
        description="A probe below this share of the step-0 probe is a breach.",
    )
    on_breach: Literal["warn", "rollback", "stop"] = Field(
        "rollback",
        description="On a breach: `warn` logs it, `stop` ends the run with an error, `rollback` restores the last "
                    "state that passed and lowers the learning rate by lr_factor.",
    )
    lr_factor: float = Field(
        0.5, gt=0.0, lt=1.0,
        description="The learning rate is multiplied by this after a rollback.",
    )
    max_rollbacks: int = Field(3, ge=0, description="Rollbacks allowed before a further breach stops the run.")


# --------------------------------------------------------------------------- eval
class SuiteConfig(FileSection):
    """One evaluation suite: a kind and a data source with a column mapping."""

    kind: Literal["harmful", "over_refusal", "task", "capability"] = Field(
        description="`harmful` (refusal rate, overall and by category), `over_refusal` (benign prompts that get "
                    "refused), `task` and `capability` (answers scored against references).",
    )
    name: str | None = Field(None, description="The suite's name in reports; default: its kind. Names must differ.")
    path: str = Field(
        description="The prompts: a local JSONL, JSON, CSV, TXT (one prompt a line) or Parquet file, or a "
                    "`datasets` hub id.",
    )
    split: str = Field(
        "train",
        description="The split to read from a hub dataset, or from a JSON file holding {split: [rows]}.",
    )
    format: Literal["auto", "jsonl", "json", "csv", "txt", "parquet", "hub"] = Field(
        "auto",
        description="The file's format; `auto` tells it from the extension (`hub` for a hub id).",
    )
    prompt_field: str = Field("prompt", description="The column holding the prompt (AdvBench: goal).")
    category_field: str | None = Field(
        None,
        description="The column holding a category: per-category refusal rates (harmful suites). null: none.",
    )
    label_field: str | None = Field(
        None,
        description="Keep only rows whose value in this column is one of label_values (XSTest: label = safe).",
    )
    label_values: list[str] | None = Field(
        None,
        description="With label_field: the labels of the rows to keep (compared as text, so 1 matches \"1\").",
    )
    reference_field: str | None = Field(
        None,
        description="task and capability suites: the column holding the expected answer.",
    )
    metric: Literal["exact_match", "contains", "regex"] = Field(
        "exact_match",
        description="task and capability suites: `exact_match`, `contains` (the reference appears in the answer) "
                    "or `regex` (the reference is a regular expression searched in the answer).",
    )
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N rows; null: all.")
    max_new_tokens: int | None = Field(
        None, ge=1,
        description="Tokens generated per answer for this suite; null: eval.max_new_tokens.",
    )
    system_prompt: str | None = Field(
        None,
        description="A system turn placed before each prompt, rendered by the model's own chat template "
                    "(an attack's system prompt, such as AOA's identity). null: the prompt is the only turn.",
    )
    prompt_template: str | None = Field(
        None,
        description="The user turn's text, with `{prompt}` standing for the suite's prompt (AOA: \"AOA, execute "
                    "my instruction: {prompt}\"). Reports keep the raw prompt; judges see the text as asked. "
                    "null: the prompt as it is.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt(cls, value: str | None) -> str | None:
        if value is not None and "{prompt}" not in value:
            raise ValueError(f"must contain {{prompt}} where the suite's prompt goes (got {value!r})")
        return value

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

    detector: Literal["keyword", "judge", "both"] = Field(
        "keyword",
        description="How a refusal is recognised: `keyword` (refusal phrases), `judge` (a model decides), or "
                    "`both` (the judge's numbers, plus a keyword-vs-judge agreement table).",
    )
    keywords: list[str] | None = Field(
        None,
        description="Refusal markers replacing the default list (the AdvBench/GCG phrases); null: the default "
                    "list.",
    )
    extra_keywords: list[str] = Field(
        default_factory=list,
        description="Refusal markers added to the default list (or to keywords).",
    )
    judge: str | None = Field(
        None,
        description="The judge model: a local folder, a hub id, or `lab` (the lab's safety classifier).",
    )
    judge_kind: Literal["classifier", "generative"] = Field(
        "classifier",
        description="`classifier`: a sequence-classification model reads prompt and answer; `generative`: a "
                    "causal language model (a guard model) answers a judging prompt.",
    )
    judge_refusal_labels: list[str] | None = Field(
        None,
        description="Judge labels counted as a refusal. Default: classifier [refusal, safe, LABEL_1], llama_guard "
                    "[safe], harmbench [no].",
    )
    judge_suites: list[Literal["harmful", "over_refusal"]] | None = Field(
        None,
        description="Suite kinds the judge decides (keywords decide the others). Default: harmful for generative "
                    "judges, both kinds for classifiers.",
    )
    # generative judges only
    judge_template: Literal["llama_guard", "harmbench", "custom"] = Field(
        "llama_guard",
        description="generative judges: the prompt the judge model is asked: `llama_guard`, `harmbench`, or "
                    "`custom` (judge_prompt, judge_labels and judge_refusal_labels).",
    )
    judge_prompt: str | None = Field(
        None,
        description="judge_template custom: the judge's input, a text with {prompt} and {response}.",
    )
    judge_prompt_format: Literal["chat", "raw"] = Field(
        "chat",
        description="judge_template custom: `chat` sends judge_prompt as one user turn of the judge's chat "
                    "template; `raw` sends the text as it is.",
    )
    judge_labels: dict[str, str] | None = Field(
        None,
        description="Generative judges: label -> regular expression searched in the judge's answer "
                    "(case-insensitive, first match wins). Default: per template.",
    )
    judge_max_new_tokens: int = Field(16, ge=1, description="Generative judges: tokens of the judge's answer.")

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

    min_harmful_retained: float | None = Field(
        0.9, ge=0.0, le=2.0,
        description="Pass only if harmful refusal is at least this share of the baseline's; null: no check.",
    )
    min_category_retained: float | None = Field(
        None, ge=0.0, le=2.0,
        description="Pass only if every harmful category keeps at least this share of its baseline refusal; null: "
                    "no check.",
    )
    max_over_refusal_increase: float | None = Field(
        0.1, ge=0.0, le=1.0,
        description="Pass only if over-refusal rose by at most this much (absolute); null: no check.",
    )
    min_task_score: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Pass only if the task score is at least this; null: no check.",
    )
    min_capability_retained: float | None = Field(
        None, ge=0.0, le=2.0,
        description="Pass only if the capability score is at least this share of the baseline's; null: no check.",
    )
    exit_on_fail: bool = Field(
        True,
        description="`safetune train` exits 3 when the final gate fails (the checkpoint is kept); false: exit 0.",
    )


class EvalConfig(Section):
    suites: list[SuiteConfig] = Field(
        default_factory=list,
        description="What to measure: a list of suites (harmful, over_refusal, task, capability), each a data "
                    "source with a column mapping.",
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens generated per answer (greedy); a suite may set its own.")
    batch_size: int = Field(32, ge=1, description="Prompts generated for per batch.")
    refusal: RefusalConfig = Field(
        default_factory=RefusalConfig,
        description="How refusals are counted: keywords, a judge model, or both.",
    )
    gate: GateConfig = Field(default_factory=GateConfig, description="Pass/fail thresholds of the safety report.")
    at_end: bool = Field(True, description="Evaluate final/ when training ends and write the safety report.")
    baseline_cache: bool = Field(
        True,
        description="Reuse the base model's evaluation across runs with the same model files and eval settings, "
                    "kept under $SAFETUNE_CACHE/baselines or ~/.cache/safetune/baselines.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "EvalConfig":
        names = [suite.name for suite in self.suites]
        if len(set(names)) != len(names):
            raise ValueError(f"suites: give each suite a distinct name (got {names})")
        return self


# --------------------------------------------------------------------------- output
class OutputConfig(Section):
    dir: str | None = Field(None, description="The run folder; null: runs/<recipe name>.")
    overwrite: bool = Field(
        False,
        description="Replace an existing run folder; without it (or --resume) an existing folder is refused.",
    )
    tensorboard: bool = Field(
        False,
        description="Also write TensorBoard event files into <run>/tensorboard (needs the tensorboard package).",
    )


# --------------------------------------------------------------------------- recipe
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # a folder name that stays inside runs/


class Recipe(Section):
    name: str = Field(
        "run",
        description="Names the run folder runs/<name>: letters, digits, '.', '_' and '-'. Default: the recipe's "
                    "file name.",
    )
    description: str = Field("", description="One line saying what the recipe is for (shown by `safetune recipes`).")
    model: ModelConfig = Field(description="The model to fine-tune and how to load it.")
    data: DataConfig = Field(
        description="Training data, the safety data the methods use, and how examples are tokenised.",
    )
    method: list[MethodConfig] = Field(
        default_factory=lambda: [StandardMethod(name="standard")],
        description="Safety method(s): a name (`mix`), a mapping with the method's own fields ({name: mix, "
                    "safety_fraction: 0.2}), or a list to combine them ([freeze, safegrad]). Default: standard.",
    )
    train: TrainConfig = Field(
        description="The optimisation: steps, batch, learning rate, precision, checkpoints, processes.",
    )
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig,
        description="Safety probes during training, with what to do on a breach.",
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig,
        description="What to measure before and after training, and the safety gate.",
    )
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where the run folder goes.")

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
        if not names:
            raise ValueError("method: give at least one method (standard for plain fine-tuning)")
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
        if "" in key.split("."):
            raise UsageError(f"override '{item}': an empty name between dots in '{key}'; expected key.sub=value")
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
    if not path.exists():
        raise UsageError(f"{path}: recipe file not found")
    if not path.is_file():  # reading a FIFO would wait forever
        raise UsageError(f"{path}: not a regular file (a pipe or a device); give a recipe YAML file")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
        tree = yaml.safe_load(text)
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


def _refuse_duplicate_keys(node: Any, path: Path, keys: tuple = ()) -> None:
    """A key written twice in one mapping: YAML keeps the last silently, which hides a setting
    (or a whole section) the user wrote."""
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, path, (*keys, str(index)))
        return
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key is not None and key != "<<":  # `<<` merges an anchor; it is not a setting
            line = key_node.start_mark.line + 1
            if key in first_line:
                dotted = ".".join((*keys, key))
                raise UsageError(f"{path}:{line}: {dotted}: written twice (first on line {first_line[key]}); "
                                 "keep one")
            first_line[key] = line
        _refuse_duplicate_keys(value_node, path, (*keys, str(key)))


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
    recipe = validate_tree(tree, source=str(path), origins=origins)
    _note_folders(recipe, origins, path)
    return recipe


def _note_folders(recipe: Recipe, origins: Origins, path: Path) -> None:
    """Each data source learns the folder of the file that named it (for relative paths)."""
    sources = [(("data", name, "path"), getattr(recipe.data, name)) for name in DataConfig.model_fields
               if isinstance(getattr(recipe.data, name), SourceConfig)]
    sources += [(("eval", "suites", index, "path"), suite) for index, suite in enumerate(recipe.eval.suites)]
    for loc, section in sources:
        found = _origin(loc, origins)
        section._folder = (found[0] if found else path).parent


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
