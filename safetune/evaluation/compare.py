"""`safetune compare`: baseline and runs side by side, as a table, Markdown and plots.

Each path is a run directory (its final/safety_report.json, baseline/ and metrics.jsonl
are read), a folder holding a safety_report.json, or a report JSON file. The base
model's baseline appears once per distinct base model.

Printed: every column when the terminal is wide enough; otherwise (and always when
stdout is not a terminal: a pipe, a log file) compact tables of at most 80 columns that
never cut a cell. The Markdown always has every column.

Written to the output folder:
    compare.md             the tables (and the plots) for a person
    compare.json           the same numbers for a program
    safety_over_steps.png  harmful refusal and task score over training steps
    safety_vs_task.png     one point per run: task score vs harmful refusal rate
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from matplotlib.figure import Figure
from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from safetune.errors import UsageError
from safetune.evaluation.report import REPORT_JSON, fmt, markdown_table, read_report
from safetune.files import write_atomic
from safetune.rundir import FINAL_DIR, find_run_dir, read_metrics_log
from safetune.evaluation.runner import load_baseline

SAFETY_SERIES = "probe/harmful_refusal_rate"
TASK_SERIES = ("probe/task_score", "eval/task_score")  # the first one a run logs is plotted
DEFAULT_OUT_DIR = Path("runs") / "compare"


@dataclass
class Entry:
    """One row of the comparison: a run's report, or a base model's baseline."""

    name: str
    report: dict
    is_baseline: bool = False
    history: list[dict] = field(default_factory=list)

    @property
    def metrics(self) -> dict:
        return self.report["metrics"]


@dataclass
class Comparison:
    entries: list[Entry]
    tables: list[RenderableType]  # print them with rich: console.print(*comparison.tables); they fit its width
    markdown_path: Path
    json_path: Path
    plot_paths: list[Path]


# --------------------------------------------------------------------------- reading
def load_entries(paths: list[Path]) -> list[Entry]:
    """Baselines first (one per base model), then the runs in the order given."""
    runs: list[Entry] = []
    baselines: dict[str, Entry] = {}
    for path in map(Path, paths):
        if path.is_dir() and (path / FINAL_DIR / REPORT_JSON).is_file():
            run_dir, report = path, read_report(path / FINAL_DIR)
        elif (path.is_dir() and (path / REPORT_JSON).is_file()) or path.is_file():
            report = read_report(path)
            run_dir = find_run_dir(path)
        else:
            raise UsageError(f"{path}: neither a run directory with {FINAL_DIR}/{REPORT_JSON} nor a safety report")
        history = read_metrics_log(run_dir) if run_dir else []
        name = run_dir.name if run_dir else report.get("recipe") or path.stem
        runs.append(Entry(name=name, report=report, history=history))

        baseline = (load_baseline(run_dir) if run_dir else None) or _baseline_from_block(report)
        if baseline is not None:
            model = baseline.get("model") or "?"
            # a path or hub id -> its last part: "baseline (lab-model)", "baseline (Llama-2-7b-chat-hf)"
            label = f"baseline ({Path(model).name or model})"
            baselines.setdefault(model, Entry(name=label, report=baseline, is_baseline=True))
    return [*baselines.values(), *runs]


def _baseline_from_block(report: dict) -> dict | None:
    # A bare report JSON carries its baseline's metrics block only.
    if not report.get("baseline"):
        return None
    return {"metrics": report["baseline"], "model": report.get("model"), "method": [], "steps": 0}


# --------------------------------------------------------------------------- tables
RETAINED_NOTE = "(x%) = share of the baseline kept."


def summary_table(entries: list[Entry]) -> tuple[list[str], list[list[str]]]:
    header = ["Run", "Method", "Steps", "Wall time", "Harmful refusal", "Over-refusal", "Task", "Capability", "Gate"]
    rows = []
    for entry in entries:
        report, metrics = entry.report, entry.metrics
        retained = {} if entry.is_baseline else report.get("retained") or {}

        def with_retained(metric: str) -> str:
            kept = retained.get(metric)
            return fmt(metrics.get(metric)) + (f" ({kept:.0%})" if kept is not None else "")

        rows.append([
            entry.name,
            "base model" if entry.is_baseline else ", ".join(report.get("method") or []) or "–",
            fmt(report.get("steps")),
            _duration(report.get("wall_time_s")),
            with_retained("harmful_refusal_rate"),
            fmt(metrics.get("over_refusal_rate")),
            with_retained("task_score"),
            with_retained("capability_score"),
            "–" if entry.is_baseline or "gate" not in report else report["gate"]["verdict"],
        ])
    return header, rows


def category_table(entries: list[Entry]) -> tuple[list[str], list[list[str]]]:
    """Categories as rows, runs as columns: stays readable with dozens of categories."""
    categories = sorted({c for entry in entries for c in entry.metrics.get("by_category", {})})
    header = ["Category", *(entry.name for entry in entries)]
    rows = [[category, *(fmt(entry.metrics.get("by_category", {}).get(category)) for entry in entries)]
            for category in categories]
    return header, rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def rich_table(title: str, header: list[str], rows: list[list[str]], caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in rows:
        table.add_row(*row)
    return table


# --------------------------------------------------------------------------- narrow consoles
NON_TERMINAL_WIDTH = 80  # a pipe or a log file is read at 80 columns, whatever the terminal around it


def compact_summary(entries: list[Entry]) -> list[Table]:
    """Run number, name, the four rates (share of the baseline kept on a second line) and the gate."""
    table = compact_table("Safety comparison", caption=f"{RETAINED_NOTE} Method, steps and time: compare.md")
    table.add_column("#", justify="right")
    table.add_column("Run", overflow="fold")  # a very long name wraps; it is never cut
    for title in ("Harmful", "Over-ref.", "Task", "Capab.", "Gate"):
        table.add_column(title, justify="right", overflow="fold")
    for number, entry in enumerate(entries, start=1):
        metrics = entry.metrics
        retained = {} if entry.is_baseline else entry.report.get("retained") or {}

        def cell(metric: str) -> str:
            kept = retained.get(metric)
            return fmt(metrics.get(metric)) + (f"\n({kept:.0%})" if kept is not None else "")

        gate = "–" if entry.is_baseline or "gate" not in entry.report else entry.report["gate"]["verdict"]
        table.add_row(str(number), entry.name, cell("harmful_refusal_rate"), fmt(metrics.get("over_refusal_rate")),
                      cell("task_score"), cell("capability_score"), gate)
    return [table]


def numbered_category_tables(entries: list[Entry], width: int) -> list[Table]:
    """Categories as rows, runs as numbered columns (legend below), as many runs per table as fit."""
    header, rows = category_table(entries)

    def make(first: int, last: int) -> Table:
        table = compact_table("Harmful refusal by category")
        table.add_column("Category", overflow="fold")
        for number in range(first, last + 1):
            table.add_column(str(number), justify="right")
        for row in rows:
            table.add_row(row[0], *row[first : last + 1])
        return table

    per_table = len(entries)
    while True:
        tables = [make(first, min(first + per_table - 1, len(entries))) for first in range(1, len(entries) + 1, per_table)]
        if per_table == 1 or all(_natural_width(table) <= width for table in tables):
            legend = "\n".join(f"{number:>3} = {entry.name}" for number, entry in enumerate(entries, start=1))
            return [*tables, Text(legend)]
        per_table -= 1


def compact_table(title: str, caption: str | None = None) -> Table:
    # no side borders, one space of padding between columns
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True,
                 pad_edge=False)


def _natural_width(renderable: RenderableType, console: Console | None = None) -> int:
    """The width a table takes when nothing has to wrap."""
    console = console or Console(width=NON_TERMINAL_WIDTH)
    return Measurement.get(console, console.options.update_width(100_000), renderable).maximum


class FirstThatFits:
    """Prints the first layout whose tables all fit the console; the last one otherwise.

    Each layout is a function of the available width returning tables. A console that is
    not a terminal counts as at most NON_TERMINAL_WIDTH columns wide.
    """

    def __init__(self, *layouts: Callable[[int], list[RenderableType]]):
        self.layouts = layouts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width if console.is_terminal else min(options.max_width, NON_TERMINAL_WIDTH)
        for layout in self.layouts:
            tables = layout(width)
            if layout is self.layouts[-1] or all(_natural_width(t, console) <= width for t in tables):
                break
        for index, table in enumerate(tables):
            if index:
                yield ""
            yield table


# --------------------------------------------------------------------------- plots
def plot_over_steps(entries: list[Entry], path: Path) -> Path:
    """Harmful refusal and task score against training step: probe curves + final points."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    safety_axes, task_axes = figure.subplots(1, 2)
    panels = [(safety_axes, (SAFETY_SERIES,), "harmful_refusal_rate", "Harmful refusal rate"),
              (task_axes, TASK_SERIES, "task_score", "Task score")]
    for axes, series_keys, metric, title in panels:
        for index, entry in enumerate(entries):
            color = f"C{index}"
            value = entry.metrics.get(metric)
            if entry.is_baseline:
                if value is not None:
                    axes.axhline(value, color="gray", linestyle="--", label=entry.name)
                continue
            key = next((k for k in series_keys if any(k in row for row in entry.history)), None)
            points = [(row["step"], row[key]) for row in entry.history if key and key in row and "step" in row]
            if points:
                axes.plot(*zip(*points), marker=".", color=color, label=entry.name)
            if value is not None and entry.report.get("steps") is not None:
                axes.plot([entry.report["steps"]], [value], marker="*", markersize=12, color=color,
                          linestyle="none", label=None if points else entry.name)
        axes.set(title=title, xlabel="optimizer step", ylim=(-0.03, 1.03))
        axes.set_xlim(left=0)  # step 0 is the base model (the dashed baseline)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.suptitle("Over training (lines: probes in metrics.jsonl, stars: final reports)")
    figure.savefig(path, dpi=120)
    return path


def plot_safety_vs_task(entries: list[Entry], path: Path) -> Path:
    """One point per run (and baseline): the trade-off a safe fine-tune should win."""
    x_metric = next((m for m in ("task_score", "capability_score")
                     if any(e.metrics.get(m) is not None for e in entries)), "task_score")
    figure = Figure(figsize=(6, 5), layout="constrained")
    axes = figure.subplots()
    for index, entry in enumerate(entries):
        x, y = entry.metrics.get(x_metric), entry.metrics.get("harmful_refusal_rate")
        if x is None or y is None:
            continue
        axes.scatter([x], [y], marker="*" if entry.is_baseline else "o", s=160 if entry.is_baseline else 60,
                     color="gray" if entry.is_baseline else f"C{index}")
        axes.annotate(entry.name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize="small")
    axes.set(xlabel=x_metric.replace("_", " "), ylabel="harmful refusal rate", xlim=(-0.03, 1.03), ylim=(-0.03, 1.03),
             title="Safety vs task (top right is best)")
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    return path


# --------------------------------------------------------------------------- command
def run_compare(paths: list[Path], out_dir: Path | None = None) -> Comparison:
    if not paths:
        raise UsageError("compare: give at least one run directory or safety report")
    entries = load_entries(paths)
    out_dir = Path(out_dir) if out_dir else DEFAULT_OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)

    summary = summary_table(entries)
    categories = category_table(entries)
    plots = [plot_over_steps(entries, out_dir / "safety_over_steps.png"),
             plot_safety_vs_task(entries, out_dir / "safety_vs_task.png")]

    markdown = ["# Comparison", "", *markdown_table(*summary), "", RETAINED_NOTE, ""]
    if categories[1]:
        markdown += ["## Harmful refusal by category", "", *markdown_table(*categories), ""]
    markdown += ["## Plots", ""] + [f"![{plot.stem}]({plot.name})" for plot in plots]
    markdown_path, json_path = out_dir / "compare.md", out_dir / "compare.json"
    write_atomic(markdown_path, "\n".join(markdown) + "\n")
    rows = [{"name": e.name, "baseline": e.is_baseline, "metrics": e.metrics, "retained": e.report.get("retained"),
             "method": e.report.get("method"), "steps": e.report.get("steps"), "wall_time_s": e.report.get("wall_time_s"),
             "gate": (e.report.get("gate") or {}).get("verdict")} for e in entries]
    write_atomic(json_path, json.dumps(rows, indent=2) + "\n")

    tables: list[RenderableType] = [FirstThatFits(
        lambda width: [rich_table("Safety comparison", *summary, caption=RETAINED_NOTE)],
        lambda width: compact_summary(entries))]
    if categories[1]:
        tables.append(FirstThatFits(
            lambda width: [rich_table("Harmful refusal by category", *categories)],
            lambda width: numbered_category_tables(entries, width)))
    return Comparison(entries=entries, tables=tables, markdown_path=markdown_path, json_path=json_path, plot_paths=plots)
