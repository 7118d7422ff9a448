"""The `safetune` command: parse arguments, call one package function per verb.

Every user-facing problem is a SafetuneError, printed here as one line with its exit
code (1 error, 2 usage/recipe, 3 safety gate failed). Anything else is a bug.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from safetune.errors import RecipeError, SafetuneError

app = typer.Typer(
    help="Fine-tune a language model on your task without eroding its safety alignment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

RecipeArg = typer.Argument(..., help="recipe YAML file", show_default=False)
OverridesArg = typer.Argument(None, help="overrides such as train.learning_rate=1e-4", show_default=False)


def handle_errors(command):
    """Turn SafetuneError into one line on stderr and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        # under torchrun/accelerate every process prints its own line: say which one
        where = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        try:
            return command(*args, **kwargs)
        except RecipeError as err:
            for problem in err.problems:
                print(f"error: {where}{err.source}: {problem}", file=sys.stderr)
            raise typer.Exit(err.exit_code) from None
        except SafetuneError as err:
            print(f"error: {where}{err}", file=sys.stderr)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:  # outside training (which saves a checkpoint first): nothing to keep
            print(f"error: {where}interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except RuntimeError as err:
            if _out_of_memory(err):
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                print(f"error: {where}out of memory ({first[:160]}); lower train.batch_size (raise train.grad_accum "
                      "to keep the batch) or data.max_seq_len, or set train.gradient_checkpointing=true, model.lora, "
                      "or train.distributed.strategy=fsdp; --resume continues from the last checkpoint",
                      file=sys.stderr)
                raise typer.Exit(1) from None
            if where and _peer_failed(err):  # the real error is the other process's line
                print(f"error: {where}stopped: another process of this run failed (see its error)", file=sys.stderr)
                raise typer.Exit(1) from None
            raise

    return wrapper


def _out_of_memory(err: Exception) -> bool:
    """torch.OutOfMemoryError (CUDA, MPS, XPU) or the CPU allocator's failure."""
    text = str(err)
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in text.lower() or \
        "DefaultCPUAllocator: can't allocate memory" in text or "not enough memory" in text


def _peer_failed(err: Exception) -> bool:
    """A collective operation failed because another rank exited (gloo/NCCL say so in words)."""
    text = str(err)
    return type(err).__name__ in ("DistBackendError", "DistNetworkError") or any(
        phrase in text for phrase in ("Connection closed by peer", "Connection reset by peer", "remote worker"))


# --------------------------------------------------------------------------- training
@app.command()
@handle_errors
def train(
    recipe: Path = RecipeArg,
    overrides: Optional[List[str]] = OverridesArg,
    dry_run: bool = typer.Option(False, "--dry-run", help="build everything, show one example, run one step, save nothing"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run's latest complete checkpoint"),
    allow_gate_failure: bool = typer.Option(
        False, "--allow-gate-failure", help="exit 0 even when the final safety gate fails (eval.gate.exit_on_fail=false)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
):
    """Fine-tune the recipe's model with its safety methods, then write the safety report.

    Exit codes: 0 done and the safety gate passed, 1 error, 2 bad recipe/usage,
    3 the safety gate failed (the checkpoint is kept), 130 interrupted (resumable).
    """
    from safetune.errors import GateFailed
    from safetune.recipe import load_recipe
    from safetune.training import train as run_training

    resolved = load_recipe(recipe, overrides or [])
    flags = [*(["--allow-gate-failure"] if allow_gate_failure else []), *(["--quiet"] if quiet else [])]
    command = shlex.join([*launcher_prefix(), "train", str(recipe), *(overrides or []), *flags])
    result = run_training(resolved, resume=resume, dry_run=dry_run, show_progress=not quiet, command=command)
    if result.report is None:
        return
    print_verdict(result.report)
    gate = result.report.get("gate") or {}
    if not gate.get("passed", True) and resolved.eval.gate.exit_on_fail and not allow_gate_failure:
        raise GateFailed(f"safety gate failed: {gate.get('summary', '')} (checkpoint kept in {result.final_dir}; "
                         "--allow-gate-failure to exit 0)")


def launcher_prefix() -> list[str]:
    """How to start this command again (the resume hint): `safetune`, or under torchrun the
    same number of processes through `torchrun -m safetune` (a resume needs as many)."""
    world, local = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    if world and int(world) > 1:
        nodes = int(world) // int(local or world)
        per_node = ["--nnodes", str(nodes)] if nodes > 1 else []
        return ["torchrun", *per_node, "--nproc_per_node", local or world, "-m", "safetune"]
    return ["safetune"]


# --------------------------------------------------------------------------- recipes
@app.command()
@handle_errors
def validate(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg):
    """Check a recipe and print it resolved (defaults filled in), or every error at once."""
    from safetune.recipe import load_recipe

    resolved = load_recipe(recipe, overrides or [])
    print(resolved.to_yaml(), end="")
    print(f"ok: {recipe} is valid (output: {resolved.output_dir()})")


@app.command()
@handle_errors
def explain(field: str = typer.Argument(..., help="a recipe field or section: train.learning_rate, "
                                        "method.safegrad.margin, eval.gate, safegrad", show_default=False)):
    """Say what a recipe field does: type, default, allowed values, description, an example."""
    from safetune.docgen import explain as describe

    print(describe(field))


def bundled_recipes() -> dict[str, Path]:
    # files in a folder named _<something> (recipes/lab/_base/) are bases that recipes build on, not recipes
    return {str(p.relative_to(RECIPES_DIR).with_suffix("")): p for p in sorted(RECIPES_DIR.rglob("*.yaml"))
            if not any(part.startswith("_") for part in p.relative_to(RECIPES_DIR).parts)}


@app.command("recipes")
@handle_errors
def list_recipes():
    """List the bundled recipes (copy one with `safetune init NAME`)."""
    from rich.table import Table

    from safetune.recipe import resolved_tree

    table = Table("name", "description")
    for name, path in bundled_recipes().items():
        table.add_row(name, str(resolved_tree(path).get("description", "")))
    console.print(table)


@app.command()
@handle_errors
def init(name: str = typer.Argument(..., help="bundled recipe name (see `safetune recipes`)"),
         dest: Optional[Path] = typer.Argument(None, help="where to write it (default ./<name>.yaml)")):
    """Copy a bundled recipe into the current directory for you to edit."""
    from safetune.errors import UsageError
    from safetune.files import write_atomic
    from safetune.recipe import read_yaml, standalone_yaml

    recipes = bundled_recipes()
    matches = [key for key in recipes if key == name or key.endswith("/" + name)]
    if len(matches) != 1:
        import difflib

        guess = difflib.get_close_matches(name, list(recipes), n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else " (see `safetune recipes`)"
        raise UsageError(f"init: no bundled recipe named '{name}'{hint}")
    source = recipes[matches[0]]
    target = dest or Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise UsageError(f"init: {target} already exists; choose another destination")
    if not target.parent.is_dir():
        raise UsageError(f"init: no folder {target.parent}; create it first")
    # the run is named after the new file (runs/<stem>/), not after the bundled recipe
    if "base" in read_yaml(source):  # built on bases: write it with them merged in, to edit on its own
        text = standalone_yaml(source, name=target.stem)
    else:  # copied as written, comments and all
        text = re.sub(r"^name:.*$", f"name: {target.stem}", source.read_text(encoding="utf-8"), count=1, flags=re.M)
    write_atomic(target, text)
    console.print(f"wrote {target}; edit it, then: safetune train {target} (its run goes to runs/{target.stem}/)")


@app.command()
@handle_errors
def env():
    """Print versions, device and threads (paste this into bug reports)."""
    from safetune.envinfo import collect_env

    info = collect_env()
    for key, value in info.items():
        if isinstance(value, dict):
            for name, version in value.items():
                console.print(f"{name}: {version or 'not installed'}", highlight=False)
        else:
            console.print(f"{key}: {value}", highlight=False)


# --------------------------------------------------------------------------- evaluation
@app.command()
@handle_errors
def baseline(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg,
             quiet: bool = typer.Option(False, "--quiet", help="no progress output")):
    """Evaluate the recipe's model before fine-tuning; store the baseline in its run directory."""
    from safetune.evaluation.runner import run_baseline
    from safetune.recipe import load_recipe

    resolved = load_recipe(recipe, overrides or [])
    if not resolved.eval.suites:
        from safetune.errors import UsageError

        raise UsageError("eval.suites: the recipe has no evaluation suites to run")
    report = run_baseline(resolved, progress=not quiet)
    print_verdict(report)


@app.command("eval")
@handle_errors
def evaluate(
    checkpoint: Path = typer.Argument(..., help="final/, checkpoints/step-N/ or any HF model folder"),
    overrides: Optional[List[str]] = OverridesArg,
    recipe: Optional[Path] = typer.Option(None, help="default: the run's recipe.resolved.yaml"),
    baseline_report: Optional[Path] = typer.Option(None, "--baseline", help="a baseline safety_report.json"),
    out: Optional[Path] = typer.Option(None, help="where to write the report (default: the checkpoint folder)"),
    min_harmful_retained: Optional[float] = typer.Option(None, help="gate: harmful refusal >= this x baseline"),
    max_over_refusal_increase: Optional[float] = typer.Option(None, help="gate: over-refusal may rise at most this much"),
    min_task_score: Optional[float] = typer.Option(None, help="gate: task score at least this"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
):
    """Evaluate a checkpoint against the baseline. Exit 0 pass, 3 gate failed (CI-friendly)."""
    from safetune.evaluation.runner import run_eval

    gate = {key: value for key, value in {
        "min_harmful_retained": min_harmful_retained,
        "max_over_refusal_increase": max_over_refusal_increase,
        "min_task_score": min_task_score,
    }.items() if value is not None}
    check_gate_flags(gate)
    report = run_eval(checkpoint, recipe_path=recipe, overrides=overrides or [], baseline_path=baseline_report,
                      out_dir=out, gate=gate, progress=not quiet)
    print_verdict(report)


def require_positive(flags: dict[str, int | None]) -> None:
    """Counts given on the command line (threads, steps) must be 1 or more."""
    from safetune.errors import UsageError

    for flag, value in flags.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag}: give 1 or more (got {value})")


def check_gate_flags(gate: dict[str, float]) -> None:
    """A gate flag out of range is the flag's fault, not the recipe's: name the flag."""
    from pydantic import ValidationError

    from safetune.errors import UsageError
    from safetune.recipe import GateConfig, format_problem

    try:
        GateConfig.model_validate(gate)
    except ValidationError as err:
        error = err.errors()[0]
        raise UsageError(f"--{error['loc'][0].replace('_', '-')}: {format_problem(error | {'loc': ()})}") from None


@app.command()
@handle_errors
def compare(runs: List[Path] = typer.Argument(..., help="run directories or safety_report.json files"),
            out: Optional[Path] = typer.Option(None, help="output folder (default: runs/compare)")):
    """Baseline and runs side by side: a table, Markdown and plots."""
    from safetune.evaluation.compare import run_compare

    result = run_compare(list(runs), out)
    for table in result.tables:
        console.print(table)
    console.print(f"wrote {result.html_path}, {result.markdown_path}, {result.json_path}, "
                  + ", ".join(map(str, result.plot_paths)))


def print_verdict(report: dict) -> None:
    metrics = report.get("metrics", {})
    rates = ["harmful_refusal_rate", "over_refusal_rate", "task_score", "capability_score"]
    parts = [f"{key.removesuffix('_rate').replace('_', ' ')} {metrics[key]:.1%}" for key in rates
             if metrics.get(key) is not None]
    console.print(" | ".join(parts), highlight=False)
    gate = report.get("gate") or {}
    if gate.get("summary"):
        console.print(("[green]" if gate.get("passed") else "[bold red]") + f"gate: {gate['summary']}[/]")


@app.command()
@handle_errors
def layers(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg):
    """Score every decoder layer for safety (the recipe's freeze detector) and print the table."""
    from rich.table import Table

    from safetune.recipe import load_recipe
    from safetune.methods.freeze import detect_layers

    resolved = load_recipe(recipe, overrides or [])
    result = detect_layers(resolved)
    table = Table("layer", "score", "relative", "would freeze", title=f"safety layers ({result['detector']} detector)")
    best = max(result["scores"]) or 1.0
    for row in result["layers"]:
        table.add_row(str(row["layer"]), f"{row['score']:.4g}", f"{row['score'] / best:.2f}", "yes" if row["frozen"] else "")
    console.print(table)


# --------------------------------------------------------------------------- the lab
lab_app = typer.Typer(help="The offline lab: synthetic data and a tiny aligned chat model.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")


@lab_app.command("build")
@handle_errors
def lab_build(
    out: Optional[Path] = typer.Option(None, help="where to save it (default: $SAFETUNE_LAB_MODEL or ~/.cache/safetune/lab-model)"),
    seed: int = typer.Option(0, help="same seed, same model"),
    steps: Optional[int] = typer.Option(None, help="training steps (default: the lab's setting)"),
    threads: int = typer.Option(2, help="torch threads (part of what makes the build reproducible)"),
    classifier: bool = typer.Option(True, "--classifier/--no-classifier", help="also train the lab safety classifier"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
):
    """Train the lab tokenizer and tiny aligned model from data/, measure it, then the lab safety classifier."""
    from safetune.lab.build import build
    from safetune.lab.classifier import build_classifier, lab_classifier_dir

    require_positive({"--threads": threads, "--steps": steps})
    folder = build(out, seed=seed, steps=steps, show_progress=not quiet, threads=threads)
    if classifier:  # beside the model: used by `judge: lab`, the data audit and token weighting
        target = folder.with_name(folder.name + "-classifier") if out else lab_classifier_dir()
        build_classifier(target, seed=seed, show_progress=not quiet)


@lab_app.command("data")
@handle_errors
def lab_data(
    out: Path = typer.Option(Path("data"), help="output folder"),
    seed: int = typer.Option(0, help="same seed, same files"),
):
    """Regenerate the lab's synthetic data sets (the committed data/ is seed 0)."""
    from safetune.lab.datagen import generate

    for name, rows in generate(out, seed=seed).items():
        console.print(f"{name}: {rows} rows", highlight=False)


@lab_app.command("classifier")
@handle_errors
def lab_classifier(
    out: Optional[Path] = typer.Option(None, help="where to save it (default: $SAFETUNE_LAB_CLASSIFIER or <lab model dir>-classifier)"),
    seed: int = typer.Option(0, help="same seed, same classifier"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
):
    """Train the lab's tiny safety classifier (refusal / answer / unsafe) for token_weighting and eval's judge."""
    from safetune.lab.classifier import build_classifier

    build_classifier(out, seed=seed, show_progress=not quiet)


# --------------------------------------------------------------------------- a real model
real_app = typer.Typer(help="A real pretrained chat model: SmolLM2-135M-Instruct, safety-aligned by safetune.",
                       no_args_is_help=True)
app.add_typer(real_app, name="real")


@real_app.command("build")
@handle_errors
def real_build(
    out: Optional[Path] = typer.Option(None, help="where to save it (default: $SAFETUNE_REAL_MODEL or ~/.cache/safetune/smollm2-135m-aligned)"),
    seed: int = typer.Option(0, help="same seed, same model"),
    steps: Optional[int] = typer.Option(None, help="LoRA steps (default: the build's setting)"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="measure the model before and after (AdvBench, XSTest, reference loss)"),
    advbench_limit: Optional[int] = typer.Option(None, help="evaluate the first N AdvBench prompts only (quicker trials)"),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's choice)"),
    contrast_rows: Optional[int] = typer.Option(
        None, help="harmful requests in the look-alikes' phrasing, refused, added to the mix (default: the build's setting)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
):
    """Convert SmolLM2-135M-Instruct from its GGUF package and safety-align it (once; about 15 minutes on 2 cores)."""
    from safetune.errors import UsageError
    from safetune.real.build import build

    require_positive({"--steps": steps, "--advbench-limit": advbench_limit, "--threads": threads})
    if contrast_rows is not None and contrast_rows < 0:
        raise UsageError(f"--contrast-rows: give 0 or more (got {contrast_rows})")
    mix = {} if contrast_rows is None else {"contrast_rows": contrast_rows}
    build(out, seed=seed, steps=steps, evaluate=evaluate, advbench_limit=advbench_limit,
          threads=threads, show_progress=not quiet, **mix)


def main() -> None:
    # Quiet Hugging Face without importing it here: `validate`, `recipes`, `init` and --help
    # must start fast, and transformers pulls in torch. (modeling.py turns its progress bars off.)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    app()


if __name__ == "__main__":
    main()
