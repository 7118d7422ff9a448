"""`safetune train --dry-run`: check a recipe end to end without training or saving anything.

Shows the first training example as the model will see it, the run's size, then takes one
real optimizer step and writes (and deletes) a test checkpoint, so a recipe that would fail
at its first step or its first save fails here, in seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from safetune import checkpoint as ckpt
from safetune.data import IGNORE_INDEX, Example


def rehearse(trainer) -> None:
    """The dry run of a `Trainer` that is set up (`setup(dry_run=True)`)."""
    from rich.console import Console

    console = Console()
    recipe, data = trainer.recipe, trainer.data
    show_example(data.train[0], trainer.tokenizer, console)
    tokens_per_step = sum(len(e.input_ids) for e in trainer.schedule.batch(0)) * recipe.train.grad_accum
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    console.print(
        f"train examples: {len(data.train)} (harmful mixed in: {data.harmful_in_train}) | "
        f"eval examples: {len(data.eval)} | safety examples: {len(data.safety)}\n"
        f"steps: {trainer.total_steps} | ~tokens: {tokens_per_step * trainer.total_steps:,} | "
        f"trainable parameters: {trainable:,} of {total:,} | methods: {', '.join(recipe.method_names)}"
    )
    out = trainer.train_step()
    with tempfile.TemporaryDirectory() as tmp:
        folder = ckpt.save_checkpoint(Path(tmp) / "step-0", trainer.model, trainer.tokenizer, {"dry_run": True},
                                      {"optimizer": trainer.optimizer.state_dict()})
        assert ckpt.is_complete(folder) and ckpt.verify_checkpoint(folder) is None
    console.print(f"one optimizer step: loss {float(out['loss']):.4f}; test checkpoint written and deleted. "
                  "Dry run OK: nothing was saved.")


def show_example(example: Example, tokenizer, console) -> None:
    """Print a tokenised example with the masked (not trained) tokens dimmed."""
    from rich.text import Text

    text = Text()
    for token_id, label in zip(example.input_ids, example.labels):
        piece = tokenizer.decode([token_id])
        text.append(piece, style="dim strike" if label == IGNORE_INDEX else "bold green")
    console.print("[bold]first training example[/] ([dim strike]masked[/], [bold green]trained[/]):")
    console.print(text)
