"""The parts folder of a results file: what a walk has finished since the file was last rewritten.

Rewriting the whole file after every checkpoint costs time linear in its rows, quadratic over a walk (0.25 s per
checkpoint at 2000 rows, benchmarks/store.py), and torchrun's ranks cannot all rewrite one file. So a finished unit
of work (a checkpoint's row and probes, a group of refined λ̂) is written as a small file of its own,
`<file>.parts/<name>.h5`, in the results file's own layout, atomically (atomic.py): its cost does not grow with the
walk. The writer folds the parts into the file now and then (results.merge, when they outnumber its rows: amortized
O(1) per checkpoint) and at the end of the walk, then deletes them.

Every reader folds in the parts present (a part's row replaces the file's row of the same step), so a walk killed at
any moment leaves a file that reads complete up to its last finished part, and a rerun skips what the parts hold.
Folding is idempotent: a writer killed between writing the merged file and deleting the parts leaves parts that
repeat what the file holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional, TypeVar

import h5py

T = TypeVar("T")


def folder(path: Path | str) -> Path:
    """`<file>.parts`, beside the results file."""
    path = Path(path)
    return path.with_name(f"{path.name}.parts")


def files(path: Path | str) -> list[Path]:
    """The complete parts of results file `path`, in name order (temporaries are not parts)."""
    try:
        return sorted(p for p in folder(path).iterdir() if p.suffix == ".h5")
    except (FileNotFoundError, NotADirectoryError):
        return []


def part_name(step: int, rank: int = 0) -> str:
    """The part of checkpoint `step` written by `rank`: a rank writes one per checkpoint, so names never collide."""
    return f"step_{step:012d}.rank{rank}"


def remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def remove_all(path: Path | str) -> None:
    """The parts folder and everything in it (a walk that starts again, or a results file that is gone)."""
    shutil.rmtree(folder(path), ignore_errors=True)


def remove_temporaries(path: Path | str) -> None:
    """Half-written parts of dead writers. Called by the writer-lock holder as it opens the file, before any process
    of its run writes a part (a torchrun walk's other ranks wait for it): every temporary there is a dead one's, on
    whichever host it ran (their process ids are not this host's to check)."""
    for tmp in folder(path).glob("*.tmp*"):
        tmp.unlink(missing_ok=True)


def remove_folder_if_empty(path: Path | str) -> None:
    try:
        folder(path).rmdir()
    except OSError:  # not empty (a part written meanwhile), or not there
        pass


def read_each(path: Path | str, read_main: Callable[[Path], T], read_part: Callable[[Path], T]
              ) -> tuple[T, list[tuple[Path, T]]]:
    """(read_main(the results file), [(part, read_part(part)) for each part, in name order]).

    A part that vanishes between the listing and its reading was merged into the file meanwhile, perhaps after the
    file was read: everything is read again."""
    while True:
        listed = files(path)
        main = read_main(Path(path))
        try:
            return main, [(p, read_part(p)) for p in listed]
        except FileNotFoundError:
            continue


def read_folded(path: Path | str, read_one: Callable[[h5py.File], Optional[T]],
                fold: Callable[[T, T], T]) -> Optional[T]:
    """read_one(file) of the results file, with read_one(part) of each part folded in, in name order (read_each)."""

    def read(p: Path) -> Optional[T]:
        with h5py.File(p, "r") as f:
            return read_one(f)

    out, pieces = read_each(path, read, read)
    for _, got in pieces:
        if got is not None:
            out = got if out is None else fold(out, got)
    return out
