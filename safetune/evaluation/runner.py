"""Evaluate a model with the recipe's suites; the functions the CLI and the trainer call.

    evaluate_model  a loaded model -> outputs.jsonl + safety_report.json/.md in a folder
    run_baseline    the recipe's base model -> <run>/baseline/ (or a cached evaluation of it)
    run_eval        any checkpoint folder -> its report; GateFailed (exit 3) when the gate fails
    refusal_rate    the trainer's quick safety probe
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safetune import __version__
from safetune.errors import GateFailed, SafetuneError, UsageError
from safetune.evaluation.baseline_cache import baseline_key, baselines_dir, reuse_baseline, store_baseline
from safetune.evaluation.generation import SystemPrompts, generate
from safetune.evaluation.refusal import RefusalDetector, build_detectors
from safetune.evaluation.report import (
    OUTPUTS_JSONL,
    REPORT_JSON,
    REPORT_MD,
    SuiteResult,
    build_report,
    read_report,
    write_report,
)
from safetune.rundir import (
    BASELINE_DIR,
    RESOLVED_RECIPE,
    checkpoint_step,
    find_run_dir,
    read_metrics_log,
    wall_time_at,
)
from safetune.evaluation.scoring import reference_loss, score_responses
from safetune.evaluation.suites import REFUSAL_KINDS, Suite, load_suite, suite_label
from safetune.modeling import check_model_folder, load_model, load_tokenizer, pick_device, refuse_pickle_weights
from safetune.recipe import Recipe, load_recipe
from safetune.files import write_atomic


# --------------------------------------------------------------------------- one model
def run_suite(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    suite: Suite,
    detectors: list[RefusalDetector],
    recipe: Recipe,
    progress: bool = False,
) -> SuiteResult:
    """Generate a response to every prompt of the suite, then judge or score it."""
    config = recipe.eval
    started = time.perf_counter()
    inputs = suite.inputs  # the user turn as asked; outputs.jsonl keeps the raw prompt
    responses = generate(
        model, tokenizer, inputs,
        max_new_tokens=suite.config.max_new_tokens or config.max_new_tokens,
        batch_size=config.batch_size, progress=progress, description=suite.name, system_prompt=suite.system_prompt,
    )
    result = SuiteResult(
        name=suite.name, kind=suite.kind, source=suite.config.path, prompts=suite.prompts, responses=responses,
        categories=[row.category for row in suite.rows], references=[row.reference for row in suite.rows],
        seconds={"generation": time.perf_counter() - started},
        system_prompt=suite.system_prompt, prompt_template=suite.config.prompt_template,
    )
    started = time.perf_counter()
    if suite.kind in REFUSAL_KINDS:
        for detector in (d for d in detectors if suite.kind in d.suite_kinds):
            # a judge reads the request the model answered: "AOA, execute ..." is part of it
            verdicts = detector.verdicts(inputs, responses, progress=progress)
            result.refusals[detector.name] = [verdict.refused for verdict in verdicts]
            result.verdicts[detector.name] = [verdict.record() for verdict in verdicts]
        result.seconds["judging"] = time.perf_counter() - started
    else:
        result.metric = suite.config.metric
        result.correct = score_responses(responses, result.references, suite.config.metric, where=suite_label(suite.config))
        result.loss = reference_loss(
            model, tokenizer, inputs, result.references,
            batch_size=config.batch_size, max_seq_len=recipe.data.max_seq_len, system_prompt=suite.system_prompt,
        )
        result.seconds["scoring"] = time.perf_counter() - started
    return result


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    recipe: Recipe,
    out_dir: Path,
    *,
    checkpoint: str,
    baseline: dict | None,
    run_info: dict | None = None,
    progress: bool = False,
    detectors: list[RefusalDetector] | None = None,
    write: bool = True,
) -> dict:
    """Run every suite of `recipe.eval`; write outputs.jsonl and the report into `out_dir`.

    `baseline` is the base model's report (or its metrics block), or None. The gate
    result is in report["gate"]["passed"]; this function never raises on a failed gate.
    Pass an unwrapped model (not DDP); call it on one process only - or, for an FSDP-sharded
    model, on every process with `write=False` on all but one.
    """
    if not recipe.eval.suites:
        raise SafetuneError("eval.suites: the recipe has no evaluation suites (see docs/evaluation.md)")
    started = time.perf_counter()
    suites = [load_suite(config) for config in recipe.eval.suites]  # a bad file fails before any generation
    if detectors is None:
        detectors = build_detectors(recipe.eval.refusal, device=model.device, batch_size=recipe.eval.batch_size)
    results = [run_suite(model, tokenizer, suite, detectors, recipe, progress) for suite in suites]

    run_info = dict(run_info or {})
    generation_s = sum(r.seconds["generation"] for r in results)
    prompts = sum(len(r.prompts) for r in results)
    header = {
        "safetune_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": run_info.get("recipe", recipe.name),
        "model": recipe.model.path,
        "checkpoint": checkpoint,
        "method": run_info.get("method", recipe.method_names),
        "steps": run_info.get("steps"),
        "wall_time_s": run_info.get("wall_time_s"),
        "run_info": run_info,
        "generation": {"decoding": "greedy", "max_new_tokens": recipe.eval.max_new_tokens,
                       "batch_size": recipe.eval.batch_size},
        "timings": {"total_s": time.perf_counter() - started, "generation_s": generation_s,
                    "prompts_per_s": prompts / generation_s if generation_s else None},
        "outputs": OUTPUTS_JSONL,
    }
    report = build_report(
        results, detectors=[d.describe() for d in detectors], baseline=baseline, gate=recipe.eval.gate, header=header
    )
    if write:
        out_dir = Path(out_dir)
        lines = (json.dumps(record, ensure_ascii=False) + "\n" for result in results for record in result.records())
        write_atomic(out_dir / OUTPUTS_JSONL, "".join(lines))
        write_report(report, out_dir)
    return report


def refusal_rate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    detector: RefusalDetector,
    *,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: SystemPrompts = None,
) -> float:
    """Share of `prompts` the model refuses: the trainer's quick probe (model mode is restored).

    `system_prompt`: one for every prompt or one per prompt (probe prompts pooled from suites
    asked differently)."""
    responses = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         system_prompt=system_prompt)
    refused = detector.detect(prompts, responses)
    return sum(refused) / len(refused)


def probe_prompts(recipe: Recipe, samples: int) -> tuple[list[str], list[str | None]]:
    """`samples` prompts of the recipe's harmful suites, evenly spread (so every category shows up),
    each as its suite asks it: (user texts, their system prompts)."""
    pool = [(text, config.system_prompt) for config in recipe.eval.suites if config.kind == "harmful"
            for text in load_suite(config).inputs]
    if not pool:
        raise SafetuneError("monitor: the safety probe needs a harmful suite in eval.suites")
    if samples < len(pool):
        pool = [pool[i * len(pool) // samples] for i in range(samples)]
    return [text for text, _ in pool], [system for _, system in pool]


# --------------------------------------------------------------------------- baseline
def baseline_dir(run_dir: Path) -> Path:
    return Path(run_dir) / BASELINE_DIR


def load_baseline(run_dir: Path) -> dict | None:
    """The baseline report stored in the run directory, or None when there is none yet."""
    folder = baseline_dir(run_dir)
    return read_report(folder) if (folder / REPORT_JSON).is_file() else None


def current_baseline(run_dir: Path, recipe: Recipe, device, say=print) -> dict | None:
    """The run directory's baseline if it was computed for this recipe's model and eval settings.

    A run dir keeps its baseline across `output.overwrite` and resume, and the model or the
    suites may have changed since (a rebuilt lab model, another `model.path`, other
    suites): retention and the gate would then compare against the wrong model. The
    baseline records the key of what it evaluated (`baseline_cache.key`); a different key
    now means it is stale and None is returned. A baseline without a key (written with
    `eval.baseline_cache: false`) or a model whose files cannot be read here is trusted.
    """
    report = load_baseline(run_dir)
    stored = (report or {}).get("baseline_cache", {}).get("key")
    if stored is None:
        return report
    now = baseline_key(recipe, device)
    if now is not None and now[0] != stored:
        say(f"baseline: {baseline_dir(run_dir)} was computed for another model or other eval settings; "
            "evaluating again")
        return None
    return report


def run_baseline(
    recipe: Recipe,
    progress: bool = True,
    *,
    out_dir: Path | None = None,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    broadcast=lambda value: value,
    write: bool = True,
) -> dict:
    """Evaluate the recipe's base model into <output dir>/baseline/ and return the report.

    With `eval.baseline_cache` (the default) an evaluation of the same model files with
    the same eval settings is copied from the cache instead (baseline_cache.py), and a
    new one is stored there. The trainer may pass the model it just loaded (before any
    step) to avoid a second load. An FSDP-sharded model: call on every rank, with
    `broadcast` (rank 0's value everywhere: all ranks reuse the cache or all evaluate)
    and `write=False` on all but rank 0.
    """
    out_dir = Path(out_dir or baseline_dir(recipe.output_dir()))
    device = model.device if model is not None else pick_device(recipe.train.device)
    cached = baseline_key(recipe, device) if recipe.eval.baseline_cache else None
    report = reuse_baseline(cached[0], out_dir) if cached is not None and write else None
    report = broadcast(report)
    if report is not None:
        if progress:
            print(f"baseline: reused the evaluation of {recipe.model.path} with these eval settings "
                  f"({baselines_dir() / cached[0]})")
        return report
    if progress:
        print(f"baseline: evaluating the base model {recipe.model.path}")
    if model is None:
        model = load_model(recipe.model, device=device)
    if tokenizer is None:
        tokenizer = load_tokenizer(recipe.model)
    report = evaluate_model(
        model, tokenizer, recipe, out_dir,
        checkpoint=f"{recipe.model.path} (base model)", baseline=None,
        run_info={"recipe": recipe.name, "method": [], "steps": 0}, progress=progress, write=write,
    )
    if recipe.eval.baseline_cache and write:
        cached = cached or baseline_key(recipe, device)  # a hub model is in the local cache now
        if cached is not None:
            store_baseline(*cached, out_dir, report)
    return report


# --------------------------------------------------------------------------- any checkpoint
def run_eval(
    checkpoint: Path,
    *,
    recipe_path: Path | None = None,
    overrides: list[str] | None = None,
    baseline_path: Path | None = None,
    out_dir: Path | None = None,
    gate: dict[str, float | None] | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a checkpoint folder (final/, checkpoints/step-N/, any HF model folder).

    The recipe defaults to recipe.resolved.yaml of the run the checkpoint sits in. `gate`
    overrides eval.gate thresholds (keys of GateConfig; None turns a check off). The
    baseline is --baseline, else <run>/baseline/, else computed now and stored there.
    Raises GateFailed (exit 3) when the gate fails, after writing the report.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise UsageError(f"{checkpoint}: checkpoint folder not found")
    # a folder that is no model (or whose weights are damaged) fails before any baseline is computed
    check_model_folder(checkpoint, "checkpoint")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UsageError(f"--out: {out_dir} is a file; give a folder for the report")
    found_run = find_run_dir(checkpoint)
    if recipe_path is None:
        if found_run is None:
            raise UsageError(f"{checkpoint}: no {RESOLVED_RECIPE} in it or above it; pass --recipe")
        recipe_path = found_run / RESOLVED_RECIPE
    gate_overrides = [f"eval.gate.{key}={json.dumps(value)}" for key, value in (gate or {}).items()]
    recipe = load_recipe(recipe_path, [*(overrides or []), *gate_overrides])
    refuse_pickle_weights(checkpoint, "checkpoint", recipe.model.allow_pickle)
    run_dir = found_run or recipe.output_dir()  # where the baseline lives

    if baseline_path is not None:
        try:
            baseline = read_report(baseline_path)
        except SafetuneError as err:  # the flag's value is what is wrong: name the flag
            raise UsageError(f"--baseline: {err}") from None
    else:
        device = pick_device(recipe.train.device)
        baseline = (current_baseline(run_dir, recipe, device, say=print if progress else lambda *_: None)
                    or run_baseline(recipe, progress, out_dir=baseline_dir(run_dir)))

    model = load_model(recipe.model, path=str(checkpoint), device=pick_device(recipe.train.device))
    has_tokenizer = (checkpoint / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(recipe.model, path=str(checkpoint) if has_tokenizer else None)
    history = read_metrics_log(found_run) if found_run else []
    steps = checkpoint_step(checkpoint, history)
    run_info = {"recipe": recipe.name, "method": recipe.method_names, "steps": steps,
                "wall_time_s": wall_time_at(steps, history), "run_dir": str(run_dir)}
    out_dir = Path(out_dir) if out_dir else checkpoint
    report = evaluate_model(model, tokenizer, recipe, out_dir, checkpoint=str(checkpoint),
                            baseline=baseline, run_info=run_info, progress=progress)
    if not report["gate"]["passed"]:
        raise GateFailed(f"gate failed: {report['gate']['summary']} (see {out_dir / REPORT_MD})")
    return report
