"""What every bench script needs: arguments, threads, the clock, A/B order, result files.

Import it from a script in bench/ (its folder is on sys.path when run as `python bench/x.py`):

    from common import abba, add_threads, markdown_table, new_parser, set_threads, timing, write_results

    parser = new_parser(__doc__)
    add_threads(parser, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    for round_index, order in enumerate(abba(["standard", "safegrad"], rounds=8)):
        for config in order:
            with timing(device) as block:
                ...
            walls[config].append(block.wall)
    write_results("methods", result, markdown_table(["config", "ms / step"], rows, align="lr"))

The clock waits for a GPU's queued kernels at both ends (`synchronize`), so a timed block
includes the work it launched, and records this process's CPU time next to the wall time:
with one torch thread on a shared machine, CPU time is what the code itself cost, whoever
else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # `import safetune` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- arguments
def standard_of(config: str) -> str:
    """The plain fine-tuning a configuration is compared with: `standard-full` for a
    full-fine-tuning recipe (`<setting>-<method>-full.yaml`), `standard` otherwise."""
    return "standard-full" if config.endswith("-full") else "standard"


def new_parser(doc: str, summary_only: bool = False) -> argparse.ArgumentParser:
    """A parser whose --help shows the script's docstring (or only its first line), as written."""
    if summary_only:
        return argparse.ArgumentParser(description=doc.splitlines()[0])
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_threads(parser: argparse.ArgumentParser, default: int | None = None, why: str = "") -> None:
    """--threads: torch's CPU threads (None keeps torch's choice). One thread gives the steadiest
    figures on a busy machine, and is what the lab bench's runs use."""
    choice = "torch's choice" if default is None else default
    parser.add_argument("--threads", type=int, default=default,
                        help=f"CPU threads for torch (default: {choice}){'; ' + why if why else ''}")


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads (None: leave them); returns the number in use."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def quiet_transformers() -> None:
    """No progress bars or warnings from transformers in a bench's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def command_line(script: str) -> str:
    """How this run was started, for the results' header: `python bench/<script> <arguments>`."""
    return " ".join(["python", f"bench/{script}", *sys.argv[1:]])


def machine() -> dict:
    """Where the figures come from (written beside them); the load average tells a busy machine."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "load_average_at_end": list(os.getloadavg())}


def model_dir(requested: str | None, scratch: Path, stand_in: str,
              build_stand_in: Callable[[Path], Path]) -> tuple[Path, str]:
    """The model to time and its label: the one asked for, else the lab model, else a stand-in
    built under `scratch` (so a script runs on a machine without `safetune lab build`)."""
    from safetune.modeling import lab_model_dir

    if requested:
        return Path(requested), requested
    if (lab_model_dir() / "config.json").is_file():
        return lab_model_dir(), "lab model"
    print(f"lab model not found at {lab_model_dir()}: using a {stand_in} (run `safetune lab build`)")
    return build_stand_in(scratch), f"{stand_in} (lab model absent)"


# --------------------------------------------------------------------------- the clock
def synchronize(device=None) -> None:
    """Wait for the kernels a GPU still has queued (a no-op on the CPU)."""
    import torch

    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def stamp(device=None) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) now, after the device's queued work."""
    synchronize(device)
    return time.perf_counter(), time.process_time()


@dataclass
class Timing:
    wall: float = 0.0  # seconds
    cpu: float = 0.0  # this process's CPU seconds


@contextmanager
def timing(device=None) -> Iterator[Timing]:
    """`with timing(device) as t: ...` then t.wall and t.cpu cover the block and its device work."""
    result = Timing()
    wall, cpu = stamp(device)
    yield result
    end_wall, end_cpu = stamp(device)
    result.wall, result.cpu = end_wall - wall, end_cpu - cpu


def timed(function: Callable, *args, device=None, **kwargs):
    """(function(*args, **kwargs), wall seconds)."""
    with timing(device) as clock:
        result = function(*args, **kwargs)
    return result, clock.wall


# --------------------------------------------------------------------------- A/B order
def abba(items: Sequence, rounds: int) -> Iterator[list]:
    """The order of each round: forward, reversed, forward... (A B C, C B A, A B C ...), so a
    machine that gets busier or quieter during a bench favours no item."""
    for round_index in range(rounds):
        yield list(items) if round_index % 2 == 0 else list(items)[::-1]


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[r] / b[r] for each round r: two runs of one round ran minutes apart at most, so their
    ratio shrugs off a machine that changed between rounds (take the median)."""
    return [x / y for x, y in zip(a, b)]


# --------------------------------------------------------------------------- runs in fresh processes
def fresh_process_context(preload: Sequence[str], threads: int = 1):
    """Where run processes come from: a forkserver that imported the heavy modules once
    (each run forks from it in milliseconds), else plain spawn (Windows). `threads` is
    every run's torch thread count (one: runs side by side never oversubscribe)."""
    import multiprocessing

    os.environ.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                       "TOKENIZERS_PARALLELISM": "false"})
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def run_fresh(context, function: Callable, *args):
    """function(*args) in its own new process (no run inherits another's state or peak memory).
    Raises what the process raised, or a BrokenProcessPool when it died (e.g. out of memory)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=context) as one:
        return one.submit(function, *args).result()


# --------------------------------------------------------------------------- statistics
def stats(values: Sequence[float | None]) -> dict | None:
    """mean, sample std (0 for one value), min and n of the values that are not None."""
    import statistics

    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "n": len(values)}


def fmt(stat: dict | None, digits: int = 2) -> str:
    """'mean ± std' over several seeds, the value alone for one, '–' for none."""
    if stat is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


# --------------------------------------------------------------------------- results
def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str = "") -> list[str]:
    """A Markdown table's lines; `align` has one letter a column, l (default) or r."""
    def line(cells: Sequence) -> str:
        return "| " + " | ".join(map(str, cells)) + " |"

    rule = "|" + "|".join("---:" if align[i:i + 1] == "r" else "---" for i in range(len(header))) + "|"
    return [line(header), rule, *map(line, rows)]


def write_results(name: str, result: dict, markdown: str | None = None, folder: Path = RESULTS) -> list[Path]:
    """<folder>/<name>.json (and <name>.md when given a text); returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.json"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if markdown is not None:
        paths.append(folder / f"{name}.md")
        paths[1].write_text(markdown, encoding="utf-8")
    return paths
