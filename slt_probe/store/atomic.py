"""Files replaced in one step: a reader, or a process killed mid-write, sees the old file or the new one, never half.

HDF5 is not journaled (a writer killed mid-update can leave a file that no longer opens), so nothing here is
modified in place: each update writes a complete new file beside the old one and renames it over it (os.replace is
atomic on POSIX and Windows). Every writer of the package goes through atomic_path.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path` to write to; when the block ends without error it becomes `path`.

    The temporary is named `<name>.tmp<pid>`: two processes writing the same file each have their own, and
    remove_stale_temporaries finds those a killed writer left.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        commit(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def commit(tmp: Path, path: Path) -> None:
    """Make tmp the file at path: durable first, then renamed over it in one step."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())  # the rename must not become visible before the data
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its rename is durable enough
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(path: Path | str) -> None:
    """Temporaries of `path` left by writers that are dead (never the live file, never a running writer's)."""
    for tmp in Path(path).parent.glob(f"{Path(path).name}.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            continue
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists is checked
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True
