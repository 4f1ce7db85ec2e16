"""A λ̂ curve read from a CSV/TSV file (inputs.curves), written as a results file so that everything downstream
(detection, the plot, inspect, load_results) reads it as it reads a walk's.

The file has the walk's schema with nothing sampled: one row per step with status and verdict "ok", llc_mean, llc_se
(NaN without an s.e. column) and init_loss (the loss column; NaN without one), and 0 chains, draws and burn-in
(llc_per_chain is [K, 0]). Root attribute `engine` = "external" says so; `source` names the table it was read from
(absolute path, sha256, the columns used). A conversion replaces an earlier conversion at the same path, and nothing
else: a walk's results are never overwritten by a curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import h5py

from slt_probe.errors import InputError, OutputError
from slt_probe.inputs.curves import CurveTable
from slt_probe.store.atomic import remove_stale_temporaries
from slt_probe.store.h5 import decode_attr, utc_now, versions
from slt_probe.store.lock import WriterLock
from slt_probe.store.results import SCHEMA, SCHEMA_VERSION, check_output, empty_row, write

ENGINE = "external"  # the `engine` of a file whose λ̂ was computed elsewhere


def curve_attrs(curve: CurveTable, meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The root attributes of a curve's file; `meta` adds the conversion's own (the command line, ...)."""
    v = versions()
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "description": f"λ̂ curve read from the table {curve.path.name} (computed elsewhere; nothing was sampled)",
        "created": utc_now(), "engine": ENGINE, "config_resolved": {},
        "source": {"csv": str(curve.path), "sha256": curve.sha256, "columns": curve.columns,
                   "rows_without_llc": curve.rows_without_llc},
        "versions": v, "slt_probe_version": v["slt-probe"], **(meta or {}),
    }


def curve_rows(curve: CurveTable) -> list[dict[str, Any]]:
    """One row per step: what the table says, NaN for what it does not."""
    rows, finished = [], utc_now()
    for i, step in enumerate(curve.step):
        row = empty_row(0, 0, 0)
        row.update(step=int(step), status="ok", verdict="ok", finished=finished, llc_mean=float(curve.llc[i]))
        if curve.se is not None:
            row["llc_se"] = float(curve.se[i])
        if curve.loss is not None:
            row["init_loss"] = float(curve.loss[i])
        rows.append(row)
    return rows


def is_curve_file(path: Path) -> bool:
    """Whether `path` holds a curve converted from a table (and so may be replaced by another conversion)."""
    try:
        with h5py.File(path, "r") as f:
            return decode_attr(f.attrs.get("schema")) == SCHEMA and decode_attr(f.attrs.get("engine")) == ENGINE
    except OSError:
        return False


def write_curve(path: str | Path, curve: CurveTable, meta: Optional[dict[str, Any]] = None) -> Path:
    """Write `curve` as a results file at `path`, atomically, replacing an earlier conversion there (its transitions
    go with it). InputError when `path` holds anything else; OutputError when it cannot be written."""
    path = Path(path)
    check_output(path)
    with WriterLock(path):
        if path.exists() and not is_curve_file(path):
            raise InputError(f"{path}: exists and is not a curve converted from a CSV/TSV file (a walk's results?); "
                             f"nothing was changed; write elsewhere with --out")
        remove_stale_temporaries(path)
        try:
            write(path, curve_attrs(curve, meta), curve_rows(curve), 0, 0, 0)
        except OSError as e:
            raise OutputError(f"{path}: could not be written ({e.strerror or e}); it keeps what it held before") \
                from None
    return path
