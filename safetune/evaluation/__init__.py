"""Evaluation: suites, refusal detectors, batched generation, the safety report, compare.

    suites.py      read a benchmark file and map its columns
    generation.py  batched greedy generation (left padding, KV cache)
    refusal.py     refusal detectors: keywords, classifier judges, generative (guard-model) judges
    scoring.py     exact/contains/regex answer metrics, reference loss and perplexity
    report.py      metrics, gate, safety_report.json/.md
    runner.py      evaluate_model, run_baseline, run_eval, refusal_rate (what the CLI and trainer call)
    baseline_cache.py  the base model's evaluation, reused across runs (model fingerprint + eval settings)
    compare.py     runs side by side: table, Markdown, plots
    rundir.py      the run-directory files evaluation reads

Import from the submodules (`from safetune.evaluation.runner import run_eval`), so that
importing the package stays cheap.
"""
