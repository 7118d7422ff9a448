"""The package's import graph: no circles, and no module imports from a layer above its own.

Every `import` in safetune/ counts, function-level ones included (a late import hides a
dependency from Python's import order, not from the design). A module that is in no layer
below fails too: place it in the table where it belongs.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "safetune"

# Top to bottom: a module may import from its own layer and any layer below it, never above.
# The data flows down: command -> recipe -> built parts -> trainer -> checkpoint -> evaluation -> report.
LAYERS: list[tuple[str, list[str]]] = [
    ("entry points", ["safetune.__main__", "safetune.cli"]),
    ("commands that run training", ["safetune.lab.build",  # builds the lab model
                                    "safetune.real", "safetune.real.*"]),  # aligns a real model, then trains
    ("the training loop", ["safetune.training"]),
    ("what the loop is made of", ["safetune.dry_run", "safetune.train_guards", "safetune.train_state",
                                  "safetune.train_setup", "safetune.train_data", "safetune.train_step",
                                  "safetune.train_eval", "safetune.monitor", "safetune.audit"]),
    ("safety methods", ["safetune.methods", "safetune.methods.*"]),
    ("evaluation", ["safetune.evaluation", "safetune.evaluation.*"]),
    ("model, data, loss, processes", ["safetune.modeling", "safetune.gguf", "safetune.data", "safetune.loss",
                                      "safetune.distributed",
                                      "safetune.lab", "safetune.lab.*"]),  # the lab's generator, tokenizer, classifier
    ("the recipe's reference (the docs page, `safetune explain`)", ["safetune.docgen"]),
    ("the recipe", ["safetune.recipe"]),
    ("small utilities", ["safetune", "safetune.errors", "safetune.files", "safetune.envinfo", "safetune.progress",
                         "safetune.runlock",
                         "safetune.metrics", "safetune.checkpoint", "safetune.rundir", "safetune.model_layers"]),
]


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports (anywhere in the file)."""
    def owner(dotted: str) -> str | None:  # the module that defines `dotted` (a module, or a name in one)
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(owner(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, one level up per extra dot
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            # `from safetune import checkpoint` imports the module safetune.checkpoint
            found.update(owner(f"{base}.{alias.name}") if f"{base}.{alias.name}" in known else owner(base)
                         for alias in node.names)
    return {module for module in found if module is not None and module != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(package)
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The index of the module's layer (0 = top): a listed name first, else the longest pattern."""
    for index, (_, names) in enumerate(layers):
        if module in names:
            return index
    matches = [(len(pattern), index) for index, (_, names) in enumerate(layers)
               for pattern in names if "*" in pattern and fnmatch.fnmatchcase(module, pattern)]
    return max(matches)[1] if matches else None


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or around a loop (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module, layers)
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if mine is not None and theirs is not None and theirs < mine:
                problems.append(f"{module} ({layers[mine][0]}) imports {target} ({layers[theirs][0]}), a layer above")
    return problems


# --------------------------------------------------------------------------- the checks
def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if layer_of(name) is None]
    assert not unplaced, f"add these modules to LAYERS in tests/test_imports.py: {unplaced}"


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "modules that import each other: " + "; ".join(" <-> ".join(group) for group in found)


def test_no_upward_imports():
    problems = upward_imports(import_graph())
    assert not problems, "\n".join(problems)


def test_the_checks_find_a_circle_an_upward_import_and_a_late_import(tmp_path):
    """The checks themselves, on a small package: a function-level import that closes a circle
    and imports upward is found."""
    package = tmp_path / "safetune"
    (package / "methods").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "distributed.py").write_text("def wrap():\n    from safetune.methods.layers import blocks\n")
    (package / "methods" / "__init__.py").write_text("")
    (package / "methods" / "layers.py").write_text("from safetune import distributed\nblocks = 1\n")
    graph = import_graph(package)
    assert graph["safetune.distributed"] == {"safetune.methods.layers"}
    assert graph["safetune.methods.layers"] == {"safetune.distributed"}
    assert circles(graph) == [["safetune.distributed", "safetune.methods.layers"]]
    assert upward_imports(graph) == ["safetune.distributed (model, data, loss, processes) imports "
                                     "safetune.methods.layers (safety methods), a layer above"]
