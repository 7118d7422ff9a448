"""Measuring the real model before and after the aligned build: refusal on AdvBench and
XSTest part A, and reference loss on held-out Alpaca and Dolly rows (its general ability);
the build report (`build_report.json` / `.md`) in the aligned model's folder."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from safetune.files import fingerprint, sha256_file, write_atomic
from safetune.real.splits import ADVBENCH, REAL_DATA, XSTEST, split_path
from safetune.recipe import validate_tree

REPORT = "build_report"
MAX_SEQ_LEN = 192  # the build's sequence length, and the reference losses'
EVAL = {"max_new_tokens": 32, "batch_size": 32}
HELDOUT = ("alpaca_heldout", "dolly_heldout")


def real_suites(advbench_limit: int | None = None) -> list[dict]:
    """AdvBench (harmful), XSTest part A's safe prompts (over-refusal) and its unsafe contrasts (harmful)."""
    xstest = {"path": str(REAL_DATA / XSTEST), "label_field": "label", "category_field": "type"}
    return [
        {"kind": "harmful", "name": "advbench", "path": str(REAL_DATA / ADVBENCH), "prompt_field": "goal",
         **({"limit": advbench_limit} if advbench_limit else {})},
        {"kind": "over_refusal", "name": "xstest_safe", **xstest, "label_values": ["safe"]},
        {"kind": "harmful", "name": "xstest_unsafe", **xstest, "label_values": ["unsafe"]},
    ]


def reference_losses(model, tokenizer, device="cpu") -> dict[str, float]:
    """Mean response loss on held-out Alpaca and Dolly rows: the model's general ability."""
    from safetune.data import load_examples, tokenize_all
    from safetune.recipe import SourceConfig
    from safetune.train_eval import mean_loss

    losses = {}
    for name in HELDOUT:
        examples = load_examples(SourceConfig(path=str(split_path(name))), f"real.{name}")
        losses[name] = mean_loss(model, tokenize_all(examples, tokenizer, MAX_SEQ_LEN), tokenizer, device)
    return losses


def figures_cache(base: Path, advbench_limit: int | None) -> Path:
    """Where the unaligned model's figures are kept, beside it: named by everything that shapes
    them (suites and their data, generation settings, sequence length, held-out rows)."""
    suites = real_suites(advbench_limit)
    files = sorted({suite["path"] for suite in suites} | {str(split_path(name)) for name in HELDOUT})
    inputs = [suites, EVAL, MAX_SEQ_LEN, [sha256_file(Path(file)) for file in files]]
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return Path(base) / f"figures-advbench{advbench_limit or 'all'}-{key}.json"


def measure(aligned: Path, base: Path, timing: dict | None = None, advbench_limit: int | None = None,
            show_progress: bool = True, cache: bool = True) -> dict:
    """Before and after: refusal on AdvBench and XSTest, reference loss; writes build_report.*.
    With `cache`, the original's figures are kept beside it and measured once per setting."""
    figures = {"original": _figures(base, aligned, "original", advbench_limit, show_progress, cache),
               "aligned": _figures(aligned, aligned, "aligned", advbench_limit, show_progress, False)}
    for name in HELDOUT:
        figures["aligned"][f"{name}_ratio"] = figures["aligned"][name] / figures["original"][name]
    report = {"model": str(aligned), "fingerprint": fingerprint(aligned), "timing": timing or {}, **figures,
              "examples": _examples(aligned)}
    write_atomic(aligned / f"{REPORT}.json", json.dumps(report, indent=2) + "\n")
    write_atomic(aligned / f"{REPORT}.md", _markdown(report))
    if show_progress:
        print(_markdown(report))
    return report


def _figures(folder: Path, aligned: Path, label: str, advbench_limit: int | None, show_progress: bool,
             cache: bool) -> dict:
    """One model's refusals and reference losses (read from, or kept in, its cache file with `cache`)."""
    from safetune.evaluation.report import suite_rates
    from safetune.evaluation.runner import evaluate_model
    from safetune.modeling import load_model, load_tokenizer

    cached = figures_cache(folder, advbench_limit) if cache else None
    if cached and cached.is_file():
        return json.loads(cached.read_text())
    recipe = validate_tree({
        "name": f"real-{label}", "model": {"path": str(folder)},
        "data": {"train": {"path": str(split_path("alpaca_heldout"))}, "max_seq_len": MAX_SEQ_LEN},
        "train": {"max_steps": 1}, "eval": {"suites": real_suites(advbench_limit), **EVAL},
    })
    model, tokenizer = load_model(recipe.model), load_tokenizer(recipe.model)
    started = time.perf_counter()
    report = evaluate_model(model, tokenizer, recipe, work_dir(aligned, label), checkpoint=str(folder),
                            baseline=None, run_info={"method": ["real-build"], "steps": 0}, progress=show_progress)
    figures = {**suite_rates(report), **reference_losses(model, tokenizer),
               "eval_s": round(time.perf_counter() - started, 1)}
    if cached:
        write_atomic(cached, json.dumps(figures))
    return figures


def work_dir(aligned: Path, label: str) -> Path:
    """Where a measurement's outputs go (the original's beside the aligned model's)."""
    return aligned / "build_eval" / label


def _examples(aligned: Path, per_label: int = 2) -> list[dict]:
    """A few answers of the aligned model: `per_label` for each XSTest label (read from its outputs)."""
    outputs = work_dir(aligned, "aligned") / "outputs.jsonl"
    picked: dict[str, list] = {}
    if outputs.is_file():
        for line in outputs.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            suite = row.get("suite")
            if suite in ("xstest_safe", "xstest_unsafe") and len(picked.setdefault(suite, [])) < per_label:
                picked[suite].append({"prompt": row.get("prompt"), "response": row.get("response")})
    return [item for items in picked.values() for item in items]


def _markdown(report: dict) -> str:
    original, aligned = report["original"], report["aligned"]
    rows = [("AdvBench refusal", "advbench"), ("XSTest part A unsafe contrasts refused", "xstest_unsafe"),
            ("XSTest part A safe prompts refused (over-refusal)", "xstest_safe"),
            ("reference loss, held-out Alpaca", "alpaca_heldout"), ("reference loss, held-out Dolly", "dolly_heldout")]
    lines = ["| measure | SmolLM2-135M-Instruct | aligned by safetune |", "|---|---|---|"]
    lines += [f"| {label} | {original.get(key, float('nan')):.3f} | {aligned.get(key, float('nan')):.3f} |"
              for label, key in rows]
    timing = report.get("timing") or {}
    if timing:
        lines.append(f"\nbuild: {timing.get('build_s', 0) / 60:.1f} min on {timing.get('threads')} threads "
                     f"({timing.get('steps')} {timing.get('training', 'LoRA')} steps over {timing.get('rows')} rows)")
    return "\n".join(lines) + "\n"
