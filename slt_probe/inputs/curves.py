"""A λ̂ curve from elsewhere (a published curve, a wandb export, another tool) read from a CSV or TSV file.

    curve = read_curve("curve.csv", step="_step", llc="llc/mean", se="llc/se")

One row per checkpoint: a step column, a λ̂ column, and optionally its standard error and the loss. The delimiter
(, tab ;) is sniffed. wandb exports are read as they come: the step column is `_step` (run exports) or `Step`
(panel exports, whose metric columns read "run - llc/mean", with "__MIN" / "__MAX" beside them), steps may be written
as floats ("1000.0"), and a metric's cell is empty at the steps where it was not logged. Rows without a λ̂ are left
out (and counted); everything else that is wrong stops the read with one line naming the file, the line and the
column. The store writes a curve as a results file (store.curves), so that detection and the plot read it as they
read a walk's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from slt_probe.errors import InputError

# the names a step column goes by, in wandb (run / panel exports, Lightning's logger) and elsewhere
STEP_NAMES = ("step", "_step", "Step", "global_step", "trainer/global_step")
LLC_NAMES = ("llc", "llc_mean", "lambda_hat")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
MIN_ROWS = 5  # what the detector needs to find anything


@dataclass
class CurveTable:
    """A λ̂ curve read from a table, sorted by step: only the rows that have a λ̂."""

    path: Path  # absolute
    sha256: str  # of the file's bytes: which version of the file this is
    step: np.ndarray  # [K] int64
    llc: np.ndarray  # [K] float64
    se: Optional[np.ndarray]  # [K] float64, or None when no s.e. column was named
    loss: Optional[np.ndarray]  # [K] float64 (NaN where the loss was not logged), or None when no loss column
    columns: dict[str, Optional[str]]  # the columns used: {step, llc, se, loss} -> its name in the header, or None
    rows_without_llc: int = 0  # rows left out: the λ̂ cell empty or NaN (wandb: not logged at that step)


def is_table(path: str | Path) -> bool:
    """Whether `slt-probe transitions PATH` reads PATH as a CSV/TSV curve rather than a results file: by its suffix,
    else by its content (anything that is not HDF5). A missing file with another suffix is taken for a results file,
    whose reader says it is missing."""
    path = Path(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return True
    if path.suffix.lower() in (".h5", ".hdf5") or not path.is_file():
        return False
    try:
        return not h5py.is_hdf5(path)
    except OSError:
        return False


def read_curve(path: str | Path, *, step: Optional[str] = None, llc: Optional[str] = None, se: Optional[str] = None,
               loss: Optional[str] = None) -> CurveTable:
    """Read a λ̂ curve from a CSV/TSV file; step, llc, se, loss name its columns (step and llc are found by their
    usual names when not given). InputError, one line naming the file, when it cannot be used."""
    path = Path(path)
    data = _read_bytes(path)
    header, rows = _parse(path, data)
    names = {"step": _step_column(path, header, step), "llc": _llc_column(path, header, llc),
             "se": _column(path, header, se, "--se") if se is not None else None,
             "loss": _column(path, header, loss, "--loss") if loss is not None else None}
    index = {role: header.index(name) for role, name in names.items() if name is not None}

    steps, llcs, ses, losses, lines = [], [], [], [], []
    dropped = 0
    for line, cells in rows:
        if len(cells) != len(header):
            raise InputError(f"{path}: line {line} has {len(cells)} cells, the header {len(header)} (is the "
                             f"delimiter the same on every line?)")
        cell = {role: cells[i] for role, i in index.items()}
        value = _number(path, line, names["llc"], cell["llc"])
        if math.isnan(value):  # not logged at this step
            dropped += 1
            continue
        if math.isinf(value):
            raise InputError(f"{path}: line {line}, column {names['llc']!r}: λ̂ is {cell['llc'].strip()}")
        steps.append(_step(path, line, names["step"], cell["step"]))
        llcs.append(value)
        lines.append(line)
        if se is not None:
            s = _number(path, line, names["se"], cell["se"])
            if not (math.isfinite(s) and s >= 0):
                what = repr(cell["se"].strip()) if cell["se"].strip() else "an empty cell"
                raise InputError(f"{path}: line {line}, column {names['se']!r}: the s.e. of a λ̂ must be a finite "
                                 f"number >= 0, got {what}")
            ses.append(s)
        if loss is not None:
            losses.append(_number(path, line, names["loss"], cell["loss"]))

    seen: dict[int, int] = {}
    for s, line in zip(steps, lines):
        if s in seen:
            raise InputError(f"{path}: step {s} appears twice (lines {seen[s]} and {line}, column {names['step']!r})")
        seen[s] = line
    if len(steps) < MIN_ROWS:
        raise InputError(f"{path}: {len(steps)} rows have a λ̂ (column {names['llc']!r}); at least {MIN_ROWS} are "
                         f"needed to find stages")

    order = np.argsort(np.asarray(steps, dtype=np.int64), kind="stable")
    return CurveTable(
        path=path.resolve(), sha256=hashlib.sha256(data).hexdigest(),
        step=np.asarray(steps, dtype=np.int64)[order], llc=np.asarray(llcs, dtype=np.float64)[order],
        se=np.asarray(ses, dtype=np.float64)[order] if se is not None else None,
        loss=np.asarray(losses, dtype=np.float64)[order] if loss is not None else None,
        columns=names, rows_without_llc=dropped)


# ----------------------------------------------------------------------------------------------------------
# the file, its delimiter and its header


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a CSV/TSV file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not data.strip():
        raise InputError(f"{path}: is empty")
    return data


def _parse(path: Path, data: bytes) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells)]) of the file; blank lines are skipped."""
    try:
        text = data.decode("utf-8-sig")  # Excel and some exporters start with a byte-order mark
    except UnicodeDecodeError:
        raise InputError(f"{path}: is not a text file (a CSV or TSV of a λ̂ curve was expected)") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    rows = []
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((reader.line_num, cells))
    except csv.Error as e:
        raise InputError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    if not rows:
        raise InputError(f"{path}: is empty")
    (_, header), rows = rows[0], rows[1:]
    header = [h.strip() for h in header]
    if all(_is_number(h) for h in header if h):
        raise InputError(f"{path}: has no header (its first line holds numbers): name the columns in a first line, "
                         f"e.g. step,llc,se")
    return header, rows


def _delimiter(text: str) -> str:
    """, tab or ;, sniffed from the first lines; else the one the header holds most of (a one-column file: ,)."""
    sample = "\n".join(text.splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
    except csv.Error:
        first = text.splitlines()[0] if text.splitlines() else ""
        return max(",\t;", key=first.count)


def _columns_list(header: list[str]) -> str:
    return ", ".join(repr(h) for h in header)


def _column(path: Path, header: list[str], name: str, option: str) -> str:
    """The column named `name` (as given with `option`), which must be in the header once."""
    if name not in header:
        raise InputError(f"{path}: no column {name!r} ({option}); its columns are {_columns_list(header)}")
    if header.count(name) > 1:
        raise InputError(f"{path}: column {name!r} ({option}) appears {header.count(name)} times in the header")
    return name


def _guess(path: Path, header: list[str], names: tuple[str, ...], what: str, option: str) -> str:
    found = [h for h in header if h in names]
    if len(found) == 1:
        return _column(path, header, found[0], option)
    if not found:
        raise InputError(f"{path}: which column holds {what}? none is named {', '.join(names[:-1])} or {names[-1]}; "
                         f"name it with {option} (its columns are {_columns_list(header)})")
    raise InputError(f"{path}: several columns could hold {what} ({_columns_list(found)}); choose one with {option}")


def _step_column(path: Path, header: list[str], step: Optional[str]) -> str:
    return _column(path, header, step, "--step") if step else _guess(path, header, STEP_NAMES, "the step", "--step")


def _llc_column(path: Path, header: list[str], llc: Optional[str]) -> str:
    return _column(path, header, llc, "--llc") if llc else _guess(path, header, LLC_NAMES, "λ̂", "--llc")


# ----------------------------------------------------------------------------------------------------------
# cells


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(path: Path, line: int, column: str, text: str) -> float:
    """A cell as a float; an empty cell is NaN (not logged at that step)."""
    text = text.strip()
    if not text:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}: line {line}, column {column!r}: {text[:40]!r} is not a number") from None


def _step(path: Path, line: int, column: str, text: str) -> int:
    """A step: a whole number >= 0, possibly written as a float ("1000.0", as wandb writes them)."""
    value = _number(path, line, column, text)
    where = f"{path}: line {line}, column {column!r}"
    if math.isnan(value):
        raise InputError(f"{where}: no step on a row that has a λ̂")
    if not (math.isfinite(value) and value == math.floor(value)):
        raise InputError(f"{where}: step {text.strip()!r} is not a whole number")
    if value < 0:
        raise InputError(f"{where}: step {text.strip()!r} is negative")
    return int(value)
