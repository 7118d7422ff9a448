"""Training progress: a rich live panel on a terminal, one plain line per N steps elsewhere."""

from __future__ import annotations

import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text


def _format(metrics: dict) -> str:
    parts = []
    for key in ("loss", "lr", "tokens_per_s"):
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            label = {"tokens_per_s": "tok/s"}.get(key, key)
            parts.append(f"{label} {value:.2e}" if key == "lr" else f"{label} {value:.4g}")
    if metrics.get("skipped_steps"):
        parts.append(f"[non-finite steps skipped: {metrics['skipped_steps']}]")
    return " | ".join(parts)


class TrainingProgress:
    """`with TrainingProgress(total, start) as p: p.update(step, metrics); p.probe(text)`."""

    def __init__(self, total: int, start: int = 0, log_every: int = 10, enabled: bool = True, live: bool | None = None):
        self.total = total
        self.start = start
        self.log_every = log_every
        self.enabled = enabled
        self.live = sys.stdout.isatty() if live is None else live
        self.console = Console()
        self.probe_text = Text("safety probe: not run yet", style="dim")
        self.stats = ""
        self._started = time.perf_counter()

    def __enter__(self):
        if self.enabled and self.live:
            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, stats="")
            self._live = Live(Group(self.bar, self.probe_text), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled and self.live:
            self._live.__exit__(*exc)

    def update(self, step: int, metrics: dict) -> None:
        """`step` is the number of optimizer steps done; `metrics` are shown until the next ones."""
        if not self.enabled:
            return
        if metrics:
            self.stats = _format(metrics)
        if self.live:
            self.bar.update(self.task, completed=step, stats=self.stats)
        elif step % self.log_every == 0 or step == self.total:
            elapsed = time.perf_counter() - self._started
            done = max(step - self.start, 1)
            eta = elapsed / done * (self.total - step)
            print(f"step {step}/{self.total} | {self.stats} | eta {eta:.0f}s", flush=True)

    def probe(self, text: str, ok: bool = True) -> None:
        if not self.enabled:
            return
        if self.live:
            self.probe_text.plain = text
            self.probe_text.style = "green" if ok else "bold red"
        else:
            print(text, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.console.print if self.live else print)(text)
