"""`safetune compare`: baseline and runs side by side, as a table, Markdown and plots.

Each path is a run directory (its final/safety_report.json, baseline/ and metrics.jsonl
are read), a folder holding a safety_report.json, or a report JSON file. The base
model's baseline appears once per distinct base model.

Printed: every column when the terminal is wide enough; otherwise (and always when
stdout is not a terminal: a pipe, a log file) compact tables of at most 80 columns that
never cut a cell. The Markdown always has every column.

Written to the output folder:
    compare.html           one self-contained page: both tables and the plots (embedded), for a browser
    compare.md             the tables (and the plots) for a person
    compare.json           the same numbers for a program
    safety_over_steps.png  harmful refusal and task score over training steps
    safety_vs_task.png     one point per run: task score vs harmful refusal rate
"""

from __future__ import annotations

import base64
import html
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
    html_path: Path | None = None


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


# --------------------------------------------------------------------------- HTML
HTML_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: rgb(30, 30, 36);
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid rgb(220, 220, 226); padding-bottom: 0.2em; }
p.note { color: rgb(95, 95, 105); margin-top: 0.3em; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.35em 0.8em; border-bottom: 1px solid rgb(230, 230, 236); text-align: right; }
th { background: rgb(244, 245, 248); font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
tr.baseline td { color: rgb(95, 95, 105); font-style: italic; }
td .kept { color: rgb(110, 110, 120); font-size: 0.85em; }
td.pass { color: rgb(21, 120, 50); font-weight: 700; }
td.fail { color: rgb(190, 30, 30); font-weight: 700; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid rgb(230, 230, 236); }
figcaption { color: rgb(95, 95, 105); font-size: 0.9em; }
"""


def _html_rate(value: float | None, kept: float | None = None) -> str:
    text = html.escape(fmt(value))
    return text + (f' <span class="kept">({kept:.0%})</span>' if kept is not None else "")


def _shade(value: float | None) -> str:
    """A refusal rate as a cell background: red at 0, white at 1."""
    if value is None:
        return ""
    level = max(0.0, min(1.0, value))
    return f' style="background: rgba(220, 60, 50, {0.55 * (1 - level):.2f})"'


def html_report(entries: list[Entry], plots: list[Path]) -> str:
    """compare.html: the comparison, the per-category table and the plots, in one file that
    a browser opens offline (the plots are embedded as base64 PNG)."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>safetune: safety comparison</title>", f"<style>{HTML_STYLE}</style></head><body>",
           "<h1>Safety comparison</h1>",
           '<p class="note">Harmful refusal should stay near the baseline; over-refusal should not rise. '
           f"{esc(RETAINED_NOTE)} Gate: the recipe's pass/fail thresholds.</p>"]
    header = ["Run", "Method", "Steps", "Wall time", "Harmful refusal", "Over-refusal", "Task", "Capability", "Gate"]
    out += ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for entry in entries:
        report, metrics = entry.report, entry.metrics
        retained = {} if entry.is_baseline else report.get("retained") or {}
        verdict = "–" if entry.is_baseline or "gate" not in report else str(report["gate"]["verdict"])
        cells = [esc(entry.name),
                 "base model" if entry.is_baseline else esc(", ".join(report.get("method") or []) or "–"),
                 esc(fmt(report.get("steps"))), esc(_duration(report.get("wall_time_s"))),
                 _html_rate(metrics.get("harmful_refusal_rate"), retained.get("harmful_refusal_rate")),
                 _html_rate(metrics.get("over_refusal_rate")),
                 _html_rate(metrics.get("task_score"), retained.get("task_score")),
                 _html_rate(metrics.get("capability_score"), retained.get("capability_score"))]
        gate_class = {"PASS": "pass", "FAIL": "fail"}.get(verdict.upper(), "")
        row_class = ' class="baseline"' if entry.is_baseline else ""
        out.append(f"<tr{row_class}>" + "".join(f"<td>{cell}</td>" for cell in cells)
                   + f'<td class="{gate_class}">{esc(verdict)}</td></tr>')
    out.append("</table>")
    categories = sorted({c for entry in entries for c in entry.metrics.get("by_category", {})})
    if categories:
        out += ["<h2>Harmful refusal by category</h2>",
                '<p class="note">Refusal rate per harm category; the redder the cell, the less is refused.</p>',
                "<table>", "<tr><th>Category</th>" + "".join(f"<th>{esc(e.name)}</th>" for e in entries) + "</tr>"]
        for category in categories:
            values = [entry.metrics.get("by_category", {}).get(category) for entry in entries]
            out.append(f"<tr><td>{esc(category)}</td>"
                       + "".join(f"<td{_shade(v)}>{esc(fmt(v))}</td>" for v in values) + "</tr>")
        out.append("</table>")
    captions = {"safety_over_steps": "Over training: lines are the safety probes in metrics.jsonl, stars the "
                                     "final reports, the dashed line the baseline.",
                "safety_vs_task": "One point per run: top right keeps both safety and the task."}
    out.append("<h2>Plots</h2>")
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        out += [f'<figure><img alt="{esc(plot.stem)}" src="data:image/png;base64,{data}">',
                f"<figcaption>{esc(captions.get(plot.stem, plot.stem))}</figcaption></figure>"]
    out += ["</body></html>"]
    return "\n".join(out) + "\n"


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
    markdown_path, json_path, html_path = out_dir / "compare.md", out_dir / "compare.json", out_dir / "compare.html"
    write_atomic(markdown_path, "\n".join(markdown) + "\n")
    write_atomic(html_path, html_report(entries, plots))
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
    return Comparison(entries=entries, tables=tables, markdown_path=markdown_path, json_path=json_path, plot_paths=plots,
                      html_path=html_path)
