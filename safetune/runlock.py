"""One writer per run folder: an OS lock held while a run trains and evaluates.

The lock is an OS file lock (`filelock`) on <run>/.safetune-lock; beside it, .safetune-lock.json
names the holder (process id, host, command, start time) so that a refused run can say who
holds the folder. The operating system drops the lock when its process dies, so a run that
crashed leaves no lock behind, only the holder file: the next run takes over and says so.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from safetune.errors import UsageError
from safetune.files import write_atomic

LOCK_FILE = ".safetune-lock"
HOLDER_FILE = ".safetune-lock.json"

# run folder -> its lock, for the runs this process holds: a second run in the same process
# (the tests, a notebook) reuses the lock instead of being refused by its own process.
_held: dict[Path, FileLock] = {}


def lock_run_dir(run_dir: Path, say=print) -> None:
    """Hold the run folder for this process, or refuse in one line naming the process that holds it."""
    key = Path(run_dir).resolve()
    if key in _held:
        return
    lock = FileLock(str(key / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"output.dir: {run_dir} is in use by {_describe(read_holder(key))}; wait for it to "
                         "finish or stop it (one run writes to a folder at a time)") from None
    except OSError as err:
        raise UsageError(f"output.dir: cannot write to {run_dir} ({err.strerror or err})") from None
    stale = read_holder(key)
    if stale:  # the OS let go of its lock: that process ended without releasing the folder
        say(f"note: output.dir: {run_dir} was held by {_describe(stale)}, which is no longer running; "
            "taking it over")
    write_atomic(key / HOLDER_FILE, json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["safetune", *sys.argv[1:]]) if sys.argv else "safetune",
    }, indent=1))
    _held[key] = lock


def unlock_run_dir(run_dir: Path) -> None:
    """Release the folder (the end of a run, successful or not)."""
    key = Path(run_dir).resolve()
    lock = _held.pop(key, None)
    if lock is None:
        return
    (key / HOLDER_FILE).unlink(missing_ok=True)
    lock.release()


def read_holder(run_dir: Path) -> dict | None:
    try:
        holder = json.loads((Path(run_dir) / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    where = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    since = f", since {holder['started']}" if holder.get("started") else ""
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"process {holder.get('pid', '?')}{where}{command}{since}"
