"""Bad input -> one line naming the field and the file (and line), a non-zero exit, no traceback.

One row per case, run through the real CLI in-process: the files that make the input
bad (written under the test's folder first), the command line, the exit code and a
piece of the expected message. docs/errors.md lists the same cases for users.

Adding a case is one `row(...)` line. In the command and the message, {recipe} is a valid
recipe (tiny model, tiny data, output under {tmp}/run), {tmp} the test's folder and {model}
the tiny model folder. A file's content is text, bytes, a function of those paths, or FIFO
(a named pipe). A case may also set environment variables, run in another working directory,
and name a file that must still be there afterwards (nothing of the user's was deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import pytest
import yaml
from typer.testing import CliRunner

from safetune.cli import app
from safetune.modeling import warn_once

Content = Union[str, bytes, Callable[[dict], Union[str, bytes]]]
FIFO = object()  # a named pipe: reading it would wait forever


@dataclass
class Case:
    command: str  # shell-quoted; {recipe} {tmp} {model} are filled in
    code: int
    message: str  # must appear in the output; for an error, in its one `error:` line
    files: dict[str, Content] = field(default_factory=dict)
    absent: str | None = None  # must not exist afterwards: the error came before any work
    present: str | None = None  # must still exist afterwards: nothing of the user's was deleted
    env: dict[str, str] = field(default_factory=dict)  # {tmp} is filled in
    cwd: str | None = None  # the working directory to run in ({tmp} is filled in)


def row(id: str, command: str, code: int, message: str, **more) -> pytest.param:
    return pytest.param(Case(command, code, message, **more), id=id)


def copy_recipe(paths: dict) -> bytes:
    return Path(paths["recipe"]).read_bytes()


def model_config(paths: dict) -> bytes:
    return (Path(paths["model"]) / "config.json").read_bytes()


def model_weights(paths: dict) -> bytes:
    return (Path(paths["model"]) / "model.safetensors").read_bytes()


def half_weights(paths: dict) -> bytes:
    weights = model_weights(paths)
    return weights[: len(weights) // 2]


def weights_manifest(paths: dict) -> str:
    """The MANIFEST.json safetune writes beside a checkpoint's files, for the whole weights."""
    weights = model_weights(paths)
    return json.dumps({"model.safetensors": {"bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}})


def recipe_with_base(paths: dict) -> str:
    return "base: base.yaml\n" + copy_recipe(paths).decode()


FINISHED_WITHOUT_REPORT = {"run/.safetune-run": "{}", "run/final/CHECKPOINT_COMPLETE": "ok\n",
                           "run/recipe.resolved.yaml": copy_recipe}


GOOD_ROW = '{"prompt": "What is 1 plus 1?", "response": "2"}\n'
DRY = "train {recipe} --dry-run"

CASES = [
    # ---- recipe files and overrides (checked by `validate`, the same as by every verb)
    row("unknown-key", "validate {recipe} train.lerning_rate=1e-3", 2,
        "train.lerning_rate: unknown key (did you mean learning_rate?)"),
    row("bad-value", "validate {recipe} train.batch_size=lots", 2, "train.batch_size: Input should be a valid integer"),
    row("override-without-value", "validate {recipe} train.max_steps", 2, "expected key.sub=value"),
    row("recipe-missing", "validate {tmp}/nope.yaml", 2, "{tmp}/nope.yaml: recipe file not found"),
    row("recipe-is-a-folder", "validate {tmp}", 2, "{tmp}: is a directory; give a recipe YAML file"),
    row("recipe-invalid-yaml", "validate {tmp}/broken.yaml", 2, "{tmp}/broken.yaml:3:",
        files={"broken.yaml": "model:\n  path: x\n data: [1\n"}),
    row("recipe-not-utf8", "validate {tmp}/latin.yaml", 2, "{tmp}/latin.yaml:2: not UTF-8 text (byte 0xe9)",
        files={"latin.yaml": b"model: {path: x}\ndescription: caf\xe9\n"}),
    row("recipe-not-a-mapping", "validate {tmp}/list.yaml", 2, "a recipe is a mapping of sections",
        files={"list.yaml": "- model\n- data\n"}),
    row("unknown-method", "validate {recipe} method=safegard", 2, "unknown method 'safegard' (did you mean safegrad?)"),
    row("name-escapes-runs", "validate {recipe} name=..", 2, "name: use letters, digits"),
    row("name-hidden", "validate {recipe} name=.hidden", 2, "not starting with a dot"),
    row("name-with-slash", "validate {recipe} name=a/b", 2, "name: use letters, digits"),
    row("file-name-with-space", "validate '{tmp}/my recipe.yaml'", 0, "name: my-recipe",
        files={"my recipe.yaml": copy_recipe}),
    row("truncation-value", "validate {recipe} data.truncation=cut", 2, "data.truncation: Input should be"),
    # ---- run folders: never delete what safetune did not write
    row("output-dir-not-a-run", "train {recipe}", 2,
        "output.dir: {tmp}/run is not empty and is not a safetune run folder (it holds photos, thesis.tex); "
        "safetune deletes nothing it did not write: choose a new or empty output.dir",
        files={"run/thesis.tex": "chapter 1", "run/photos/a.jpg": b"\xff\xd8"}, present="{tmp}/run/thesis.tex"),
    row("output-dir-not-a-run-overwrite", "train {recipe} output.overwrite=true", 2,
        "is not a safetune run folder (it holds thesis.tex)", files={"run/thesis.tex": "chapter 1"},
        present="{tmp}/run/thesis.tex"),
    row("output-dir-not-a-run-resume", "train {recipe} --resume", 2,
        "is not a safetune run folder (it holds thesis.tex)", files={"run/thesis.tex": "chapter 1"},
        present="{tmp}/run/thesis.tex"),
    row("older-run-folder-is-recognised", "train {recipe}", 2,
        "output.dir: {tmp}/run already holds a run; add --resume",
        files={"run/recipe.resolved.yaml": copy_recipe, "run/metrics.jsonl": ""}),
    row("resume-finished-without-report", "train {recipe} --resume", 2,
        "--resume: {tmp}/run finished training (final/ is complete) but its final evaluation did not; "
        "write the safety report with: safetune eval {tmp}/run/final", files=FINISHED_WITHOUT_REPORT),
    # ---- data read exactly as written
    row("csv-extra-field", DRY + " data.train.path={tmp}/t.csv", 1,
        "line 3 of {tmp}/t.csv has 3 fields, the header has 2; put a field that holds a comma in double quotes",
        files={"t.csv": "prompt,response\na,b\nHi, there,b\n"}),
    row("csv-unnamed-column", DRY + " data.train.path={tmp}/t.csv", 1,
        "line 2 of {tmp}/t.csv has a value in column 3, which the header does not name",
        files={"t.csv": "prompt,response,\na,b,c\n"}),
    row("csv-header-twice", DRY + " data.train.path={tmp}/t.csv", 1,
        "{tmp}/t.csv:1: column 'prompt' appears twice in the header", files={"t.csv": "prompt,prompt,response\n"}),
    row("prompt-is-a-list", DRY + " data.train.path={tmp}/l.jsonl", 1,
        "line 2 of {tmp}/l.jsonl: column 'prompt' holds a list ([\"a\", \"b\"]), not text; write it as a string",
        files={"l.jsonl": GOOD_ROW + '{"prompt": ["a", "b"], "response": "c"}\n'}),
    row("response-is-a-number", DRY + " data.train.path={tmp}/n.jsonl", 1,
        "line 1 of {tmp}/n.jsonl: column 'response' holds a number (2), not text",
        files={"n.jsonl": '{"prompt": "1 + 1?", "response": 2}\n'}),
    row("empty-response-is-left-out", DRY + " data.train.path={tmp}/e.jsonl", 0,
        "warning: data.train: 1 of 5 rows have an empty prompt or response (first: line 5 of {tmp}/e.jsonl); "
        "left out (data.empty_rows=error stops at them instead)",
        files={"e.jsonl": GOOD_ROW * 4 + '{"prompt": "hi", "response": ""}\n'}),
    row("empty-prompt-error", DRY + " data.train.path={tmp}/e.jsonl data.empty_rows=error", 1,
        "data.train: line 2 of {tmp}/e.jsonl: the prompt is empty (data.empty_rows=error)",
        files={"e.jsonl": GOOD_ROW + '{"prompt": " ", "response": "b"}\n'}),
    row("data-is-a-fifo", DRY + " data.train.path={tmp}/pipe.jsonl", 2,
        "data.train.path: {tmp}/pipe.jsonl is not a regular file (a pipe or a device)", files={"pipe.jsonl": FIFO}),
    row("data-bundled-file-is-named", DRY + " data.train.path=data/tasks/count/train.jsonl data.train.limit=8", 0,
        "warning: data.train.path: 'data/tasks/count/train.jsonl' is neither in the working directory nor beside "
        "the recipe; using safetune's bundled file", cwd="{tmp}"),
    row("data-beside-the-recipe-wins-over-bundled", DRY + " data.train.path=data/tasks/count/train.jsonl", 0,
        "data.train: {tmp}/data/tasks/count/train.jsonl", cwd="{tmp}/elsewhere",
        files={"data/tasks/count/train.jsonl": GOOD_ROW * 4, "elsewhere/.keep": ""}),
    row("recipe-duplicate-key", "validate {tmp}/dup.yaml", 2,
        "{tmp}/dup.yaml:3: train.max_steps: written twice (first on line 2); keep one",
        files={"dup.yaml": "train:\n  max_steps: 1\n  max_steps: 2\n"}),
    row("recipe-duplicate-section", "validate {tmp}/dup.yaml", 2,
        "{tmp}/dup.yaml:3: train: written twice (first on line 1); keep one",
        files={"dup.yaml": "train:\n  max_steps: 1\ntrain:\n  batch_size: 2\n"}),
    row("recipe-duplicate-key-in-base", "validate {tmp}/top.yaml", 2,
        "{tmp}/base.yaml:2: eval.max_new_tokens: written twice (first on line 1); keep one",
        files={"base.yaml": "eval: {max_new_tokens: 4,\n  max_new_tokens: 8}\n", "top.yaml": recipe_with_base}),
    row("recipe-is-a-fifo", "validate {tmp}/pipe.yaml", 2, "{tmp}/pipe.yaml: not a regular file",
        files={"pipe.yaml": FIFO}),
    row("override-empty-segment", "validate {recipe} train..x=1", 2,
        "override 'train..x=1': an empty name between dots in 'train..x'; expected key.sub=value"),
    row("method-list-empty", "validate {recipe} method=[]", 2,
        "method: give at least one method (standard for plain fine-tuning)"),
    row("eval-baseline-flag-missing", "eval {model} --recipe {recipe} --baseline {tmp}/nope.json", 2,
        "--baseline: {tmp}/nope.json: no safety report here", absent="{tmp}/run/baseline"),
    row("lab-build-threads-zero", "lab build --out {tmp}/lab --threads 0 --no-classifier --quiet", 2,
        "--threads: give 1 or more (got 0)", absent="{tmp}/lab"),
    row("real-build-steps-zero", "real build --out {tmp}/aligned --steps 0 --quiet", 2,
        "--steps: give 1 or more (got 0)", absent="{tmp}/aligned-base"),
    row("real-build-contrast-negative", "real build --out {tmp}/aligned --contrast-rows -1 --quiet", 2,
        "--contrast-rows: give 0 or more (got -1)", absent="{tmp}/aligned-base"),
    row("real-build-contrast-too-many", "real build --out {tmp}/aligned --contrast-rows 5000 --quiet", 2,
        "real: contrast_rows 5000 is more than the 2995 rows of data/safety/train.jsonl",
        absent="{tmp}/aligned-base"),  # checked before the model is converted
    row("real-build-over-their-folder", "real build --out {tmp}/theirs --quiet", 2,
        "real: {tmp}/theirs exists and is not a safetune build; move it or choose --out",
        files={"theirs/notes.txt": "mine"}, present="{tmp}/theirs/notes.txt"),
    row("real-build-over-their-base", "real build --out {tmp}/aligned --quiet", 2,
        "real: {tmp}/aligned-base exists and is not a safetune build",
        files={"aligned-base/notes.txt": "mine"}, present="{tmp}/aligned-base/notes.txt"),
    row("warmup-longer-than-the-run", DRY + " train.warmup_steps=5", 0,
        "warning: train.warmup_steps (5) is not shorter than the run (1 steps); the learning rate never reaches "
        "train.learning_rate"),
    row("cache-is-a-file", DRY, 2, "SAFETUNE_CACHE: {tmp}/cache is a file, not a folder; point SAFETUNE_CACHE at a folder",
        files={"cache": "not a folder"}, env={"SAFETUNE_CACHE": "{tmp}/cache"}),
    # ---- data files (read by `train`; --dry-run saves nothing)
    row("data-missing", DRY + " data.train.path={tmp}/nope.jsonl", 2, "data.train.path: file not found: {tmp}/nope.jsonl"),
    row("data-is-a-folder", DRY + " data.train.path={tmp}/folder", 2, "data.train.path: {tmp}/folder is a directory",
        files={"folder/a.jsonl": GOOD_ROW}),
    row("data-not-utf8", DRY + " data.train.path={tmp}/latin.jsonl", 1,
        "data.train.path: {tmp}/latin.jsonl:2: not UTF-8 text (byte 0xe9)",
        files={"latin.jsonl": GOOD_ROW.encode() + b'{"prompt": "caf\xe9", "response": "b"}\n'}),
    row("jsonl-invalid", DRY + " data.train.path={tmp}/bad.jsonl", 1, "{tmp}/bad.jsonl:2: invalid JSON",
        files={"bad.jsonl": GOOD_ROW + "{oops\n"}),
    row("jsonl-not-an-object", DRY + " data.train.path={tmp}/n.jsonl", 1, "{tmp}/n.jsonl:3: expected a JSON object",
        files={"n.jsonl": GOOD_ROW + "\n42\n"}),
    row("jsonl-line-numbers", DRY + " data.train.path={tmp}/gaps.jsonl", 1,
        "line 5 of {tmp}/gaps.jsonl has no column 'response'",
        files={"gaps.jsonl": GOOD_ROW + "\n\n" + GOOD_ROW + '{"prompt": "a"}\n'}),
    row("csv-line-numbers", DRY + " data.train.path={tmp}/t.csv data.train.response_field=answer", 1,
        "line 4 of {tmp}/t.csv has 1 fields, the header has 2", files={"t.csv": "prompt,answer\na,b\n\nc\n"}),
    row("json-null", DRY + " data.train.path={tmp}/n.jsonl", 1, "line 1 of {tmp}/n.jsonl: column 'response' has no value",
        files={"n.jsonl": '{"prompt": "a", "response": null}\n'}),
    row("json-item", DRY + " data.train.path={tmp}/t.json", 1, "item [1] of {tmp}/t.json has no column 'response'",
        files={"t.json": '[{"prompt": "a", "response": "b"}, {"prompt": "c"}]'}),
    row("too-long-truncated-is-reported", DRY + " data.max_seq_len=12", 0,
        "data.train: 40 of 40 examples are longer than data.max_seq_len=12 tokens: truncated"),
    row("too-long-error", DRY + " data.max_seq_len=8 data.truncation=error", 1,
        "longer than data.max_seq_len=8 (data.truncation=error)"),
    row("too-long-all-dropped", DRY + " data.max_seq_len=8 data.truncation=drop", 1,
        "data.train: all 40 examples are longer than data.max_seq_len=8 tokens"),
    # ---- models
    row("model-missing", DRY + " model.path=/nope/model", 2, "model.path: '/nope/model' is not available locally"),
    row("model-folder-not-a-model", DRY + " model.path={tmp}/empty", 2,
        "model.path: {tmp}/empty is not a Hugging Face model folder (no config.json)", files={"empty/notes.txt": "hi"}),
    row("model-config-without-type", DRY + " model.path={tmp}/odd", 2, "model.path: {tmp}/odd/config.json has no model_type",
        files={"odd/config.json": "{}", "odd/model.safetensors": b""}),
    row("model-pickle-weights", DRY + " model.path={tmp}/pickled", 2,
        "model.path: {tmp}/pickled has only pickle weights (pytorch_model.bin)",
        files={"pickled/config.json": model_config, "pickled/pytorch_model.bin": b"never unpickled"}),
    row("trust-remote-code-warns", DRY + " model.trust_remote_code=true", 0,
        "warning: model.trust_remote_code is true: Python code that comes with {model}"),
    row("eval-folder-not-a-model", "eval {tmp}/empty --recipe {recipe}", 2,
        "checkpoint: {tmp}/empty is not a Hugging Face model folder (no config.json)",
        files={"empty/notes.txt": "hi"}, absent="{tmp}/run/baseline"),
    row("model-weights-random-bytes", DRY + " model.path={tmp}/rnd", 1,
        "model.path: {tmp}/rnd/model.safetensors is not a safetensors file",
        files={"rnd/config.json": model_config, "rnd/model.safetensors": os.urandom(4096)}),
    row("model-weights-truncated-with-manifest", DRY + " model.path={tmp}/cut", 1,
        "model.path: {tmp}/cut/model.safetensors is damaged (",
        files={"cut/config.json": model_config, "cut/model.safetensors": half_weights, "cut/MANIFEST.json": weights_manifest}),
    row("model-weights-truncated", DRY + " model.path={tmp}/cut", 1,
        "model.path: {tmp}/cut/model.safetensors is damaged (",
        files={"cut/config.json": model_config, "cut/model.safetensors": half_weights}),
    row("model-without-tokenizer", DRY + " model.path={tmp}/notok", 2,
        "model.path: {tmp}/notok has no tokenizer (none of tokenizer.json, tokenizer_config.json, tokenizer.model, "
        "vocab.json, vocab.txt, spiece.model); save the tokenizer into the model folder",
        files={"notok/config.json": model_config, "notok/model.safetensors": model_weights}),
    row("eval-corrupt-checkpoint", "eval {tmp}/rnd --recipe {recipe}", 1,
        "checkpoint: {tmp}/rnd/model.safetensors is not a safetensors file",
        files={"rnd/config.json": model_config, "rnd/model.safetensors": b"\x00" * 64}, absent="{tmp}/run/baseline"),
    row("eval-out-is-a-file", "eval {model} --recipe {recipe} --out {tmp}/report.txt", 2,
        "--out: {tmp}/report.txt is a file; give a folder for the report", files={"report.txt": "mine"},
        absent="{tmp}/run/baseline"),
    row("eval-flag-out-of-range", "eval {model} --recipe {recipe} --min-harmful-retained -5", 2,
        "--min-harmful-retained: Input should be greater than or equal to 0 (got -5.0)", absent="{tmp}/run/baseline"),
    row("eval-folder-missing", "eval {tmp}/nope --recipe {recipe}", 2, "{tmp}/nope: checkpoint folder not found"),
]


def write_recipe(tmp_path: Path, model: Path, data: dict[str, Path]) -> Path:
    """A valid recipe: every case breaks one thing of it (no `name`: it comes from the file name)."""
    tree = {
        "model": {"path": str(model)},
        "data": {"train": {"path": str(data["task"])}, "safety": {"path": str(data["safety"])}, "max_seq_len": 64},
        "method": "mix",
        "train": {"max_steps": 1, "batch_size": 4, "device": "cpu"},
        "eval": {"suites": [{"kind": "harmful", "path": str(data["safety"])}], "max_new_tokens": 4},
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Case, tmp_path, tiny_model_dir, tiny_data, monkeypatch):
    paths = {"recipe": str(write_recipe(tmp_path, tiny_model_dir, tiny_data)), "tmp": str(tmp_path),
             "model": str(tiny_model_dir)}
    for name, content in case.files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if content is FIFO:
            os.mkfifo(target)
            continue
        content = content(paths) if callable(content) else content
        target.write_bytes(content.encode() if isinstance(content, str) else content)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(**paths))
    if case.cwd:
        monkeypatch.chdir(case.cwd.format(**paths))
    warn_once.cache_clear()  # warnings are once per process; each case is a fresh command

    result = CliRunner().invoke(app, [part.format(**paths) for part in shlex.split(case.command)])

    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    assert result.exit_code == case.code, output
    message = case.message.format(**paths)
    if case.code:
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], output
    else:
        assert message in output, output
    if case.absent:
        assert not Path(case.absent.format(**paths)).exists()
    if case.present:
        assert Path(case.present.format(**paths)).exists()


def test_pickle_weights_load_when_allowed_with_a_warning(tmp_path, tiny_model_dir, tiny_data):
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(tiny_model_dir / "model.safetensors"), pickled / "pytorch_model.bin")
    recipe = write_recipe(tmp_path, tiny_model_dir, tiny_data)
    warn_once.cache_clear()

    result = CliRunner().invoke(app, ["train", str(recipe), "--dry-run", f"model.path={pickled}",
                                      "model.allow_pickle=true"])

    assert result.exit_code == 0, result.output
    assert f"warning: model.allow_pickle is true: pickle weights of {pickled} may be loaded" in result.output
