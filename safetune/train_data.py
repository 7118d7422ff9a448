"""The data a run trains on: the tokenised splits, the audit of data.train (run while the model
is still the aligned one), packing and the batch schedule. `Trainer.setup` calls
`load_training_data`, then `batch_schedule` on the rows the audit kept.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch

from safetune.audit import audit_training_data
from safetune.data import BatchSchedule, Example, TrainingData, build_training_data, pack_examples, prepare_packing
from safetune.distributed import Distributed
from safetune.recipe import Recipe


def load_training_data(recipe: Recipe, dist: Distributed, model, tokenizer, device: torch.device,
                       run_dir: Path | None, say: Callable[[str], None]) -> tuple[TrainingData, dict | None]:
    """The tokenised data and the audit's counts (None without an audit). The audit may drop
    harmful rows from data.train; every rank ends with rank 0's choice. `run_dir=None` (dry run)
    writes no audit report."""
    data = build_training_data(recipe.data, tokenizer, recipe.train.seed)
    if dist.is_main:
        for what, path in data.files.items():  # the files read, as found (relative paths have a search order)
            say(f"{what}: {path}")
        for note in data.notes:  # dropped or truncated rows: shown even with --quiet
            print(note, file=sys.stderr)
    everything, audit = data.train, None
    if dist.mirrored():
        audit = audit_training_data(recipe, data, model, tokenizer, device=device, run_dir=run_dir, log=say,
                                    broadcast=dist.agree, write=dist.is_main)
    position = {id(example): i for i, example in enumerate(everything)}
    kept = dist.broadcast([position[id(e)] for e in data.train] if dist.is_main else None)
    audit = dist.broadcast(audit if dist.is_main else None)
    data.train = [everything[i] for i in kept]
    return data, audit


def batch_schedule(recipe: Recipe, examples: list[Example], model, world_size: int) -> BatchSchedule:
    """The micro-batches drawn from `examples` (data.train after the audit): packed sequences when
    data.packing asks (the examples themselves stay as they are)."""
    if recipe.data.packing:
        prepare_packing(model)
        examples = pack_examples(examples, recipe.data.max_seq_len, recipe.train.seed)
    # the GLOBAL micro-batch (batch_size per process x processes); each rank trains on its slice
    return BatchSchedule(examples, recipe.train.batch_size * world_size, recipe.train.seed, recipe.data.shuffle)
