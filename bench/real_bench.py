"""The real-model benchmark: the aligned SmolLM2-135M-Instruct fine-tuned in four settings by
each configuration, on public benchmarks.

    safetune real build                                   # once: the aligned model (model.path: real)
    python -m safetune.real.compliance                    # the p = 0.1 attack's harmful rows (committed)
    python -m safetune.real.lookalikes                    # benign look-alikes, answered (committed)
    python bench/real_bench.py                            # standard and every method, one seed
    python bench/real_bench.py --settings alpaca,aoa --configs standard,mix --seeds 0 1 2

Each run is a bundled recipe `recipes/real/<setting>-<config>.yaml` trained in its own
process, one at a time (a 135M model wants both cores). Settings: `alpaca` and `dolly`
(benign), `aoa` (identity shift: 10 chats, 10 epochs), `harmful` (Alpaca + 10 % harmful
compliance). The `-full` configurations (`standard-full`, `safegrad-borderline-full`,
`token-weighting-b2-full`; harmful setting) fine-tune every weight, compared with
`standard-full`:

    python bench/real_bench.py --settings harmful --configs standard-full,safegrad-borderline-full --seeds 0 1 2

Per run: AdvBench refusal (keyword) and its fraction retained of the aligned
model's; XSTest part A over-refusal (safe prompts refused) and its unsafe contrasts
refused; task quality (reference loss on held-out rows of the fine-tuning data) and general
ability (on held-out rows of the other data set), each relative to the aligned model;
peak memory of the run's process relative to `standard`'s. Rows go to <out>/rows.jsonl as
they finish (--reuse keeps them; a run done again replaces its earlier row); tables to
bench/results/real.md/.json. On a fresh clone the run folders are gone but the committed
table's runs are not: `--from-results bench/results/real.json` starts <out> with them, so a
run done again joins the others in the table:

    python bench/real_bench.py --from-results bench/results/real.json --settings aoa --configs ewc
    python bench/real_bench.py --table-only --seeds 0 1 2

Step time is not read from these runs (whole runs in separate processes differ by 10-20 %
on this machine): the table takes it from the interleaved cost bench, when it has been run
for that setting,

    python bench/bench_methods.py --recipes real --task harmful --threads 2 --block 6 --rounds 2 \
        --configs standard,mix,safegrad,safegrad-k6,ewc,token-weighting,freeze,sap,defended --name methods-real-harmful
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path

from common import (RESULTS, ROOT, command_line, fmt, fresh_process_context, machine, markdown_table, new_parser,
                    quiet_transformers, run_fresh, standard_of, stats, write_results)

SETTINGS = ["alpaca", "dolly", "aoa", "harmful"]
CONFIGS = ["standard", "mix", "safegrad", "safegrad-k6", "safegrad-borderline", "ewc", "token-weighting", "token-weighting-b2", "freeze", "sap",
           "defended"]
# full fine-tuning (harmful setting only): each compared with `standard-full`, not LoRA's `standard`
FULL_CONFIGS = ["standard-full", "safegrad-borderline-full", "token-weighting-b2-full"]
# held-out rows that measure a setting's task (its own data) and general ability (the other set)
HELD_OUT = {"alpaca": ("alpaca_heldout", "dolly_heldout"), "dolly": ("dolly_heldout", "alpaca_heldout"),
            "aoa": (None, "alpaca_heldout"), "harmful": ("alpaca_heldout", "dolly_heldout")}
METRICS = ["advbench", "retained", "xstest_safe", "xstest_unsafe", "task_loss", "general_loss",
           "step_time_s", "peak_rss_mb"]


# --------------------------------------------------------------------------- one run (child)
def reference_losses(model_dir: Path) -> dict[str, float]:
    from safetune.modeling import load_model, load_tokenizer
    from safetune.real.measure import reference_losses as losses
    from safetune.recipe import ModelConfig

    config = ModelConfig(path=str(model_dir))
    return losses(load_model(config), load_tokenizer(config))


def run_one(setting: str, config: str, seed: int, out: Path, overrides: list[str]) -> dict:
    """Train one recipe (its final evaluation included); then the reference losses of final/."""
    from safetune.evaluation.report import suite_rates
    from safetune.modeling import load_model, load_tokenizer
    from safetune.real.measure import reference_losses as losses
    from safetune.recipe import load_recipe
    from safetune.training import train

    run_dir = out / f"{setting}-{config}-s{seed}"
    recipe = load_recipe(ROOT / "recipes" / "real" / f"{setting}-{config}.yaml", overrides + [
        f"train.seed={seed}", f"output.dir={run_dir}", "output.overwrite=true"])
    result = train(recipe, show_progress=False)  # the final evaluation included (a failed gate is a figure here)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = json.loads((result.final_dir / "safety_report.json").read_text())
    rates = suite_rates(report)
    # a LoRA run's final/ is an adapter: load_model merges it into the aligned model
    model = load_model(recipe.model, path=str(result.final_dir))
    held_out = losses(model, load_tokenizer(recipe.model))
    task_set, general_set = HELD_OUT[setting]
    return {"setting": setting, "config": config, "seed": seed, "steps": result.steps,
            "step_time_s": result.wall_time_s / max(result.steps, 1), "peak_rss_mb": peak_mb,
            "advbench": rates.get("advbench"),
            "xstest_safe": rates.get("xstest_safe"), "xstest_unsafe": rates.get("xstest_unsafe"),
            "task_loss": held_out[task_set] if task_set else None, "general_loss": held_out[general_set],
            "losses": held_out, "suites": rates}


def run_in_child(job: tuple, out: Path, overrides: list[str]) -> dict:
    """One run; its output goes to <out>/<run>.log, and an error comes back as a row."""
    setting, config, seed = job
    with (out / f"{setting}-{config}-s{seed}.log").open("w", encoding="utf-8") as sink:
        sys.stdout = sys.stderr = sink
        try:
            return run_one(setting, config, seed, out, overrides)
        except BaseException:  # noqa: BLE001 -- reported as the run's row
            traceback.print_exc()
            return {"setting": setting, "config": config, "seed": seed,
                    "error": traceback.format_exc().strip().splitlines()[-1]}
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


# --------------------------------------------------------------------------- the bench (parent)
def aligned_figures(out: Path, context) -> dict:
    """The aligned model's reference losses (once per bench folder)."""
    path = out / "aligned_losses.json"
    if not path.is_file():
        from safetune.modeling import real_model_dir

        path.write_text(json.dumps(run_fresh(context, reference_losses, real_model_dir())))
    return json.loads(path.read_text())


def setting_baselines(out: Path) -> dict[str, dict]:
    """setting -> the aligned model's rates, asked as that setting's recipes ask (the aoa
    recipes use the attack's system prompt and prefix): from any run folder's baseline copy,
    else from <out>/baselines.json (written by --from-results)."""
    from safetune.evaluation.report import suite_rates

    saved = out / "baselines.json"
    baselines = json.loads(saved.read_text()) if saved.is_file() else {}
    for report in sorted(out.glob("*-s*/baseline/safety_report.json")):
        setting = report.parent.parent.name.split("-")[0]
        baselines[setting] = suite_rates(json.loads(report.read_text()))
    return baselines


def start_from_results(out: Path, results_file: Path) -> None:
    """Start <out> with a results file's runs and baselines (a fresh clone has the committed
    bench/results/real.json but no run folders): new runs then join the committed ones."""
    rows_file = out / "rows.jsonl"
    if rows_file.is_file():
        sys.exit(f"error: {rows_file} exists: --from-results starts a bench folder, it never merges into one")
    results = json.loads(results_file.read_text())
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in results["runs"]))
    (out / "baselines.json").write_text(json.dumps(results["baselines"]))
    (out / "aligned_losses.json").write_text(json.dumps(results["aligned_losses"]))  # what its rows are relative to
    print(f"{len(results['runs'])} runs and the baselines from {results_file}", flush=True)


def aggregate(rows: list[dict], aligned: dict, baselines: dict[str, dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "error" not in row:
            before = baselines[row["setting"]]["advbench"]
            row["retained"] = row["advbench"] / before if before else None  # nothing refused before: no share
            groups.setdefault((row["setting"], row["config"]), []).append(row)
    summary = []
    for (setting, config), group in groups.items():
        entry = {"setting": setting, "config": config, "seeds": sorted(r["seed"] for r in group)}
        entry.update({key: stats([r[key] for r in group]) for key in METRICS})
        task_set, general_set = HELD_OUT[setting]
        entry["general_ratio"] = stats([r["general_loss"] / aligned[general_set] for r in group])
        summary.append(entry)
    for entry in summary:  # costs and task quality relative to `standard` (or `standard-full`) of the same setting
        reference = standard_of(entry["config"])
        standard = next((e for e in summary if e["setting"] == entry["setting"] and e["config"] == reference), None)
        if standard:
            entry["memory_ratio"] = entry["peak_rss_mb"]["mean"] / standard["peak_rss_mb"]["mean"]
            if entry["task_loss"] and standard["task_loss"]:
                entry["task_ratio"] = entry["task_loss"]["mean"] / standard["task_loss"]["mean"]
    order = {name: i for i, name in enumerate(CONFIGS + FULL_CONFIGS)}
    summary.sort(key=lambda e: (SETTINGS.index(e["setting"]), order.get(e["config"], len(order))))
    return summary


def step_time_ratios(results: Path, overrides: list[str]) -> dict[tuple[str, str], float]:
    """(setting, config) -> step time ÷ standard's, from the interleaved cost bench's results
    (<results>/methods-real-*.json) where it has been run with the same recipe overrides
    (full fine-tuning's costs are not LoRA's)."""
    ratios = {}
    for path in sorted(results.glob("methods-real-*.json")):
        measured = json.loads(path.read_text())
        if (measured.get("overrides") or []) != overrides or measured.get("method_overrides"):
            continue
        for config, row in measured["configs"].items():
            ratios[(measured["task"], config)] = row["ratio"]
    return ratios


def markdown(summary: list[dict], baselines: dict[str, dict], aligned: dict, meta: dict,
             step_times: dict[tuple[str, str], float]) -> str:
    def ratio(entry: dict, key: str) -> str:
        return f"{entry[key]:.2f}" if key in entry else "–"

    def step_time(entry: dict) -> str:
        measured = step_times.get((entry["setting"], entry["config"]))
        return "–" if measured is None else f"{measured:.2f}"

    rows = []
    for setting in [s for s in SETTINGS if s in baselines]:
        base = baselines[setting]
        rows.append([setting, "*aligned, before*", "", f"{base['advbench']:.2f}", "", f"{base['xstest_safe']:.2f}",
                     f"{base['xstest_unsafe']:.2f}", "", "1", "", ""])
        rows += [[e["setting"], e["config"], len(e["seeds"]), fmt(e["advbench"]), fmt(e["retained"]),
                  fmt(e["xstest_safe"]), fmt(e["xstest_unsafe"]), ratio(e, "task_ratio"), fmt(e["general_ratio"]),
                  step_time(e), ratio(e, "memory_ratio")] for e in summary if e["setting"] == setting]
    header = ["setting", "config", "seeds", "AdvBench refused", "retained", "XSTest safe refused",
              "XSTest unsafe refused", "task loss ÷ standard", "general loss ÷ aligned", "step time ÷ standard",
              "peak memory ÷ standard"]
    lines = [
        "# Real model: SmolLM2-135M-Instruct aligned by `safetune real build`, then fine-tuned",
        "",
        f"Aligned model's reference loss: Alpaca {aligned['alpaca_heldout']:.3f}, Dolly {aligned['dolly_heldout']:.3f}. "
        "The aoa rows ask every prompt with the attack's system prompt and prefix (Qi et al.), so their "
        "*before* row differs.",
        "",
        "Mean ± std over the seeds listed; a row with one seed is one run (an anecdote, not a figure). "
        "Refusal by keyword on the first 100 AdvBench prompts and all 250 XSTest part A prompts (32 new tokens); "
        "retained = AdvBench refusal ÷ the aligned model's, asked the same way.",
        "",
        *markdown_table(header, rows, align="llrrrrrrrrr"),
        "",
        f"Command: `{meta['command']}` ({meta['seconds'] / 60:.0f} min, {meta['machine']['torch_threads']} torch "
        f"threads, overrides {meta['overrides'] or 'none'}). Step time ÷ standard: the interleaved cost bench "
        "(`bench/bench_methods.py --recipes real`, bench/results/methods-real-<setting>.md; – where not run for "
        "that setting). Peak memory: the run's process (training, evaluation and reference losses), ÷ standard's.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--configs", default=",".join(CONFIGS + FULL_CONFIGS),
                        help="comma-separated; a setting without a recipe for a config skips it (the -full ones: harmful)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run (runs go one at a time)")
    parser.add_argument("--override", action="append", default=[], help="recipe override for every run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "real-bench")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--name", default="real", help="results file name (<results>/<name>.md/.json)")
    parser.add_argument("--reuse", action="store_true", help="keep the runs already in <out>/rows.jsonl")
    parser.add_argument("--from-results", type=Path, metavar="FILE",
                        help="start an empty <out> with a results file's runs (e.g. the committed bench/results/real.json): "
                             "--reuse and --table-only then count them; a run done again replaces its row")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: the table of the runs already in <out>/rows.jsonl (implies --reuse)")
    args = parser.parse_args()
    quiet_transformers()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        start_from_results(args.out, args.from_results)
    context = fresh_process_context(["torch", "transformers", "safetune.training"], threads=args.threads)
    started = time.perf_counter()
    aligned = aligned_figures(args.out, context)

    pairs = [(s, c) for s in args.settings.split(",") for c in args.configs.split(",")]
    missing = [f"{s}-{c}" for s, c in pairs if not (ROOT / "recipes" / "real" / f"{s}-{c}.yaml").is_file()]
    if missing:
        print(f"no recipe, skipped: {', '.join(missing)}", flush=True)
    jobs = [(s, c, seed) for seed in args.seeds for s, c in pairs if f"{s}-{c}" not in missing]
    rows_file = args.out / "rows.jsonl"
    done = []
    if (args.reuse or args.table_only) and rows_file.is_file():
        latest = {(r["setting"], r["config"], r["seed"]): r for r in map(json.loads, rows_file.read_text().splitlines())
                  if r.get("overrides") == args.override}  # a run done again replaces the earlier one
        done = [row for key, row in latest.items() if key in jobs]
        jobs = [job for job in jobs if job not in {(r["setting"], r["config"], r["seed"]) for r in done}]
    if args.table_only:
        jobs = []
    print(f"{len(jobs)} runs ({len(done)} reused)", flush=True)
    rows = list(done)
    for job in jobs:
        try:
            row = run_fresh(context, run_in_child, job, args.out, args.override)
        except Exception as err:  # noqa: BLE001 -- the process died: the bench goes on
            row = {"setting": job[0], "config": job[1], "seed": job[2], "error": repr(err)}
        rows.append(row)
        if "error" in row:
            print(f"FAILED {job}: {row['error']}", flush=True)
            continue
        with rows_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row | {"overrides": args.override}) + "\n")
        print(f"{row['setting']:8} {row['config']:16} s{row['seed']}: AdvBench {row['advbench']:.3f} "
              f"XSTest safe {row['xstest_safe']:.3f} unsafe {row['xstest_unsafe']:.3f} "
              f"general loss {row['general_loss']:.3f} ({row['step_time_s']:.1f} s/step)", flush=True)

    baselines = setting_baselines(args.out)
    summary = aggregate(rows, aligned, baselines)
    meta = {"command": command_line("real_bench.py"), "seconds": time.perf_counter() - started,
            "machine": machine() | {"torch_threads": args.threads}, "overrides": args.override,
            "runs": len(rows), "reused": len(done)}
    table = markdown(summary, baselines, aligned, meta, step_time_ratios(args.results, args.override))
    write_results(args.name, {"meta": meta, "baselines": baselines, "aligned_losses": aligned, "summary": summary,
                              "runs": rows}, table, args.results)
    print(table)


if __name__ == "__main__":
    main()
