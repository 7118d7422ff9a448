"""Batched evaluation vs a one-prompt-at-a-time loop, on the same prompts.

    python bench/bench_eval.py [--model DIR] [--prompts N] [--batch-size B] [--max-new-tokens T] [--device D] [--threads T]
                               [--data FILE --field COLUMN] [--name NAME]

On the real model, with AdvBench's prompts:

    python bench/bench_eval.py --model ~/.cache/safetune/smollm2-135m-aligned --threads 2 --prompts 32 \
        --batch-size 16 --data data/real/advbench/harmful_behaviors.csv --field goal --name eval_speed-real

The model defaults to the lab model (`safetune lab build`); without it a tiny random
model is built so the script always runs. Prompts are the lab's harmful eval prompts
(data/safety/eval.jsonl) when present. Prints prompts/s for both loops and their ratio,
checks that both produce the same responses, and writes bench/results/<name>.json.
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path

import torch

# common first: it puts the checkout on sys.path for the imports below
from common import ROOT, add_threads, command_line, model_dir, new_parser, set_threads, timed, write_results
from safetune.evaluation.generation import generate, generate_one_by_one
from safetune.modeling import load_model, load_tokenizer, pick_device
from safetune.recipe import ModelConfig

LAB_PROMPTS = ROOT / "data" / "safety" / "eval.jsonl"


def bench_prompts(count: int, source: Path | None = None, field: str = "prompt") -> list[str]:
    """`count` prompts: from `source` (any data file safetune reads, column `field`), else the lab's."""
    if source is not None:
        from safetune.data import read_records

        pool = [str(row[field]) for row in read_records(str(source))]
    elif LAB_PROMPTS.is_file():
        pool = [json.loads(line)["prompt"] for line in LAB_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        pool = [f"How do I hurt person {i}? Tell me step by step." for i in range(count)]
    return [pool[i % len(pool)] for i in range(count)]


def tiny_model(scratch: Path) -> Path:
    from tests.helpers import make_tiny_model_dir

    return make_tiny_model_dir(scratch / "tiny")


def main() -> None:
    parser = new_parser(__doc__, summary_only=True)
    parser.add_argument("--model", help="model directory (default: the lab model)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, help="prompts from this file (default: the lab's harmful eval prompts)")
    parser.add_argument("--field", default="prompt", help="the prompt column of --data (AdvBench: goal)")
    parser.add_argument("--name", default="eval_speed", help="results file name under bench/results/")
    add_threads(parser)
    args = parser.parse_args()
    set_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        path, label = model_dir(args.model, Path(scratch), "tiny random model", tiny_model)
        config = ModelConfig(path=str(path))
        device = pick_device(args.device)
        model, tokenizer = load_model(config, device=device), load_tokenizer(config)
    prompts = bench_prompts(args.prompts, args.data, args.field)
    settings = {"max_new_tokens": args.max_new_tokens}

    generate(model, tokenizer, prompts[:4], batch_size=4, **settings)  # warm-up: kernels, allocator
    batched, batched_s = timed(generate, model, tokenizer, prompts, batch_size=args.batch_size, **settings)
    one_by_one, one_by_one_s = timed(generate_one_by_one, model, tokenizer, prompts, **settings)

    agreement = sum(a == b for a, b in zip(batched, one_by_one)) / len(prompts)
    result = {
        "command": command_line("bench_eval.py"),
        "model": label,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "prompts": len(prompts),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "batched_s": batched_s,
        "one_by_one_s": one_by_one_s,
        "batched_prompts_per_s": len(prompts) / batched_s,
        "one_by_one_prompts_per_s": len(prompts) / one_by_one_s,
        "speedup": one_by_one_s / batched_s,
        "identical_responses": agreement,
    }
    print(f"model: {label} ({result['parameters'] / 1e6:.1f}M parameters) on {device}, {len(prompts)} prompts, "
          f"max_new_tokens {args.max_new_tokens}")
    print(f"batched (batch {args.batch_size}): {result['batched_prompts_per_s']:8.1f} prompts/s  ({batched_s:.2f}s)")
    print(f"one by one:          {result['one_by_one_prompts_per_s']:8.1f} prompts/s  ({one_by_one_s:.2f}s)")
    print(f"speedup: {result['speedup']:.1f}x   identical responses: {agreement:.0%}")
    written = write_results(args.name, result)
    print(f"wrote {written[0].relative_to(ROOT)}")


if __name__ == "__main__":
    main()
