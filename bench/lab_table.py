"""The lab table: every safety method on one lab task, benign and with 10% harmful data.

    python bench/lab_table.py --task sentiment [--seeds 0 1 2] [--only standard,mix]

Each row is a bundled recipe `recipes/lab/<task>-<config>.yaml`; the harmful setting adds
`data.harmful_ratio=0.1` (compliance examples from data/safety/compliance_train.jsonl).
The baseline (the lab model before fine-tuning) is evaluated once and shared by every
run. Writes bench/results/lab_<task>.json and .md; runs go to runs/bench/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers.utils import logging as hf_logging  # noqa: E402

from safetune.evaluation.runner import run_baseline  # noqa: E402
from safetune.recipe import load_recipe  # noqa: E402
from safetune.training import train  # noqa: E402

CONFIGS = ["standard", "mix", "safegrad", "safegrad-k4", "freeze", "ewc", "freeze-safegrad", "mix-ewc"]
SETTINGS = {"benign": [], "harmful-10%": ["data.harmful.path=data/safety/compliance_train.jsonl",
                                          "data.harmful_ratio=0.1"]}
METRICS = ["harmful_refusal_rate", "over_refusal_rate", "task_score", "capability_score"]


def run_one(task: str, config: str, setting: str, seed: int, baseline_dir: Path, out_root: Path) -> dict:
    recipe_path = ROOT / "recipes" / "lab" / f"{task}-{config}.yaml"
    run_dir = out_root / f"{task}-{config}-{setting}-s{seed}"
    overrides = SETTINGS[setting] + [f"train.seed={seed}", f"output.dir={run_dir}", "output.overwrite=true"]
    recipe = load_recipe(recipe_path, overrides)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(baseline_dir, run_dir / "baseline")  # the same base model: evaluate it once
    result = train(recipe, show_progress=False)
    metrics = result.report["metrics"]
    return {"task": task, "config": config, "setting": setting, "seed": seed,
            "wall_time_s": result.wall_time_s, **{m: metrics.get(m) for m in METRICS},
            "retained_harmful": (result.report.get("retained") or {}).get("harmful_refusal_rate")}


def summarise(rows: list[dict], baseline: dict) -> list[str]:
    lines = ["| config | setting | harmful refusal | over-refusal | task | capability | wall time (s) | seeds |",
             "|---|---|---|---|---|---|---|---|",
             f"| aligned lab model (baseline) | – | {baseline['harmful_refusal_rate']:.3f} | "
             f"{baseline['over_refusal_rate']:.3f} | {baseline['task_score']:.3f} | "
             f"{baseline['capability_score']:.3f} | – | – |"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["config"], row["setting"]), []).append(row)
    for (config, setting), group in groups.items():
        def cell(key: str) -> str:
            values = [r[key] for r in group if r[key] is not None]
            if not values:
                return "–"
            mean = statistics.mean(values)
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{mean:.3f}{spread}" if key != "wall_time_s" else f"{mean:.0f}"
        lines.append(f"| {config} | {setting} | {cell('harmful_refusal_rate')} | {cell('over_refusal_rate')} | "
                     f"{cell('task_score')} | {cell('capability_score')} | {cell('wall_time_s')} | {len(group)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configs")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: benign,harmful-10%%")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()

    started = time.perf_counter()
    first = load_recipe(ROOT / "recipes" / "lab" / f"{args.task}-standard.yaml")
    baseline_dir = args.out / f"{args.task}-baseline"
    if not (baseline_dir / "safety_report.json").is_file():
        run_baseline(first, progress=False, out_dir=baseline_dir)
    baseline = json.loads((baseline_dir / "safety_report.json").read_text())["metrics"]

    rows = []
    for config in args.only.split(","):
        for setting in args.settings.split(","):
            for seed in args.seeds:
                row = run_one(args.task, config, setting, seed, baseline_dir, args.out)
                rows.append(row)
                print(json.dumps(row), flush=True)

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"lab_{args.task}.json").write_text(json.dumps({"baseline": baseline, "runs": rows}, indent=2))
    table = summarise(rows, baseline)
    header = [f"# Lab table: {args.task}", "",
              f"`python bench/lab_table.py --task {args.task} --seeds {' '.join(map(str, args.seeds))}` "
              f"({time.perf_counter() - started:.0f}s in all). Fractions of the held-out lab suites; "
              "wall time = fine-tuning incl. method setup, without evaluation.", ""]
    (results / f"lab_{args.task}.md").write_text("\n".join(header + table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
