"""`compare` over two fake runs: the table, the Markdown and the PNG plots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from safetune.cli import app
from safetune.errors import UsageError
from safetune.evaluation.compare import run_compare
from tests.helpers import write_jsonl

BASE = {"harmful_refusal_rate": 0.95, "over_refusal_rate": 0.05, "task_score": 0.2, "capability_score": 0.7,
        "by_category": {"violence": 1.0, "privacy": 0.9}}


def fake_run(root: Path, name: str, method: str, harmful: float, task: float, privacy: float) -> Path:
    run = root / name
    (run / "final").mkdir(parents=True)
    (run / "baseline").mkdir()
    (run / "recipe.resolved.yaml").write_text(f"name: {name}\n")
    (run / "baseline" / "safety_report.json").write_text(json.dumps({"metrics": BASE, "model": "lab", "method": []}))
    metrics = {**BASE, "harmful_refusal_rate": harmful, "task_score": task,
               "by_category": {"violence": 1.0, "privacy": privacy}}
    report = {"metrics": metrics, "baseline": BASE, "model": "lab", "method": [method], "steps": 20,
              "wall_time_s": 75.0, "retained": {"harmful_refusal_rate": harmful / 0.95, "task_score": task / 0.2},
              "gate": {"verdict": "PASS" if harmful > 0.85 else "FAIL"}}
    (run / "final" / "safety_report.json").write_text(json.dumps(report))
    log = [{"step": s, "loss": 1.0 / s, "elapsed_s": s * 3.0} for s in range(1, 21)]
    log += [{"step": s, "probe/harmful_refusal_rate": 0.95 - (0.95 - harmful) * s / 20} for s in (5, 10, 15, 20)]
    write_jsonl(run / "metrics.jsonl", log)
    return run


def test_compare_two_runs_writes_table_markdown_and_plots(tmp_path):
    standard = fake_run(tmp_path / "runs", "standard", "standard", harmful=0.40, task=0.8, privacy=0.1)
    mix = fake_run(tmp_path / "runs", "mix", "mix", harmful=0.90, task=0.75, privacy=0.85)
    comparison = run_compare([standard, mix], tmp_path / "cmp")

    assert [e.name for e in comparison.entries] == ["baseline (lab)", "standard", "mix"]
    console = Console(record=True, width=250, force_terminal=True)  # a wide terminal: every column
    console.print(*comparison.tables)
    text = console.export_text()
    assert "standard" in text and "mix" in text and "0.400" in text and "1m15s" in text
    assert "privacy" in text  # the per-category table

    markdown = comparison.markdown_path.read_text()
    assert "| standard | standard | 20 | 1m15s | 0.400 (42%) | 0.050 | 0.800 (400%) | 0.700 | FAIL |" in markdown
    assert "| privacy | 0.900 | 0.100 | 0.850 |" in markdown
    assert "![safety_over_steps](safety_over_steps.png)" in markdown
    for plot in comparison.plot_paths:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    rows = json.loads(comparison.json_path.read_text())
    assert [row["gate"] for row in rows] == [None, "FAIL", "PASS"]


def test_compare_accepts_report_files(tmp_path):
    run = fake_run(tmp_path, "r", "mix", harmful=0.9, task=0.5, privacy=0.8)
    loose = tmp_path / "loose.json"
    loose.write_text((run / "final" / "safety_report.json").read_text())
    comparison = run_compare([loose], tmp_path / "cmp")
    assert [e.name for e in comparison.entries] == ["baseline (lab)", "loose"]
    assert comparison.entries[0].metrics == BASE


def test_compare_rejects_what_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="neither a run directory"):
        run_compare([tmp_path], tmp_path / "cmp")
    with pytest.raises(UsageError, match="at least one"):
        run_compare([], tmp_path / "cmp")


def demo_runs(root: Path) -> list[Path]:
    return [fake_run(root, "lab-sentiment-standard", "standard", harmful=0.01, task=0.9, privacy=0.0),
            fake_run(root, "lab-sentiment-mix", "mix", harmful=0.95, task=0.85, privacy=0.9),
            fake_run(root, "lab-sentiment-freeze-safegrad", "freeze", harmful=0.93, task=0.8, privacy=0.85)]


def assert_fits_80_columns_uncut(text: str) -> None:
    lines = text.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in text  # no cell cut short
    for name in ("lab-sentiment-standard", "lab-sentiment-mix", "lab-sentiment-freeze-safegrad", "baseline (lab)"):
        assert name in text  # every run name whole
    for number in ("0.010", "(1%)", "0.950", "(100%)", "0.930", "(98%)", "FAIL", "PASS", "0.850", "(425%)"):
        assert number in text


def test_compare_printed_to_a_non_terminal_fits_80_columns(tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    comparison = run_compare(demo_runs(tmp_path / "runs"), tmp_path / "cmp")
    out = io.StringIO()
    Console(file=out).print(*comparison.tables)  # a file: not a terminal
    assert_fits_80_columns_uncut(out.getvalue())
    assert "privacy" in out.getvalue() and "1 = baseline (lab)" in out.getvalue()
    # even when the terminal around the pipe is wide
    out = io.StringIO()
    Console(file=out, width=200).print(*comparison.tables)
    assert_fits_80_columns_uncut(out.getvalue())
    # the Markdown keeps every column
    assert "| lab-sentiment-standard | standard | 20 | 1m15s | 0.010 (1%) | 0.050 | 0.900 (450%) | 0.700 | FAIL |" \
        in comparison.markdown_path.read_text()


def test_safetune_compare_with_stdout_not_a_tty(tmp_path):
    runs = demo_runs(tmp_path / "runs")
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    tables = result.output.split("wrote ")[0]  # the last line names the written files (long paths)
    assert_fits_80_columns_uncut(tables)


def test_compare_writes_one_self_contained_html_page(tmp_path):
    """compare.html: both tables and the plots embedded, nothing fetched from elsewhere."""
    import base64
    import re

    standard = fake_run(tmp_path / "runs", "standard", "standard", harmful=0.40, task=0.8, privacy=0.1)
    mix = fake_run(tmp_path / "runs", "mix<&>", "mix", harmful=0.90, task=0.75, privacy=0.85)
    comparison = run_compare([standard, mix], tmp_path / "cmp")

    page = comparison.html_path.read_text(encoding="utf-8")
    assert comparison.html_path == tmp_path / "cmp" / "compare.html"
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<h1>Safety comparison</h1>" in page and "Harmful refusal by category" in page
    assert "<td>standard</td>" in page and "0.400 <span" in page and "(42%)" in page
    assert "mix&lt;&amp;&gt;" in page and "mix<&>" not in page  # names are escaped
    assert '<td class="fail">FAIL</td>' in page and '<td class="pass">PASS</td>' in page
    assert "<td>privacy</td>" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(comparison.plot_paths) == 2
    assert base64.b64decode(images[0]) == comparison.plot_paths[0].read_bytes()
    # self-contained: no external stylesheet, script, font or image
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page and "@import" not in page
