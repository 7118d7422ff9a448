"""metrics.jsonl (and optionally TensorBoard): one JSON object per logged step.

Strict JSON: a non-finite number is written as null (bare NaN is not JSON). On resume
the rows after the checkpoint's step are trimmed, so replayed steps are not logged twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetune.errors import SafetuneError
from safetune.files import write_atomic


def json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    def __init__(self, path: Path, tensorboard_dir: Path | None = None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled  # in a distributed run only rank 0 writes
        self.handle = self.path.open("a", encoding="utf-8") if enabled else None
        self.writer = _tensorboard(tensorboard_dir) if tensorboard_dir and enabled else None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps({key: json_safe(value) for key, value in record.items()}) + "\n")
        self.handle.flush()
        if self.writer:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, float(value), record["step"])

    def close(self) -> None:
        if self.handle:
            self.handle.close()
        if self.writer:
            self.writer.close()


def trim_after(path: Path, step: int) -> int:
    """Drop rows logged after `step` (they will be replayed by a resume); return how many."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a line cut short by the crash
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        write_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SafetuneError("output.tensorboard: install tensorboard (pip install tensorboard)") from None
    return SummaryWriter(str(folder))
