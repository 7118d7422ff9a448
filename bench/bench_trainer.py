"""safetune's training loop vs transformers.Trainer, measured side by side in one run.

    python bench/bench_trainer.py [--device cpu|cuda] [--threads N] [--steps S] [--warmup W] [--repeats R]
                                  [--batch-size B] [--max-seq-len L] [--precision fp32|bf16] [--model DIR]
                                  [--lora R] [--data FILE]

On the real model (after `safetune real build`), LoRA and full fine-tuning on Alpaca rows:

    python bench/bench_trainer.py --model ~/.cache/safetune/smollm2-135m-aligned --threads 2 --batch-size 8 \
        --steps 6 --warmup 2 --repeats 2 --rows safetune transformers --lora 16 \
        --data data/real/splits/alpaca_finetune.jsonl --name trainer-real-lora

Both loops get the same model (the lab model, else a lab-shaped random Llama with a
tokenizer trained on the lab data), the same micro-batches in the same order (safetune's
BatchSchedule over the lab sentiment task; Trainer reads them through a sequential
sampler), the same optimizer (fused AdamW, cosine LR, gradient clipping at 1.0) and the
same precision; no evaluation, no checkpoints during the measured steps. Four rows:

    safetune            Trainer.fit() (the real loop), plain padded batches
    transformers        transformers.Trainer.train() on the same batches
    safetune+packing    data.packing: true (the same batch_size, now of packed sequences)
    transformers+packing  Trainer on the same packed batches (position_ids, no attention_mask)
    safetune+compile    train.compile: true (not run unless asked: `--rows safetune safetune+compile
                        --name trainer-compile`; raise --warmup past the compile steps)

Each run starts from freshly loaded weights; runs alternate in ABBA order (A B C D D C B A
...) so that a machine getting busier or quieter favours no row. tokens/s = the real
(non-padding) tokens of the steps after `--warmup` / their wall time; tokens per CPU
second (this process's CPU time) is printed next to it: with `--threads 1` on a shared
machine it is what the loop itself cost, whoever else was running. Prints the medians
and the ratios, checks that both loops ended at the same weights, and writes
bench/results/<name>.json and .md (`--name`, default trainer).
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# common first: it puts the checkout on sys.path for the imports below
from common import (ROOT, abba, add_threads, command_line, machine, markdown_table, model_dir,  # noqa: E402
                    new_parser, paired_ratios, quiet_transformers, set_threads, stamp, write_results)

TASK = ROOT / "data" / "tasks" / "sentiment" / "train.jsonl"
ROWS = ["safetune", "transformers", "safetune+packing", "transformers+packing"]
OPTIONAL_ROWS = ["safetune+compile"]


# --------------------------------------------------------------------------- set-up
def build_lab_shaped_model(out: Path) -> Path:
    """The lab model's architecture and tokenizer, untrained: the same cost per step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from safetune.lab.build import DATA_DIR, MODEL_SHAPE, training_texts
    from safetune.lab.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(training_texts(DATA_DIR), vocab_size=2048)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **MODEL_SHAPE)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def recipe_for(args, model: Path, out: Path, packing: bool, compile: bool = False):
    from safetune.recipe import validate_tree

    return validate_tree({
        "name": "bench-trainer",
        "model": {"path": str(model), "lora": lora_settings(args)},
        "data": {"train": {"path": str(args.data)}, "max_seq_len": args.max_seq_len, "packing": packing},
        "method": "standard",
        "train": {"max_steps": args.warmup + args.steps, "batch_size": args.batch_size, "learning_rate": 1e-3,
                  "lr_schedule": "cosine", "warmup_steps": 0, "weight_decay": 0.01, "max_grad_norm": 1.0,
                  "log_every": args.warmup + args.steps, "device": args.device, "precision": args.precision,
                  "seed": 0, "compile": compile},
        "eval": {"suites": []},
        "output": {"dir": str(out)},
    })


def lora_settings(args) -> dict | None:
    return {"r": args.lora, "alpha": 2 * args.lora, "target_modules": "all-linear"} if args.lora else None


# --------------------------------------------------------------------------- the two loops
def run_safetune(args, model: Path, scratch: Path, packing: bool, compile: bool = False) -> dict:
    """safetune's own loop (Trainer.fit); timestamps after the warm-up and the last step."""
    from safetune.training import Trainer

    trainer = Trainer(recipe_for(args, model, scratch / "safetune-run", packing, compile), show_progress=False)
    trainer.setup()
    stamps: dict[int, float] = {}
    tokens = [0]
    step_once = trainer.train_step

    def timed_step():
        out = step_once()
        step = trainer.state.step
        if step > args.warmup:
            tokens[0] += out["tokens"]
        if step in (args.warmup, args.warmup + args.steps):
            stamps[step] = stamp(args.device)
        return out

    trainer.train_step = timed_step  # fit() calls it once per step; nothing else changes
    trainer.fit()
    return {"tokens": tokens[0], **elapsed(stamps, args), "fused_adamw": trainer.optimizer.defaults["fused"],
            "weights": _weights(trainer.model)}


def run_transformers(args, model: Path, scratch: Path, packing: bool) -> dict:
    """transformers.Trainer on exactly the micro-batches safetune's schedule yields, in order."""
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from safetune.data import collate, prepare_packing
    from safetune.training import Trainer as SafetuneTrainer

    # the batches: safetune's data pipeline and schedule, built without training anything
    planner = SafetuneTrainer(recipe_for(args, model, scratch / "plan", packing), show_progress=False)
    planner.setup(dry_run=True)
    batches = [planner.schedule.batch(k) for k in range(args.warmup + args.steps)]
    pad = planner.tokenizer.pad_token_id
    del planner

    hf_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    if args.lora:  # the adapters safetune adds, initialised from the same seed
        from safetune.modeling import add_lora
        from safetune.recipe import ModelConfig

        torch.manual_seed(0)
        hf_model = add_lora(hf_model, ModelConfig(path=str(model), lora=lora_settings(args)))
    if packing:
        prepare_packing(hf_model)  # the same check; Trainer turns the KV cache off itself (args.use_cache)
    stamps: dict[int, float] = {}

    class Stamps(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                stamps[state.global_step] = stamp(args.device)

    training_args = TrainingArguments(
        output_dir=str(scratch / "hf-run"), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=1,  # one dataset item = one whole micro-batch
        learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.01,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, optim="adamw_torch_fused",
        bf16=args.precision == "bf16", use_cpu=args.device == "cpu",
        train_sampling_strategy="sequential", remove_unused_columns=False, dataloader_num_workers=0,
        eval_strategy="no", save_strategy="no", logging_steps=10**6, report_to="none", disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=hf_model, args=training_args, train_dataset=batches,
                      data_collator=lambda items: collate(items[0], pad), callbacks=[Stamps()])
    with contextlib.redirect_stdout(io.StringIO()):  # its end-of-training summary line
        trainer.train()
    tokens = sum(len(e.input_ids) for batch in batches[args.warmup :] for e in batch)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    return {"tokens": tokens, **elapsed(stamps, args), "fused_adamw": optimizer.defaults.get("fused"),
            "weights": _weights(hf_model)}


def elapsed(stamps: dict, args) -> dict[str, float]:
    """Wall seconds of the measured steps, and this process's CPU seconds: on a busy machine
    with one torch thread the CPU time is what the loop itself cost, whoever else runs."""
    (wall0, cpu0), (wall1, cpu1) = stamps[args.warmup], stamps[args.warmup + args.steps]
    return {"seconds": wall1 - wall0, "cpu_seconds": cpu1 - cpu0}


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().cpu().clone() for name, p in model.named_parameters()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in a)


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = new_parser(__doc__, summary_only=True)
    parser.add_argument("--model", help="model directory (default: the lab model)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    add_threads(parser)
    parser.add_argument("--steps", type=int, default=30, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the clock starts")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each row (ABBA order)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank on all linear layers (0: full fine-tuning)")
    parser.add_argument("--data", type=Path, default=TASK, help="training rows (default: the lab sentiment task)")
    parser.add_argument("--rows", nargs="+", choices=ROWS + OPTIONAL_ROWS, default=ROWS)
    parser.add_argument("--name", default="trainer", help="results file name under bench/results/")
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_transformers()

    runs = {row: [] for row in args.rows}
    last_weights: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        model, label = model_dir(args.model, scratch, "lab-shaped random Llama", build_lab_shaped_model)
        order = [row for rows in abba(args.rows, args.repeats) for row in rows]
        for number, row in enumerate(order, start=1):
            work = scratch / f"run-{number}"
            work.mkdir()
            runner = run_safetune if row.startswith("safetune") else run_transformers
            options = {"compile": True} if row.endswith("+compile") else {}
            result = runner(args, model, work, packing=row.endswith("+packing"), **options)
            last_weights[row] = result.pop("weights")
            result["tokens_per_s"] = result["tokens"] / result["seconds"]
            result["tokens_per_cpu_s"] = result["tokens"] / result["cpu_seconds"]
            runs[row].append(result)
            print(f"[{number}/{len(order)}] {row:21s} {result['tokens_per_s']:8.0f} tokens/s "
                  f"({result['tokens']} tokens in {result['seconds']:.2f}s; "
                  f"{result['tokens_per_cpu_s']:.0f} per CPU second)", flush=True)
        parameters = sum(p.numel() for p in next(iter(last_weights.values())).values())

    medians = {row: statistics.median(r["tokens_per_s"] for r in runs[row]) for row in args.rows}
    cpu_medians = {row: statistics.median(r["tokens_per_cpu_s"] for r in runs[row]) for row in args.rows}
    ratios, cpu_ratios, paired = {}, {}, {}
    for a, b in (("safetune", "transformers"), ("safetune+packing", "transformers+packing"),
                 ("safetune+packing", "transformers"), ("safetune+compile", "safetune")):
        if a in medians and b in medians:
            ratios[f"{a} / {b}"] = medians[a] / medians[b]
            cpu_ratios[f"{a} / {b}"] = cpu_medians[a] / cpu_medians[b]
            # run r of each row ran in the same ABBA block
            paired[f"{a} / {b}"] = statistics.median(paired_ratios(
                [x["tokens_per_s"] for x in runs[a]], [y["tokens_per_s"] for y in runs[b]]))
    # same batches, optimizer and schedule: both loops must end at the same weights
    agreement = {}
    for a, b in (("safetune", "transformers"), ("safetune+packing", "transformers+packing"),
                 ("safetune+compile", "safetune")):
        if a in last_weights and b in last_weights:
            agreement[f"{a} vs {b}"] = max_difference(last_weights[a], last_weights[b])
    result = {
        "command": command_line("bench_trainer.py"),
        "model": label, "parameters": parameters, "device": args.device, "precision": args.precision,
        **machine(), "transformers": __import__("transformers").__version__,
        "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "warmup_steps": args.warmup,
        "lora_rank": args.lora, "data": str(args.data),
        "measured_steps": args.steps, "repeats": args.repeats, "order": "ABBA",
        "median_tokens_per_s": medians, "ratios": ratios, "paired_ratios": paired,
        "median_tokens_per_cpu_s": cpu_medians, "cpu_time_ratios": cpu_ratios, "max_weight_difference": agreement,
        "runs": {row: [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in runs[row]]
                 for row in args.rows},
    }
    print(f"\nmodel: {label} ({parameters / 1e6:.1f}M parameters), {args.device}, {args.precision}, "
          f"{torch.get_num_threads()} threads, batch {args.batch_size}, {args.steps} steps after {args.warmup}, "
          f"{args.repeats} runs each")
    for row in args.rows:
        print(f"{row:21s} median {medians[row]:8.0f} tokens/s   {cpu_medians[row]:8.0f} tokens per CPU second")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x (median of per-block ratios {paired[name]:.2f}x; "
              f"per CPU second {cpu_ratios[name]:.2f}x)")
    for name, value in agreement.items():
        print(f"max |weight difference| {name}: {value:.1e}")
    written = write_results(args.name, result, markdown(result))
    print(f"wrote {written[0].relative_to(ROOT)} and {written[1].name}")


def markdown(result: dict) -> str:
    lines = [
        "# safetune loop vs transformers.Trainer",
        "",
        f"`{result['command']}` — {result['model']} ({result['parameters'] / 1e6:.1f}M parameters), "
        f"{'LoRA r' + str(result['lora_rank']) if result.get('lora_rank') else 'full fine-tuning'}, "
        f"{result['device']}, {result['precision']}, {result['torch_threads']} torch threads, "
        f"batch {result['batch_size']} x up to {result['max_seq_len']} tokens, {result['measured_steps']} steps "
        f"measured after {result['warmup_steps']}, {result['repeats']} runs per row in ABBA order; "
        f"torch {result['torch']}, transformers {result['transformers']}, load average at the end "
        f"{result['load_average_at_end'][0]:.1f} on {result['cpu_count']} CPUs.",
        "",
    ]
    lines += markdown_table(
        ["loop", "median tokens/s", "runs", "median tokens per CPU second"],
        [[row, f"{median:.0f}", ", ".join(f"{r['tokens_per_s']:.0f}" for r in result["runs"][row]),
          f"{result['median_tokens_per_cpu_s'][row]:.0f}"] for row, median in result["median_tokens_per_s"].items()],
        align="lrlr")
    lines += ["", *markdown_table(
        ["ratio", "of the medians", "median of per-block ratios", "per CPU second"],
        [[name, f"{value:.2f}x", f"{result['paired_ratios'][name]:.2f}x", f"{result['cpu_time_ratios'][name]:.2f}x"]
         for name, value in result["ratios"].items()], align="lrrr")]
    lines += ["", "Same batches, optimizer and schedule, so both loops end at the same weights up to rounding "
              "(max |difference| after the last run of each: "
              + ", ".join(f"{k}: {v:.1e}" for k, v in result["max_weight_difference"].items()) + ")."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
