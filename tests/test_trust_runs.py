"""Run folders are trusted with work: safetune never deletes what it did not write, one process
writes a run folder at a time, and a full disk or a late signal loses no training.
(The one-line messages of these cases are also listed in docs/errors.md.)"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from safetune import checkpoint as ckpt
from safetune.errors import Interrupted, SafetuneError, UsageError
from safetune.recipe import validate_tree
from safetune.rundir import RUN_MARKER, is_run_entry
from safetune.training import train
from tests.helpers import train_until_interrupted
from tests.test_training import make_recipe

HOLD = """
import sys, time
from pathlib import Path
from safetune.runlock import lock_run_dir
lock_run_dir(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture()
def holder(tmp_path):
    """Another process holding the run folder tmp_path/run; kill it to leave a stale lock."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_MARKER).write_text("{}")
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_folder_another_process_writes_is_refused_then_taken_over_when_it_dies(tiny_model_dir, tiny_data, tmp_path,
                                                                                  holder, capsys):
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')  # the live run's
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", max_steps=2)
    for overrides in ({}, {"overwrite": True}):
        tree["output"] |= overrides
        with pytest.raises(UsageError, match=rf"output.dir: .*run is in use by process {holder.pid} \(.*\), since "):
            train(validate_tree(tree), show_progress=False)
    with pytest.raises(UsageError, match=f"is in use by process {holder.pid}"):
        train(validate_tree(tree), resume=True, show_progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_text().startswith('{"step": 2'), "the live run's files stay"

    holder.kill()
    holder.wait()
    result = train(validate_tree(tree), show_progress=True)  # overwrite=true: the dead run's files go
    assert result.steps == 2
    assert f"was held by process {holder.pid}" in capsys.readouterr().out
    assert not (tmp_path / "run" / ".safetune-lock.json").exists(), "released at the end of the run"


def test_overwrite_removes_only_what_a_run_wrote(tiny_model_dir, tiny_data, tmp_path, capsys):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", max_steps=2)
    train(validate_tree(tree), show_progress=False)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    tree["output"]["overwrite"] = True
    train(validate_tree(tree), show_progress=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert "kept notes.txt" in capsys.readouterr().out


def test_every_file_a_run_writes_is_known_as_the_runs():
    from safetune.audit import AUDIT_FILE
    from safetune.methods.ewc import FISHER_FILE

    for name in (AUDIT_FILE, FISHER_FILE, "token_scores-0123456789abcdef.json", "safety_layers.json", ".tmp-final",
                 ".old-step-4", ".metrics.jsonl.x1.tmp"):
        assert is_run_entry(name), name
    assert not is_run_entry("thesis.tex")


def test_resume_refuses_adding_lora(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=2)
    train_until_interrupted(monkeypatch, validate_tree(tree), 3)
    tree["model"]["lora"] = {"r": 4}
    with pytest.raises(UsageError, match=r"the recipe changed since the run started \(model.lora\)"):
        train(validate_tree(tree), resume=True, show_progress=False)


def test_a_full_disk_before_the_final_save_keeps_the_last_checkpoint(tiny_model_dir, tiny_data, tmp_path,
                                                                      monkeypatch):
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", save_every=2)
    real_usage = ckpt.shutil.disk_usage

    def full_after_checkpoints(path):  # the disk fills up once the periodic checkpoints are written
        usage = real_usage(path)
        full = (tmp_path / "run" / "checkpoints" / "step-6").exists()
        return usage._replace(free=0) if full else usage

    monkeypatch.setattr(ckpt.shutil, "disk_usage", full_after_checkpoints)
    with pytest.raises(SafetuneError, match=r"train: cannot write .*final: 0.00 GiB free on its disk, about .* needed: "
                                            r"the weights of step 6 could not be saved; the newest checkpoint on "
                                            r"disk is .*step-6; free space, then resume with: .* --resume"):
        train(validate_tree(tree), show_progress=False)
    run = tmp_path / "run"
    assert not (run / "final").exists() and not (run / ".tmp-final").exists()
    assert ckpt.latest_checkpoint(run).name == "step-6"


@pytest.mark.parametrize("code", [errno.EFBIG, errno.ENOSPC])
def test_a_write_error_at_the_final_save_is_one_line_and_leaves_no_temporary_folder(tiny_model_dir, tiny_data,
                                                                                      tmp_path, monkeypatch, code):
    def refuse(folder):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ckpt, "write_manifest", refuse)
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", max_steps=2)
    with pytest.raises(SafetuneError, match=rf"cannot write .*final \({os.strerror(code)}\): the weights of step 2 "
                                            r"could not be saved; no checkpoint was saved \(train.save_every is off\)"):
        train(validate_tree(tree), show_progress=False)
    assert not (tmp_path / "run" / ".tmp-final").exists()


def test_sigterm_during_the_final_evaluation_keeps_final_and_says_how_to_finish(tiny_model_dir, tiny_data, tmp_path,
                                                                               monkeypatch):
    import safetune.train_eval as train_eval

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM was not turned into an interruption")

    monkeypatch.setattr(train_eval, "final_report", killed)
    tree = make_recipe(tiny_model_dir, tiny_data, tmp_path / "run", max_steps=2)
    tree["eval"] = {"suites": [{"kind": "harmful", "path": str(tiny_data["safety"])}], "max_new_tokens": 2}
    final = tmp_path / "run" / "final"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match=f"interrupted during the final evaluation; {final} is complete. Write its "
                                          f"safety report with: safetune eval {final}"):
        train(validate_tree(tree), show_progress=False)
    assert ckpt.is_complete(final)
    assert signal.getsignal(signal.SIGTERM) == before, "the handler was put back"
    with pytest.raises(UsageError, match=f"finished training .* but its final evaluation did not; write the safety "
                                         f"report with: safetune eval {final}"):
        train(validate_tree(tree), resume=True, show_progress=False)
