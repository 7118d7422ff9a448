"""What each safety method costs per optimizer step, relative to plain fine-tuning, in one process.

    python bench/bench_methods.py                        # the lab's sentiment recipes, one thread
    python bench/bench_methods.py --configs standard,safegrad,safegrad-k24 --rounds 4
    python bench/bench_methods.py --device cuda --method-override method.safety_micro_batch=48   # on a GPU
    python bench/bench_methods.py --recipes real --task alpaca --threads 2 --block 6 --rounds 2 \
        --configs standard,mix,safegrad,safegrad-k6,ewc,token-weighting,freeze,sap,defended@harmful --name methods-real

Every configuration is a lab recipe (`recipes/lab/<task>-<config>.yaml`), on benign task
data or, written `<config>@harmful-10%`, on the task data with 10 % harmful rows (the lab
bench's settings), and with `+key=value` overrides of its own if any (so two settings of one
recipe are timed side by side: `safegrad-k24b48,safegrad-k24b48+method.stale_projection=true`);
each gets its own Trainer, set up once (model, data, the method's own set-up such as EWC's Fisher or the data
audit: not timed). Then blocks of `--block` optimizer steps run config after config, for
`--rounds` rounds, the order reversed every other round (ABBA...), after one warm-up block
each. A config's figure is the median over rounds of its block time divided by the block
time of `standard` on the same data in the same round: a machine that gets busier between rounds slows both sides of
a ratio alike. This is steadier than timing whole runs in separate processes (the lab
bench's step-time column), where the same recipe's runs differ by 10-20 % on this machine.

`--block` should be a multiple of every `safety_every` / `every` in the recipes (48 covers
the lab's 1, 2, 4, 16 and 24), so each block holds the same share of amortised passes. The
step is `Trainer.train_step` (forward, backward, the methods' hooks, the optimizer); the
safety monitor and checkpoint writing are not part of it. On a GPU (`--device cuda`) each block
ends with a device synchronisation, so a block's time includes its queued kernels.
`--override key=value` applies to every config's recipe, `--method-override key=value` to the
compared configs only, not to the `standard` runs they are divided by (e.g. a method's setting
to A/B in two runs).
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path

from common import (ROOT, RESULTS, abba, add_threads, command_line, machine, markdown_table, new_parser,
                    paired_ratios, set_threads, standard_of, timing, write_results)

# `defended` is the configuration for training data that cannot be trusted: timed on such data
DEFAULT_CONFIGS = ["standard", "ewc", "mix", "safegrad-k24", "safegrad", "sap", "token-weighting",
                   "defended@harmful-10%"]


def parse_config(config: str) -> tuple[str, str, list[str]]:
    """`<recipe>[@<setting>][+key=value ...]` -> (recipe, setting, that config's own overrides)."""
    head, *overrides = config.split("+")
    name, _, setting = head.partition("@")
    return name, setting, overrides


def reference_of(config: str) -> str:
    """`standard` (`standard-full` for a full-fine-tuning recipe) on the same data: what a
    config's step time is divided by."""
    name, setting, _ = parse_config(config)
    return f"{standard_of(name)}@{setting}" if setting else standard_of(name)


def recipe_and_overrides(recipes: str, task: str, config: str) -> tuple[Path, list[str]]:
    """The recipe file behind a config, and the overrides its setting adds. Lab: `<task>-<config>`
    with the lab bench's setting as overrides; real: `<setting or task>-<config>`, the setting
    being part of the file name (recipes/real/harmful-defended.yaml)."""
    name, setting, own = parse_config(config)
    if recipes == "real":
        path = ROOT / "recipes" / "real" / f"{setting or task}-{name}.yaml"
        if not path.is_file():
            raise SystemExit(f"bench_methods: no recipe {path.relative_to(ROOT)} for '{config}'")
        return path, own
    from lab_bench import SETTINGS

    if setting and setting not in SETTINGS:
        raise SystemExit(f"bench_methods: unknown setting '{setting}' in '{config}' (known: {', '.join(SETTINGS)})")
    return ROOT / "recipes" / "lab" / f"{task}-{name}.yaml", SETTINGS[setting or "benign"] + own


def build_trainer(recipes: str, task: str, config: str, steps: int, scratch: Path, device: str = "cpu",
                  extra: list[str] | None = None):
    from safetune.recipe import load_recipe
    from safetune.training import Trainer

    path, overrides = recipe_and_overrides(recipes, task, config)
    overrides = overrides + [
        f"train.max_steps={steps}", f"train.log_every={steps}", "eval.at_end=false",
        f"output.dir={scratch / re.sub(r'[^A-Za-z0-9.-]+', '-', config)}", "output.overwrite=true",
        f"train.device={device}", *(extra or [])]
    trainer = Trainer(load_recipe(path, overrides), show_progress=False)
    trainer.setup()
    trainer.model.train()
    return trainer


def run_block(trainer, steps: int) -> tuple[float, float]:
    """Wall and CPU seconds for `steps` optimizer steps."""
    with timing(trainer.device) as clock:
        for _ in range(steps):
            trainer.train_step()
    return clock.wall, clock.cpu


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--recipes", choices=["lab", "real"], default="lab",
                        help="recipes/lab (the lab model) or recipes/real (the real model, after `safetune real build`)")
    parser.add_argument("--task", default="sentiment", help="the task (lab) or setting (real, e.g. alpaca)")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="comma-separated, each <config> or <config>@<setting>; the standard runs they are "
                             "divided by are added")
    parser.add_argument("--block", type=int, default=48, help="optimizer steps per timed block")
    parser.add_argument("--rounds", type=int, default=8, help="timed blocks per config (ABBA order)")
    add_threads(parser, default=1, why="the lab bench runs one-thread runs")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the steps run")
    parser.add_argument("--override", action="append", default=[], help="recipe override for every config")
    parser.add_argument("--method-override", action="append", default=[],
                        help="recipe override for the compared configs, not their standard references")
    parser.add_argument("--name", default="methods", help="results file name (.json, .md)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args()
    set_threads(args.threads)
    wanted = [c for c in args.configs.split(",") if c]
    references = {reference_of(c) for c in wanted}
    configs = list(dict.fromkeys([reference_of(c) for c in wanted] + wanted))  # the references first
    steps = args.block * (args.rounds + 1)
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as scratch:
        trainers = {}
        for config in configs:
            started = time.perf_counter()
            extra = args.override + ([] if config in references else args.method_override)
            trainers[config] = build_trainer(args.recipes, args.task, config, steps, Path(scratch), args.device, extra)
            print(f"set up {config} in {time.perf_counter() - started:.1f}s", flush=True)
        for config in configs:  # warm-up block: first-call allocations, caches
            run_block(trainers[config], args.block)
        blocks: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
        for round_index, order in enumerate(abba(configs, args.rounds)):
            for config in order:
                blocks[config].append(run_block(trainers[config], args.block))
            print(f"round {round_index + 1}/{args.rounds}: "
                  + ", ".join(f"{c} {blocks[c][-1][0] / args.block * 1000:.0f}" for c in configs) + " ms/step",
                  flush=True)

    rows = {}
    for config in configs:
        (walls, cpus), (standard_walls, standard_cpus) = zip(*blocks[config]), zip(*blocks[reference_of(config)])
        ratios = paired_ratios(walls, standard_walls)
        rows[config] = {
            "relative_to": reference_of(config),
            "ms_per_step": statistics.median(walls) / args.block * 1000,
            "ratio": statistics.median(ratios),
            "cpu_ratio": statistics.median(paired_ratios(cpus, standard_cpus)),
            "ratio_range": [min(ratios), max(ratios)],
            "blocks_s": [round(wall, 4) for wall in walls],
        }
    result = {
        "command": command_line("bench_methods.py"),
        "recipes": args.recipes, "task": args.task, "block": args.block, "rounds": args.rounds, "order": "ABBA",
        "device": device_name(args.device), "overrides": args.override, "method_overrides": args.method_override,
        **machine(), "configs": rows,
    }
    write_results(args.name, result, markdown(result), args.results)
    print(markdown(result))


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def markdown(result: dict) -> str:
    lines = ["# Step time of each method relative to `standard`", "",
             f"`{result['command']}` — {result['platform']}, {result['cpu_count']} cores, "
             f"device {result.get('device', 'cpu')}, "
             f"{result['torch_threads']} torch thread(s), torch {result['torch']}. "
             + (f"Real-model setting `{result['task']}` (recipes/real), " if result.get("recipes") == "real"
                else f"Lab task `{result['task']}`, ") +
             f"blocks of {result['block']} optimizer steps, {result['rounds']} rounds in ABBA order after a "
             "warm-up block; ratio = median over rounds of (the config's block time / the block time of "
             "`standard` on the same data in the same round); `@harmful-10%`: task data with 10 % harmful rows.", ""]
    lines += markdown_table(
        ["config", "ms / step", "step time × standard (same data)", "range over rounds", "CPU time ×"],
        [[config, f"{row['ms_per_step']:.0f}", f"{row['ratio']:.2f}", "{:.2f}–{:.2f}".format(*row["ratio_range"]),
          f"{row['cpu_ratio']:.2f}"] for config, row in result["configs"].items()], align="lrrlr")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
