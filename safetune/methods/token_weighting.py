"""Dual objective with per-token weights (after DOOR/W-DOOR, Zhao et al. 2025, and STAR-DSS, Peng et al. 2025).

    loss = Σ_t w_t·CE_t(task) / Σ_t w_t  +  α·( CE(refusals)  +  npo_weight·NPO(harmful completions) )

The weights w_t ∈ [min_weight, 1] come from a scorer and carry no gradient:
- `reference`: w_t = clamp(2·σ(γ·(log π_ref(y_t) − log π_θ(y_t))), min_weight, 1), π_ref the
  frozen aligned model. Exactly 1 while the model agrees with the aligned one; a token
  the current model has come to find much likelier than the aligned model does (the
  drift that erodes safety) is down-weighted.
- `classifier`: a sequence-classification model scores (prompt, response prefix) every
  `segment_tokens` response tokens, STAR-style; each token gets w_t = clamp(1 − p_unsafe,
  min_weight, 1) of the shortest scored prefix that contains it. The training data does
  not change, so the scores are computed once and cached in the run directory, keyed by
  a fingerprint of the tokenised data and of the classifier.
- `none`: w_t = 1 (only the safety objective).

NPO (negative preference optimisation, length-normalised, relative to the aligned model):
−(2/β)·log σ(−β·(mean_t log π_θ(y_t) − mean_t log π_ref(y_t))) on data.harmful: it pushes
the harmful completions below the aligned model's own probability for them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from safetune.data import IGNORE_INDEX, Example
from safetune.errors import SafetuneError
from safetune.files import write_atomic
from safetune.methods.base import MethodContext, SafetyMethod
from safetune.loss import next_token_logprobs
from safetune.methods.safety_signal import (borderline_batch, draw_examples, harmful_examples, safety_batch,
                                            safety_objective, sequence_logprob)

DOWN_WEIGHTED = 0.99  # a token with w_t below this counts as down-weighted in the report


def reference_weights(log_p: torch.Tensor, ref_log_p: torch.Tensor, gamma: float, min_weight: float) -> torch.Tensor:
    return (2 * torch.sigmoid(gamma * (ref_log_p - log_p))).clamp(min_weight, 1.0)


def npo_loss(model, reference, batch: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """Length-normalised NPO relative to the frozen reference (zero gradient only when π_θ ≪ π_ref)."""
    log_p = sequence_logprob(model, batch, normalise=True)
    with torch.no_grad():
        ref_log_p = sequence_logprob(reference, batch, normalise=True)
    return (-2.0 / beta * F.logsigmoid(-beta * (log_p - ref_log_p))).mean()


# --------------------------------------------------------------------------- the classifier scorer
def load_classifier(source: str, device):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SafetuneError(f"method[token_weighting].classifier: cannot load '{source}': {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model.to(device).eval()


def classifier_fingerprint(source: str) -> str:
    """Config, label names and weight files (name, size, first MiB) of the classifier folder."""
    digest = hashlib.sha256(source.encode())
    folder = Path(source)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix in (".json", ".safetensors", ".bin"):
                digest.update(f"{path.name}:{path.stat().st_size}".encode())
                with path.open("rb") as handle:
                    digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def response_positions(example: Example) -> list[int]:
    """Indices t (in next-token space: position t predicts token t + 1) whose next token is a response token."""
    return [t for t in range(len(example.labels) - 1) if example.labels[t + 1] != IGNORE_INDEX]


@torch.no_grad()
def unsafe_scores(examples: list[Example], tokenizer, classifier, classifier_tokenizer, unsafe: int,
                  segment: int, batch_size: int = 64) -> list[list[float]]:
    """Per example and per response position: p(unsafe) of the shortest scored prefix containing it."""
    requests: list[tuple[str, str]] = []  # (prompt, response prefix)
    plans: list[list[int]] = []  # per example: which request scores each response position
    for example in examples:
        positions = response_positions(example)
        prompt = "\n".join(m["content"] for m in example.messages if m["role"] == "user")
        cuts = sorted(set(range(segment - 1, len(positions), segment)) | ({len(positions) - 1} if positions else set()))
        first = len(requests)
        for cut in cuts:
            ids = example.input_ids[positions[0] + 1 : positions[cut] + 2]
            requests.append((prompt, tokenizer.decode(ids, skip_special_tokens=True)))
        plans.append([first + next(j for j, cut in enumerate(cuts) if cut >= i) for i in range(len(positions))])
    probabilities: list[float] = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        batch = classifier_tokenizer([p for p, _ in chunk], [r for _, r in chunk], padding=True, truncation=True,
                                     return_tensors="pt").to(classifier.device)
        probabilities.extend(classifier(**batch).logits.float().softmax(-1)[:, unsafe].tolist())
    return [[probabilities[k] for k in plan] for plan in plans]


class TokenWeighting(SafetyMethod):
    name = "token_weighting"
    setup_order = 2  # after SAP, whose `loss` hook must run (and return None) before this one owns the loss

    def __init__(self, config):
        super().__init__(config)
        self.use_safety = config.alpha > 0
        self.use_npo = self.use_safety and config.npo_weight > 0
        self.needs_reference_model = config.scorer == "reference" or self.use_npo
        self.scores: dict[tuple[int, ...], list[float]] = {}  # classifier scorer: token ids -> p(unsafe) per position
        self.totals = {"tokens": 0, "weight_sum": 0.0, "down_weighted": 0, "unscored": 0}
        self.micro = (None, 0)  # (step, micro-batch index): reproducible safety draws

    def setup(self, ctx: MethodContext) -> None:
        if self.use_safety:
            safety_batch(ctx, 1, draw=0)  # fail early when there is no safety data
            if self.config.safety_data == "refusals_and_borderline":
                borderline_batch(ctx, 1, draw=0, method=self.name)
        if self.use_npo:
            self.harmful = harmful_examples(ctx, self.name)
        if self.config.scorer == "classifier":
            self.scores = self.cached_classifier_scores(ctx)

    # ------------------------------------------------------------------ classifier scores, once
    def cached_classifier_scores(self, ctx: MethodContext) -> dict[tuple[int, ...], list[float]]:
        source = self.config.classifier
        if source == "lab":
            from safetune.lab.classifier import lab_classifier_dir

            source = str(lab_classifier_dir())
            if not (Path(source) / "config.json").is_file():
                raise SafetuneError(f"method[token_weighting].classifier: the lab classifier is not built yet "
                                    f"({source}); run `safetune lab classifier`")
        examples = ctx.train_examples  # the loop's training data (after the audit), in its order
        digest = hashlib.sha256(json.dumps([e.input_ids for e in examples]).encode())
        digest.update(json.dumps([classifier_fingerprint(source), self.config.unsafe_label,
                                  self.config.segment_tokens]).encode())
        cache = ctx.run_dir / f"token_scores-{digest.hexdigest()[:16]}.json" if ctx.run_dir else None
        if cache is not None and cache.is_file():
            ctx.log(f"token_weighting: reusing the classifier scores cached in {cache}")
            values = json.loads(cache.read_text())["scores"]
        else:
            values = self.score_with_classifier(ctx, source, examples)
            if cache is not None and ctx.is_main and ctx.run_dir.is_dir():
                write_atomic(cache, json.dumps({"classifier": source, "scores": values}))
        return {tuple(e.input_ids): v for e, v in zip(examples, values)}

    def score_with_classifier(self, ctx: MethodContext, source: str, examples: list[Example]) -> list[list[float]]:
        tokenizer, classifier = load_classifier(source, ctx.device)
        labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
        if self.config.unsafe_label not in labels:
            raise SafetuneError(f"method[token_weighting].unsafe_label: '{self.config.unsafe_label}' is not a label "
                                f"of {source} (its labels: {', '.join(labels)})")
        ctx.log(f"token_weighting: scoring {len(examples)} training examples with {source}")
        return unsafe_scores(examples, ctx.tokenizer, classifier, tokenizer, labels.index(self.config.unsafe_label),
                             self.config.segment_tokens)

    # ------------------------------------------------------------------ weights and loss
    def weights(self, ctx: MethodContext, batch, log_p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.scorer == "reference":
            with torch.no_grad():
                ref_log_p, _ = next_token_logprobs(ctx.reference_model, batch)
            return reference_weights(log_p.detach(), ref_log_p, self.config.gamma, self.config.min_weight) * mask
        weights = mask.float()
        if self.config.scorer == "classifier":
            for row in range(weights.shape[0]):
                length = int(batch["attention_mask"][row].sum())
                scores = self.scores.get(tuple(batch["input_ids"][row, :length].tolist()))
                if scores is None:  # e.g. safety examples mixed in by `mix`: not scored, full weight
                    self.totals["unscored"] += 1
                    continue
                positions = mask[row].nonzero().flatten()
                risk = torch.tensor(scores[: len(positions)], device=weights.device)
                weights[row, positions[: len(risk)]] = (1 - risk).clamp(self.config.min_weight, 1.0)
        return weights

    def loss(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        safety = self.safety_terms(ctx) if self.use_safety else 0.0
        # the task forward goes through the (possibly DDP-wrapped) training model; safety-side passes do not
        log_p, mask = next_token_logprobs(ctx.task_model(), batch)
        weights = self.weights(ctx, batch, log_p, mask)
        task = -(weights * log_p).sum() / weights.sum().clamp(min=1e-12)
        self.record(weights, mask)
        return task + safety

    def safety_terms(self, ctx: MethodContext) -> torch.Tensor:
        """α·(refusal objective + npo_weight·NPO), each term backpropagated at once when the loop
        allows it (ctx.backward): then only its value is returned, and its graph is gone before
        the task's forward builds another."""
        step, micro = self.micro
        self.micro = (ctx.step, micro + 1 if step == ctx.step else 0)
        draw = ctx.step * 1024 + self.micro[1]
        terms = [lambda: safety_objective(ctx, self.config, draw, method=self.name)]
        if self.use_npo:
            harmful = ctx.batch_to_device(draw_examples(self.harmful, self.config.safety_batch_size, ctx.seed + 1, draw))
            terms.append(lambda: self.config.npo_weight * npo_loss(ctx.model, ctx.reference_model, harmful,
                                                                   self.config.npo_beta))
        total = 0.0
        for term in terms:
            value = self.config.alpha * term()
            if ctx.backward is not None:
                ctx.backward(value)
                value = value.detach()
            total = total + value
        return total

    def record(self, weights: torch.Tensor, mask: torch.Tensor) -> None:
        """The weight statistics of the trained tokens, kept as tensors (no host sync per step)."""
        trained = mask.sum()
        total = (weights * mask).sum()
        down = ((weights < DOWN_WEIGHTED) & mask).sum()
        self.last = {"mean_weight": torch.where(trained > 0, total / trained.clamp(min=1), 1.0),
                     "down_weighted": down / trained.clamp(min=1)}
        self.totals["tokens"] = self.totals["tokens"] + trained
        self.totals["weight_sum"] = self.totals["weight_sum"] + total
        self.totals["down_weighted"] = self.totals["down_weighted"] + down

    def after_backward(self, ctx: MethodContext) -> dict[str, float]:
        return {f"token_weighting/{key}": value for key, value in getattr(self, "last", {}).items()}

    # ------------------------------------------------------------------ report, checkpoint
    def summary(self) -> dict:
        totals = self.plain_totals()
        tokens = max(totals["tokens"], 1)
        return {"scorer": self.config.scorer, "alpha": self.config.alpha, "safety_tokens": self.config.safety_tokens,
                "npo_weight": self.config.npo_weight,
                "min_weight": self.config.min_weight, "task_tokens": totals["tokens"],
                "mean_weight": totals["weight_sum"] / tokens,
                "share_down_weighted": totals["down_weighted"] / tokens,
                "unscored_examples": totals["unscored"]}

    def plain_totals(self) -> dict:
        return {"tokens": int(self.totals["tokens"]), "weight_sum": float(self.totals["weight_sum"]),
                "down_weighted": int(self.totals["down_weighted"]), "unscored": self.totals["unscored"]}

    def state_dict(self) -> dict:
        return {"totals": self.plain_totals()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.totals = dict(state["totals"])
