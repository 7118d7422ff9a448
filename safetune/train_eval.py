"""The evaluation a training run does: the untouched model's safety before it trains, the
held-out task loss and the safety report after. The evaluation itself is `safetune.evaluation`'s;
this is the glue that calls it the way the trainer needs (on the right ranks, into the run dir).
"""

from __future__ import annotations

from pathlib import Path

import torch

from safetune.data import IGNORE_INDEX, Example, collate
from safetune.distributed import Distributed
from safetune.evaluation.generation import sharded_across


def mean_loss(model, examples: list[Example], tokenizer, device, batch_size: int = 16) -> float | None:
    """Mean per-token cross-entropy over `examples` (the held-out task split)."""
    if not examples:
        return None
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * n
            tokens += n
    model.train()
    return total / max(tokens, 1)


def ensure_baseline(recipe, run_dir: Path, model, tokenizer, show_progress: bool,
                    dist: Distributed | None = None) -> None:
    """Evaluate the untouched model into <run>/baseline/ unless `safetune baseline` already did.

    run_baseline copies a cached evaluation of the same model and eval settings instead
    when there is one (and says so). Called on the ranks that run model passes
    (`dist.mirrored()`): rank 0, or every rank under FSDP, where rank 0 decides and writes.
    """
    from safetune.evaluation.runner import baseline_dir, current_baseline, run_baseline

    dist = dist or Distributed()  # one process
    say = print if show_progress and dist.is_main else (lambda *_: None)
    if dist.agree(current_baseline(run_dir, recipe, model.device, say) is not None if dist.is_main else None):
        return
    run_baseline(recipe, show_progress and dist.is_main, out_dir=baseline_dir(run_dir), model=model,
                 tokenizer=tokenizer, broadcast=dist.agree, write=dist.is_main)
    model.train()


def final_evaluation(recipe, dist: Distributed, run_dir: Path, final_dir: Path, model, tokenizer, summary: dict,
                     show_progress: bool) -> dict | None:
    """`final_report` when the recipe asks for one (else None), called on every rank: under DDP each
    rank answers its share of the prompts (`sharded_across`), under FSDP every model pass needs
    every rank's shards (which the checkpoint first sent to rank 0). Rank 0 alone writes."""
    if not (recipe.eval.suites and recipe.eval.at_end):
        return None
    with sharded_across(dist):
        return final_report(recipe, run_dir, final_dir, model, tokenizer, summary, show_progress,
                            write=dist.is_main)


def final_report(recipe, run_dir: Path, final_dir: Path, model, tokenizer, summary: dict, show_progress: bool,
                 write: bool = True) -> dict:
    """The trained model's safety report in final/, compared with the baseline."""
    from safetune.evaluation.runner import evaluate_model, load_baseline

    run_info = {"method": recipe.method_names, "steps": summary["steps"], "wall_time_s": summary["wall_time_s"],
                "recipe": recipe.name, "methods": summary["methods"]}
    return evaluate_model(model, tokenizer, recipe, final_dir, checkpoint=str(final_dir),
                          baseline=load_baseline(run_dir), run_info=run_info, progress=show_progress, write=write)
