"""One writer per results file: a lock (filelock) beside it, held for as long as a walk or a training hook writes.

`<file>.lock` is the lock itself (an OS file lock, released by the system when its holder dies, so a killed walk
never leaves the file locked); `<file>.lock.json` says who holds it, so a second writer's error names the holder.
Readers (h5py, inspect, plot) need no lock: every write replaces the file in one step (atomic.py).

A process that holds the lock may write the file again (detection at the end of a walk, the hook's rows): the locks
this process holds are kept here, by path.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from slt_probe.errors import InputError
from slt_probe.store.atomic import atomic_path

_HELD: dict[Path, "WriterLock"] = {}  # the results files this process holds, by resolved path


def _key(path: Path | str) -> Path:
    return Path(path).resolve()


class WriterLock:
    """The lock of results file `path`. acquire() raises InputError naming the holder, or waits with wait=True."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.lock = FileLock(f"{self.path}.lock")
        self.info = Path(f"{self.path}.lock.json")
        self.depth = 0

    def acquire(self, wait: bool = False) -> "WriterLock":
        held = _HELD.get(_key(self.path))
        if held is not None:  # this process writes it already: one more user of the same lock
            held.depth += 1
            return held
        try:
            self.lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            raise InputError(f"{self.path}: another process is writing it ({self.holder()}); "
                             f"wait for it with --wait, or write elsewhere with --out") from None
        self.depth = 1
        _HELD[_key(self.path)] = self
        with atomic_path(self.info) as tmp:
            tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                       "command": shlex.join(sys.argv)}))
        return self

    def release(self) -> None:
        self.depth -= 1
        if self.depth > 0:
            return
        _HELD.pop(_key(self.path), None)
        self.info.unlink(missing_ok=True)
        self.lock.release()

    def holder(self) -> str:
        """Who holds the lock, as well as its info file says."""
        try:
            h = json.loads(self.info.read_text())
            return f"pid {h['pid']} on {h['host']} since {h['since']}: {h['command']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    def __enter__(self) -> "WriterLock":
        self.entered = self.acquire()
        return self.entered

    def __exit__(self, *exc) -> None:
        self.entered.release()
