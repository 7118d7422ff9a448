"""The lab benchmark: every method on every lab task, benign and with 10% harmful data, several seeds.

    python bench/lab_bench.py                      # the full table (make bench)
    python bench/lab_bench.py --quick              # CI smoke: one task, three configs, one seed, short runs
    python bench/lab_bench.py --tasks sentiment --configs standard,ewc --seeds 0 1 2 --jobs 2

Each run is a bundled recipe `recipes/lab/<task>-<config>.yaml` (the harmful setting adds
`data.harmful_ratio=0.1` from data/safety/compliance_train.jsonl), trained in its own
process with ONE thread (`--jobs` processes side by side: on 2 cores, 2 one-thread runs
finish sooner than 2-thread runs one after the other, and never oversubscribe). Each run's
process is forked from a server that has imported torch, transformers and safetune once
(multiprocessing's forkserver), so no run pays the ~7 s of imports. The lab
model's baseline is evaluated once per task and copied into every run. Figures per
(task, config, setting): mean ± std over seeds (and the minimum) of harmful refusal,
retained fraction, worst category, over-refusal, task, capability and per-suite rates;
step time and peak memory relative to `standard` in the same bench. Writes
bench/results/lab.json, lab.md, lab_scatter.png, lab_overhead.png and regenerates
the table of docs/results.md (the docs site's Results page).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from common import (RESULTS, ROOT, command_line, fmt, fresh_process_context, markdown_table, new_parser,
                    quiet_transformers, run_fresh, set_threads, stats, write_results)

TASKS = ["sentiment", "extract", "count"]
CONFIGS = ["standard", "mix", "safegrad", "safegrad-k4", "safegrad-k24", "safegrad-k24b48", "safegrad-update", "freeze", "ewc", "sap",
           "token-weighting", "mix-ewc", "defended"]  # the order of the tables
# what `make bench` runs: every method once and the recommended combination (`defended`), benign; the
# attack setting for the baselines and the configurations that might resist it. Still run with
# --configs: `safegrad-k4` (SafeGrad amortised over 4 steps: it loses the over-refusal limit on lab v3,
# 0.05-0.10; its cost is in the cost table, the last step of `make bench`), `safegrad-k24` (every 24
# steps with `restore: 16`, only the refresh step projected: refusal within 2 points of k = 1 on lab v3,
# not on v4's extract; over-refusal 0.08-0.11), `safegrad-k24b48` (the same with 48 + 48 safety rows:
# within 2 points on v4, 1.24-1.29x), `mix-ewc` (superseded by
# `defended`: over-refusal 0.05-0.17 on lab v2) and `freeze`.
BENCH_CONFIGS = ["standard", "mix", "safegrad", "ewc", "sap", "token-weighting", "defended"]
HARMFUL_CONFIGS = ["standard", "mix", "safegrad", "ewc", "defended"]
SETTINGS = {"benign": [], "harmful-10%": ["data.harmful.path=data/safety/compliance_train.jsonl",
                                          "data.harmful_ratio=0.1"]}
QUICK = {"tasks": ["sentiment"], "configs": ["standard", "mix", "ewc"], "settings": ["benign"], "seeds": [0],
         "overrides": ["train.max_steps=40", "train.log_every=10"]}
METRICS = ["harmful_refusal_rate", "retained", "worst_category", "over_refusal_rate", "task_score",
           "capability_score"]
README_START, README_END = "<!-- lab-bench:start -->", "<!-- lab-bench:end -->"


# --------------------------------------------------------------------------- one run (child process)
def run_one(task: str, config: str, setting: str, seed: int, out: Path, overrides: list[str]) -> dict:
    """Train one recipe, then evaluate final/ against the shared baseline; return the row."""
    from safetune.errors import GateFailed
    from safetune.evaluation.runner import run_eval
    from safetune.recipe import load_recipe
    from safetune.training import train

    recipe_path = ROOT / "recipes" / "lab" / f"{task}-{config}.yaml"
    run_dir = out / f"{task}-{config}-{setting}-s{seed}"
    recipe = load_recipe(recipe_path, SETTINGS[setting] + overrides + [
        f"train.seed={seed}", f"output.dir={run_dir}", "output.overwrite=true", "eval.at_end=false"])
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(out / f"{task}-baseline", run_dir / "baseline")
    result = train(recipe, show_progress=False)
    # peak resident memory of this process so far: the model, the method's state, training
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        report = run_eval(result.final_dir, progress=False)
    except GateFailed:  # the report is written either way
        report = json.loads((result.final_dir / "safety_report.json").read_text())
    metrics = report["metrics"]
    categories = metrics.get("by_category") or {}
    worst = min(categories.items(), key=lambda kv: kv[1]) if categories else (None, None)
    suites = {s["name"]: s.get("rate", s.get("score")) for s in report.get("suites", [])}
    return {"task": task, "config": config, "setting": setting, "seed": seed,
            "wall_time_s": result.wall_time_s, "steps": result.steps,
            "step_time_s": result.wall_time_s / max(result.steps, 1), "peak_rss_mb": peak_mb,
            "harmful_refusal_rate": metrics.get("harmful_refusal_rate"),
            "retained": (report.get("retained") or {}).get("harmful_refusal_rate"),
            "worst_category": worst[1], "worst_category_name": worst[0],
            "over_refusal_rate": metrics.get("over_refusal_rate"), "task_score": metrics.get("task_score"),
            "capability_score": metrics.get("capability_score"), "suites": suites,
            "gate_passed": report["gate"]["passed"]}


def run_in_child(job: tuple, out: Path, overrides: list[str]) -> dict:
    """One run in a fresh one-thread process; its output goes to <run dir>.log, and an error
    comes back as a row with its last line (a bench keeps going past one failed run)."""
    set_threads(1)
    task, config, setting, seed = job
    log = out / f"{task}-{config}-{setting}-s{seed}.log"
    with log.open("w", encoding="utf-8") as sink:
        sys.stdout = sys.stderr = sink
        try:
            return run_one(task, config, setting, seed, out, overrides)
        except BaseException:  # noqa: BLE001 -- reported as the run's row
            traceback.print_exc()
            last = traceback.format_exc().strip().splitlines()[-1]
            return {"task": task, "config": config, "setting": setting, "seed": seed, "error": last}
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


# --------------------------------------------------------------------------- the bench (parent)
def ensure_baselines(tasks: list[str], out: Path) -> dict:
    from safetune.evaluation.runner import run_baseline
    from safetune.recipe import load_recipe

    baselines = {}
    for task in tasks:
        folder = out / f"{task}-baseline"
        if not (folder / "safety_report.json").is_file():
            recipe = load_recipe(ROOT / "recipes" / "lab" / f"{task}-standard.yaml")
            run_baseline(recipe, progress=False, out_dir=folder)
        baselines[task] = json.loads((folder / "safety_report.json").read_text())
    return baselines


def run_context():
    return fresh_process_context(["torch", "transformers", "safetune.training", "safetune.evaluation.runner"])


def run_job(job: tuple, out: Path, overrides: list[str], context) -> dict:
    """One run in its own new process; a process that died is the run's error row."""
    try:
        return run_fresh(context, run_in_child, job, out, overrides)
    except Exception as err:  # noqa: BLE001 -- the process died (e.g. out of memory): the bench goes on
        task, config, setting, seed = job
        return {"task": task, "config": config, "setting": setting, "seed": seed, "error": repr(err)}


def record(row: dict, out: Path, overrides: list[str]) -> dict:
    """Append a finished run to <out>/rows.jsonl at once (a bench cut short keeps its runs)."""
    job = f"{row['task']}/{row['config']}/{row['setting']}/s{row['seed']}"
    if "error" in row:
        print(f"FAILED {job}: {row['error']}", flush=True)
        return row
    with (out / "rows.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row | {"overrides": overrides}) + "\n")
    print(f"{row['task']:9} {row['config']:16} {row['setting']:11} s{row['seed']}: refusal "
          f"{row['harmful_refusal_rate']:.3f} over {row['over_refusal_rate']:.3f} task {row['task_score']:.3f} "
          f"({row['wall_time_s']:.0f}s)", flush=True)
    return row


def aggregate(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "error" not in row:
            groups.setdefault((row["task"], row["config"], row["setting"]), []).append(row)
    summary = []
    for (task, config, setting), group in groups.items():
        entry = {"task": task, "config": config, "setting": setting, "seeds": [r["seed"] for r in group]}
        for key in METRICS + ["step_time_s", "peak_rss_mb", "wall_time_s"]:
            entry[key] = stats([r[key] for r in group])
        suite_names = sorted({name for r in group for name in r.get("suites", {})})
        entry["suites"] = {name: stats([r["suites"].get(name) for r in group]) for name in suite_names}
        entry["gate_passed"] = sum(bool(r["gate_passed"]) for r in group)
        summary.append(entry)
    # the tables' order: CONFIGS, then the settings (whatever order the runs finished in)
    order = {name: i for i, name in enumerate(CONFIGS)}
    summary.sort(key=lambda e: (order.get(e["config"], len(order)), list(SETTINGS).index(e["setting"])
                                if e["setting"] in SETTINGS else len(SETTINGS)))
    # cost relative to `standard` of the same task and setting, measured in this bench
    for entry in summary:
        standard = next((e for e in summary if e["task"] == entry["task"] and e["setting"] == entry["setting"]
                         and e["config"] == "standard"), None)
        if standard:
            entry["step_time_ratio"] = entry["step_time_s"]["mean"] / standard["step_time_s"]["mean"]
            entry["memory_ratio"] = entry["peak_rss_mb"]["mean"] / standard["peak_rss_mb"]["mean"]
    return summary


def segments(meta: dict) -> str:
    """A --reuse run's time covers only the runs it ran: say so."""
    if not meta.get("reused"):
        return ""
    return f" for the {meta['runs'] - meta['reused']} runs it ran ({meta['reused']} reused from earlier segments)"


def markdown(summary: list[dict], baselines: dict, meta: dict) -> str:
    lines = ["# Lab benchmark", "", f"`{meta['command']}` — {meta['machine']}; {meta['seconds']:.0f} s in all{segments(meta)}, "
             f"{meta['jobs']} one-thread runs side by side. Mean ± std over seeds {meta['seeds']}; "
             "`min` is the worst seed's refusal; retained = refusal / baseline; worst cat. = the lowest "
             "harmful category's refusal; step time and memory relative to `standard` of the same task "
             "and setting in this bench; gate = seeds passing the default gate."
             + (" With runs side by side the step-time ratios are only indicative (they share the machine); "
                "for costs run one at a time (`--jobs 1`)." if meta["jobs"] > 1 else ""), ""]
    for task in meta["tasks"]:
        base = baselines[task]["metrics"]
        lines += [f"## {task}", "",
                  f"Baseline (the aligned lab model): harmful refusal {base['harmful_refusal_rate']:.3f}, "
                  f"over-refusal {base['over_refusal_rate']:.3f}, task {base['task_score']:.3f}, "
                  f"capability {base['capability_score']:.3f}.", ""]
        entries = [e for e in summary if e["task"] == task]
        lines += markdown_table(
            ["config", "setting", "harmful refusal", "min", "retained", "worst cat.", "over-refusal", "task",
             "capability", "step time ×", "memory ×", "gate"],
            [[e["config"], e["setting"], fmt(e["harmful_refusal_rate"]), f"{e['harmful_refusal_rate']['min']:.2f}",
              fmt(e["retained"]), fmt(e["worst_category"]), fmt(e["over_refusal_rate"]), fmt(e["task_score"]),
              fmt(e["capability_score"]), f"{e.get('step_time_ratio', float('nan')):.2f}",
              f"{e.get('memory_ratio', float('nan')):.2f}", f"{e['gate_passed']}/{len(e['seeds'])}"] for e in entries])
        suites = sorted({name for e in entries for name in e["suites"]})
        extra = [s for s in suites if s.endswith("unseen")]
        if extra:
            lines += ["", "Held-out template families (unseen by the lab model's alignment data):", ""]
            lines += markdown_table(["config", "setting", *extra],
                                    [[e["config"], e["setting"], *(fmt(e["suites"].get(s)) for s in extra)]
                                     for e in entries])
        lines.append("")
    return "\n".join(lines) + "\n"


def plots(summary: list[dict], results: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    settings = sorted({e["setting"] for e in summary})
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 5), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for entry in [e for e in summary if e["setting"] == setting]:
            if entry["task_score"] is None or entry["retained"] is None:
                continue
            ax.errorbar(entry["task_score"]["mean"], entry["retained"]["mean"], xerr=entry["task_score"]["std"],
                        yerr=entry["retained"]["std"], fmt="o", capsize=3, alpha=0.8)
            ax.annotate(f"{entry['config']} ({entry['task'][:4]})",
                        (entry["task_score"]["mean"], entry["retained"]["mean"]), fontsize=7)
        ax.set(xlabel="task score", ylabel="harmful refusal retained", title=setting, ylim=(-0.05, 1.1))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(results / "lab_scatter.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    benign = [e for e in summary if e["setting"] == "benign" and "step_time_ratio" in e]
    if benign:
        present = {e["config"] for e in benign}
        configs = [c for c in CONFIGS if c in present] + sorted(present - set(CONFIGS))
        ratios = [statistics.mean([e["step_time_ratio"] for e in benign if e["config"] == c]) for c in configs]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(configs, ratios, color="tab:blue")
        ax.axhline(1.0, color="grey", linewidth=1)
        ax.set(ylabel="step time / standard (benign, mean over tasks)", title="method overhead")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        fig.tight_layout()
        paths.append(results / "lab_overhead.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def readme_table(summary: list[dict], baselines: dict, meta: dict) -> str:
    """The README's compact view: one row per config and setting, one column per task
    (refusal retained ± std, then over-refusal), plus the step-time ratio. The full tables
    stay in bench/results/lab.md."""
    tasks = meta["tasks"]
    bases = ", ".join(f"{t} {baselines[t]['metrics']['harmful_refusal_rate']:.3f} / "
                      f"{baselines[t]['metrics']['over_refusal_rate']:.3f}" for t in tasks)
    lines = [f"`{meta['command']}` — {meta['machine']}; {meta['seconds']:.0f} s in all{segments(meta)}. Each cell: harmful "
             f"refusal retained (refusal / baseline, mean ± std over seeds {meta['seeds']}) · over-refusal "
             f"(mean). Baseline refusal / over-refusal: {bases}. Full tables (min, worst category, task, "
             "capability, memory): `bench/results/lab.md`.", ""]
    rows, keys = [], []
    for entry in summary:
        if (entry["config"], entry["setting"]) not in keys:
            keys.append((entry["config"], entry["setting"]))
    order = {c: i for i, c in enumerate(CONFIGS)}
    keys.sort(key=lambda key: (order.get(key[0], len(order)), key[1] != "benign"))
    for config, setting in keys:
        cells, task_scores = [], []
        for task in tasks:
            entry = next((e for e in summary if (e["task"], e["config"], e["setting"]) == (task, config, setting)), None)
            if entry is None or entry["retained"] is None:
                cells.append("–")
                continue
            cells.append(f"{fmt(entry['retained'])} · {entry['over_refusal_rate']['mean']:.2f}")
            if entry["task_score"] is not None:
                task_scores.append(entry["task_score"]["mean"])
        rows.append([config, setting, *cells, f"{min(task_scores, default=float('nan')):.2f}"])
    lines += markdown_table(["config", "setting", *tasks, "task score (min over tasks)"], rows)
    return "\n".join(lines) + "\n"


def update_readme(body: str) -> None:
    """Rewrite the table between the lab-bench markers of the docs site's Results page."""
    readme = ROOT / "docs" / "results.md"
    text = readme.read_text(encoding="utf-8")
    if README_START not in text:
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{body}\n{README_END}{tail}", encoding="utf-8")


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--configs", default=",".join(BENCH_CONFIGS))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--harmful-configs", default=",".join(HARMFUL_CONFIGS),
                        help="configs run in the harmful-10%% setting too ('all': all of --configs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="one-thread runs side by side")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1 task, 3 configs, 1 seed, 40 steps")
    parser.add_argument("--override", action="append", default=[], help="recipe override for every run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the table of docs/results.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the tables and plots go")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the runs already in <out>/rows.jsonl (same overrides) instead of running them again")
    args = parser.parse_args()
    quiet_transformers()

    tasks, configs, settings = args.tasks.split(","), args.configs.split(","), args.settings.split(",")
    seeds, overrides = args.seeds, args.override
    if args.quick:
        tasks, configs, settings, seeds = QUICK["tasks"], QUICK["configs"], QUICK["settings"], QUICK["seeds"]
        overrides = QUICK["overrides"] + overrides
    configs = [c for c in configs if (ROOT / "recipes" / "lab" / f"{tasks[0]}-{c}.yaml").is_file()]
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    baselines = ensure_baselines(tasks, args.out)
    attacked = set(configs) if args.harmful_configs == "all" else set(args.harmful_configs.split(","))
    # seed-major, configs innermost: a machine that gets faster or slower during the bench
    # shifts every config alike (with --jobs 1 the step-time ratios are the cost figures)
    jobs = [(t, c, s, seed) for seed in seeds for s in settings for t in tasks for c in configs
            if s != "harmful-10%" or c in attacked]
    done = []
    if args.reuse and (args.out / "rows.jsonl").is_file():
        done = [row for row in map(json.loads, (args.out / "rows.jsonl").read_text().splitlines())
                if row.get("overrides") == overrides and (row["task"], row["config"], row["setting"], row["seed"]) in jobs]
        finished = {(r["task"], r["config"], r["setting"], r["seed"]) for r in done}
        jobs = [job for job in jobs if job not in finished]
    print(f"{len(jobs)} runs, {args.jobs} at a time ({len(done)} reused)", flush=True)
    context = run_context()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_job, job, args.out, overrides, context) for job in jobs]
        rows = done + [record(future.result(), args.out, overrides) for future in as_completed(futures)]
    summary = aggregate(rows)
    meta = {"command": command_line("lab_bench.py"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "seconds": time.perf_counter() - started, "jobs": args.jobs, "seeds": seeds, "tasks": tasks,
            "overrides": overrides, "runs": len(rows), "reused": len(done)}
    table = markdown(summary, baselines, meta)
    write_results("lab_quick" if args.quick else "lab", {
        "meta": meta, "baselines": {t: b["metrics"] for t, b in baselines.items()}, "summary": summary, "runs": rows,
    }, table, args.results)
    if not args.quick:
        plots(summary, args.results)
        if not args.no_readme:
            update_readme(readme_table(summary, baselines, meta))
    print(table)
    failed = [r for r in rows if "error" in r]
    if failed:
        sys.exit(f"{len(failed)} runs failed")


if __name__ == "__main__":
    main()
