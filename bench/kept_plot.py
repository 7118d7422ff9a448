"""The README's picture: harmful refusal kept by each method on the lab, benign data and
10 % harmful rows, from bench/results/lab.json (mean over the three tasks and 3 seeds).

    python bench/kept_plot.py     # writes docs/assets/lab_kept.png
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["standard", "mix", "safegrad", "ewc", "token-weighting", "defended", "sap"]
SETTINGS = {"benign": "benign data", "harmful-10%": "10 % harmful rows"}


def main() -> None:
    summary = json.loads((ROOT / "bench" / "results" / "lab.json").read_text())["summary"]
    figure = Figure(figsize=(8, 3.6), layout="constrained")
    axes = figure.subplots()
    width = 0.38
    for offset, (setting, label) in enumerate(SETTINGS.items()):
        xs, ys = [], []
        for index, config in enumerate(CONFIGS):
            rows = [r for r in summary if r["config"] == config and r["setting"] == setting and r["retained"]]
            if rows:
                xs.append(index + (offset - 0.5) * width)
                ys.append(sum(r["retained"]["mean"] for r in rows) / len(rows))
        bars = axes.bar(xs, ys, width, label=label, color=("tab:blue", "tab:orange")[offset])
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    axes.set_xticks(range(len(CONFIGS)), CONFIGS)
    axes.set_ylim(0, 1.3)
    axes.set_ylabel("harmful refusal kept\n(share of the aligned model's)")
    axes.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    axes.set_title("After fine-tuning the lab model: how much refusal each method keeps")
    axes.legend(loc="upper center", fontsize="small", ncols=2, frameon=False)
    out = ROOT / "docs" / "assets" / "lab_kept.png"
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
