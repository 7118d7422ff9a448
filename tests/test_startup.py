"""CLI start-up: the quick verbs never import torch or transformers (seconds of start-up)."""

import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import sys
from typer.testing import CliRunner
import safetune.cli
result = CliRunner().invoke(safetune.cli.app, {argv!r})
assert result.exit_code == 0, result.output
heavy = [name for name in ("torch", "transformers", "datasets") if name in sys.modules]
print(",".join(heavy) or "none")
"""


@pytest.mark.parametrize("argv", [["--help"], ["validate", str(Path(__file__).resolve().parents[1] / "recipes/lab/sentiment-mix.yaml")], ["recipes"],
                                  ["train", "--help"]])
def test_quick_verbs_do_not_import_torch(argv):
    out = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "none"
