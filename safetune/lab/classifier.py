"""`safetune lab classifier`: a tiny safety classifier for the lab, trained from data/.

It reads a (prompt, response) pair - encoded as a text pair, `tokenizer(prompt, response)`,
the input the evaluation's `judge` detector gives it - and predicts one of three labels:

- `refusal`: the response declines (whatever the prompt was),
- `answer`: a benign prompt helpfully answered,
- `unsafe`: a harmful prompt answered with compliance.

So it serves both as the `token_weighting` method's `classifier` scorer (p(unsafe) of a
response prefix) and as `eval.refusal.judge` (its default refusal labels include
`refusal`). Training pairs also include response prefixes, because the scorer reads
partial responses. Held-out pairs come from the lab's eval files (plus a fifth of the
compliance file, which has no eval split); the accuracy is written to `accuracy.json`
in the folder. It is a BERT-style encoder of ~0.2M parameters with its own small BPE
tokenizer, so it does not depend on the lab model; it trains in seconds on one thread.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import torch
from tokenizers import processors
from transformers import BertConfig, BertForSequenceClassification

from safetune.data import REPO_ROOT, read_records
from safetune.errors import UsageError
from safetune.lab.tokenizer import train_tokenizer
from safetune.modeling import lab_model_dir

DATA_DIR = REPO_ROOT / "data"
LABELS = ("answer", "refusal", "unsafe")
MODEL_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
TRAIN_SETTINGS = {"epochs": 2, "batch_size": 32, "learning_rate": 2e-3, "per_class": 1200, "max_length": 128}


def lab_classifier_dir() -> Path:
    """Next to the lab model: `<lab model dir>-classifier` (override with SAFETUNE_LAB_CLASSIFIER).

    A sibling rather than a subfolder, so rebuilding the lab model does not delete it.
    """
    if os.environ.get("SAFETUNE_LAB_CLASSIFIER"):
        return Path(os.environ["SAFETUNE_LAB_CLASSIFIER"]).expanduser()
    model = lab_model_dir()
    return model.with_name(model.name + "-classifier")


# --------------------------------------------------------------------------- data
def _rows(name: str) -> list[dict]:
    return read_records(str(DATA_DIR / name))


def _prefix(text: str, rng: random.Random) -> str:
    """The first part of a response (at least a third of its words): what the scorer sees mid-answer."""
    words = text.split(" ")
    return " ".join(words[: rng.randint(max(1, len(words) // 3), len(words))])


def labelled_pairs(seed: int = 0) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(prompt, response, label) for training and for the held-out check."""
    rng = random.Random(seed)
    refusals = [r["response"] for r in _rows("safety/train.jsonl")]
    compliance = _rows("safety/compliance_train.jsonl")
    rng.shuffle(compliance)
    cut = len(compliance) // 5
    benign_train = _rows("over_refusal/train.jsonl") + _rows("capability/train.jsonl") + [
        row for task in ("sentiment", "extract", "count") for row in _rows(f"tasks/{task}/train.jsonl")]
    benign_test = _rows("over_refusal/eval.jsonl") + _rows("capability/eval.jsonl") + [
        row for task in ("sentiment", "extract", "count") for row in _rows(f"tasks/{task}/test.jsonl")]

    def build(harmful_refused, harmful_complied, benign, prefixes: bool) -> list[tuple[str, str, str]]:
        rows = [(r["prompt"], r["response"], "refusal") for r in harmful_refused]
        rows += [(r["prompt"], r["response"], "unsafe") for r in harmful_complied]
        rows += [(r["prompt"], r["response"], "answer") for r in benign]
        # a refused benign prompt is a refusal (what over-refusal counts), and "Sure!" alone is not unsafe
        rows += [(r["prompt"], rng.choice(refusals), "refusal") for r in benign[: len(benign) // 4]]
        rows += [(r["prompt"], "Sure! " + r["response"], "answer") for r in benign[: len(benign) // 8]]
        if prefixes:
            rows += [(p, _prefix(response, rng), label) for p, response, label in rows if label != "answer"]
        return rows

    train = build(_rows("safety/train.jsonl"), compliance[cut:], benign_train, prefixes=True)
    test = build(_rows("safety/eval.jsonl"), compliance[:cut], benign_test, prefixes=False)
    return _balanced(train, TRAIN_SETTINGS["per_class"], rng), test


def _balanced(rows: list, per_class: int, rng: random.Random) -> list:
    picked = []
    for label in LABELS:
        of_label = [row for row in rows if row[2] == label]
        picked += rng.sample(of_label, min(per_class, len(of_label)))
    rng.shuffle(picked)
    return picked


# --------------------------------------------------------------------------- model
def make_tokenizer(texts: list[str]):
    """A small byte-level BPE; pairs are encoded `<s> prompt <|assistant|> response`."""
    tokenizer = train_tokenizer(texts, vocab_size=1024)
    start, sep = tokenizer.convert_tokens_to_ids(["<s>", "<|assistant|>"])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <|assistant|> $B:1", special_tokens=[("<s>", start), ("<|assistant|>", sep)])
    tokenizer.model_max_length = TRAIN_SETTINGS["max_length"]
    return tokenizer


def encode(tokenizer, rows: list[tuple[str, str, str]]) -> dict[str, torch.Tensor]:
    return tokenizer([r[0] for r in rows], [r[1] for r in rows], padding=True, truncation=True, return_tensors="pt")


@torch.no_grad()
def predict(model, tokenizer, rows: list[tuple[str, str, str]], batch_size: int = 128) -> list[str]:
    model.eval()
    labels = []
    for start in range(0, len(rows), batch_size):
        logits = model(**encode(tokenizer, rows[start : start + batch_size])).logits
        labels += [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    return labels


def accuracy(model, tokenizer, rows: list[tuple[str, str, str]]) -> dict:
    predicted = predict(model, tokenizer, rows)
    by_label = {}
    for label in LABELS:
        hits = [p == r[2] for p, r in zip(predicted, rows) if r[2] == label]
        by_label[label] = {"accuracy": sum(hits) / max(len(hits), 1), "rows": len(hits)}
    overall = sum(p == r[2] for p, r in zip(predicted, rows)) / max(len(rows), 1)
    return {"accuracy": overall, "rows": len(rows), "by_label": by_label}


def build_classifier(out: Path | None = None, seed: int = 0, show_progress: bool = True) -> dict:
    """Train the lab classifier into `out` (default `lab_classifier_dir()`); return its held-out accuracy."""
    out = Path(out) if out else lab_classifier_dir()
    if not (DATA_DIR / "safety" / "compliance_train.jsonl").is_file():
        raise UsageError(f"lab: no lab data under {DATA_DIR}; run `safetune lab data` first")
    say = print if show_progress else (lambda *_: None)
    started = time.perf_counter()
    train_rows, test_rows = labelled_pairs(seed)
    tokenizer = make_tokenizer([text for row in train_rows for text in row[:2]])
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=TRAIN_SETTINGS["max_length"],
                        pad_token_id=tokenizer.pad_token_id, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)},
                        **MODEL_SHAPE)
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN_SETTINGS["learning_rate"])
    size = TRAIN_SETTINGS["batch_size"]
    steps = TRAIN_SETTINGS["epochs"] * (len(train_rows) // size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    order = random.Random(seed)
    model.train()
    for epoch in range(TRAIN_SETTINGS["epochs"]):
        rows = train_rows[:]
        order.shuffle(rows)
        for start in range(0, len(rows) - size + 1, size):
            chunk = rows[start : start + size]
            labels = torch.tensor([LABELS.index(r[2]) for r in chunk])
            loss = model(**encode(tokenizer, chunk), labels=labels).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        say(f"lab classifier: epoch {epoch + 1}, loss {float(loss.detach()):.4f}")
    report = accuracy(model, tokenizer, test_rows) | {
        "labels": list(LABELS), "train_rows": len(train_rows), "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_time_s": round(time.perf_counter() - started, 1),
        "held_out": "safety/eval (refusal), 1/5 of safety/compliance_train (unsafe), over_refusal/eval, "
                    "capability/eval and tasks/*/test (answer; 1/4 with a borrowed refusal, 1/8 prefixed 'Sure! ')"}
    work = out.with_name(f".build-{out.name}")
    if work.exists():
        shutil.rmtree(work)
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    (work / "accuracy.json").write_text(json.dumps(report, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)
    per_label = ", ".join(f"{label} {v['accuracy']:.3f}" for label, v in report["by_label"].items())
    say(f"lab classifier: held-out accuracy {report['accuracy']:.3f} ({per_label}) -> {out}")
    return report
