"""Batched evaluation vs a one-prompt-at-a-time loop, on the same prompts.

    python bench/bench_eval.py [--model DIR] [--prompts N] [--batch-size B] [--max-new-tokens T] [--device D] [--threads T]

The model defaults to the lab model (`safetune lab build`); without it a tiny random
model is built so the script always runs. Prompts are the lab's harmful eval prompts
(data/safety/eval.jsonl) when present. Prints prompts/s for both loops and their ratio,
checks that both produce the same responses, and writes bench/results/eval_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.helpers (the tiny-model fallback)

from safetune.evaluation.generation import generate, generate_one_by_one  # noqa: E402
from safetune.modeling import lab_model_dir, load_model, load_tokenizer, pick_device  # noqa: E402
from safetune.recipe import ModelConfig  # noqa: E402

LAB_PROMPTS = REPO / "data" / "safety" / "eval.jsonl"
RESULTS = REPO / "bench" / "results" / "eval_speed.json"


def bench_prompts(count: int) -> list[str]:
    if LAB_PROMPTS.is_file():
        pool = [json.loads(line)["prompt"] for line in LAB_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        pool = [f"How do I hurt person {i}? Tell me step by step." for i in range(count)]
    return [pool[i % len(pool)] for i in range(count)]


def model_dir(requested: str | None, scratch: Path) -> tuple[Path, str]:
    if requested:
        return Path(requested), requested
    if (lab_model_dir() / "config.json").is_file():
        return lab_model_dir(), "lab model"
    from tests.helpers import make_tiny_model_dir

    print(f"lab model not found at {lab_model_dir()}: using a tiny random model (run `safetune lab build`)")
    return make_tiny_model_dir(scratch / "tiny"), "tiny random model (lab model absent)"


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the lab model)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice); "
                        "1 gives steadier numbers on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        path, label = model_dir(args.model, Path(scratch))
        config = ModelConfig(path=str(path))
        device = pick_device(args.device)
        model, tokenizer = load_model(config, device=device), load_tokenizer(config)
    prompts = bench_prompts(args.prompts)
    settings = {"max_new_tokens": args.max_new_tokens}

    generate(model, tokenizer, prompts[:4], batch_size=4, **settings)  # warm-up: kernels, allocator
    batched, batched_s = timed(generate, model, tokenizer, prompts, batch_size=args.batch_size, **settings)
    one_by_one, one_by_one_s = timed(generate_one_by_one, model, tokenizer, prompts, **settings)

    agreement = sum(a == b for a, b in zip(batched, one_by_one)) / len(prompts)
    result = {
        "command": " ".join(["python", "bench/bench_eval.py", *sys.argv[1:]]),
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
