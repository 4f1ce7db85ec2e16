"""The HDF5 results file of a walk: its schema, in one place, and how it is written and read.

One file per walk. Root attributes describe the run (versions, command line, config, model, data);
datasets run along a checkpoint axis of length K, one row per checkpoint, sorted by step. Every
dataset carries a `description` attribute, so the file explains itself to h5py, pandas or xarray.

Everything a row, a root attribute or the resume rule says is decided here, for the walker and the training hook
alike: both build rows with ResultsFile.new_row / fill_row, describe the run with run_attrs, and continue a file
through ResultsFile, which refuses to mix two computations in one file.

Crash safety: no file is modified in place. A run writes the file once at its start, then each finished unit of work
(a checkpoint's row) as a part beside it (parts.py: a cost that does not grow with the rows), and folds the parts
into the file when they outnumber its rows and at its end; every write is a complete new file renamed over the old
(atomic.py). Readers fold in the parts present, so at any moment, whatever kills the process, the file reads as the
rows finished so far.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import h5py
import numpy as np
import pandas as pd
from torch import nn

from slt_probe.engine.data import Data, num_samples
from slt_probe.engine.estimate import LLCResult
from slt_probe.engine.sampler import NOISE_STREAMS, SGLDConfig
from slt_probe.errors import InputError, OutputError
import slt_probe.store.parts as parts
from slt_probe.store.atomic import atomic_path, remove_stale_temporaries
from slt_probe.store.lock import WriterLock
from slt_probe.store.groups import Probes, Refined
from slt_probe.store.h5 import STR, decode_attr, encode_attr, utc_now, versions
from slt_probe.store.transitions import Transitions, read_transitions

SCHEMA = "slt-probe.walk"
SCHEMA_VERSION = 1
PART_SCHEMA = "slt-probe.walk.part"  # a part (parts.py): the same layout, a few rows, no run attributes

# The writer folds the parts into the file when there are more than this, or than the file's rows (whichever is
# more): a rewrite costs time linear in the rows, paid once every K/1 parts, so O(1) per part on average, while a
# reader never opens more small files than the file has rows (benchmarks/store.py measures both).
MIN_PARTS = 32

# (name, kind, description). kind: scalar dtype, or "chain" [K, C], "trace" [K, C, draws], "burnin" [K, C, burnin].
COLUMNS: list[tuple[str, str, str]] = [
    ("step", "int64", "training step of the checkpoint (from its name or its stored step key)"),
    ("path", "str", "checkpoint file or folder, relative to the checkpoint directory"),
    ("format", "str", "checkpoint format: torch | lightning | safetensors | hf"),
    ("sha256", "str", "sha256 of the checkpoint's weight files; a rerun skips rows whose hash is unchanged"),
    ("status", "str", "ok: estimated; failed: the checkpoint could not be used (see message)"),
    ("message", "str", "why the checkpoint failed (one line); empty when status is ok"),
    ("finished", "str", "when this row was written (ISO 8601, UTC)"),
    ("seconds", "float64", "wall seconds for this checkpoint: loading, L_n(w*) and sampling"),
    ("init_loss", "float64", "L_n(w*): mean loss at the checkpoint on the samples the kept draws see"),
    ("llc_mean", "float64", "λ̂ = nβ (mean sampled loss − L_n(w*)) averaged over the chains that did not diverge"),
    ("llc_std", "float64", "standard deviation of λ̂ across those chains (ddof 1)"),
    ("llc_se", "float64", "standard error of llc_mean: llc_std / sqrt(chains that did not diverge)"),
    ("llc_per_chain", "chain", "λ̂ of each chain [checkpoint, chain]; NaN for a diverged chain"),
    ("loss_trace", "trace", "minibatch loss of every kept draw [checkpoint, chain, draw]"),
    ("burnin_trace", "burnin", "minibatch loss during burn-in [checkpoint, chain, step]; not used in λ̂"),
    ("rhat", "float64", "rank-normalized split R-hat of the loss traces (Vehtari et al. 2021, ArviZ)"),
    ("ess_bulk", "float64", "bulk effective sample size of the loss traces, all chains (ArviZ)"),
    ("ess_tail", "float64", "tail effective sample size of the loss traces, all chains (ArviZ)"),
    ("acceptance", "float64", "mean MALA acceptance probability of the SGLD steps after burn-in"),
    ("drift", "float64", "(λ̂ over the last quarter of draws − λ̂ over the third) / |λ̂|: is the trace still moving"),
    ("chains_ok", "int64", "number of chains that did not diverge"),
    ("verdict", "str", "ok | warn | fail: is this estimate trustworthy (see reasons)"),
    ("reasons", "str", "the diagnostics' reasons for the verdict, joined by '; '"),
]

# Fields of SGLDConfig that may differ between a run and its resume: they change where and how fast it runs,
# not what it computes. (The sampling method is resolved once per run and stored in the `method` attribute.)
RESUME_FREE = {"device", "method", "chain_group"}  # chain_group: how many chains share memory at once


def empty_row(chains: int, draws: int, burnin: int) -> dict[str, Any]:
    """A row with every numeric field NaN (what a failed checkpoint stores)."""
    row: dict[str, Any] = {}
    for name, kind, _ in COLUMNS:
        if kind == "str":
            row[name] = ""
        elif kind == "int64":
            row[name] = 0
        elif kind == "float64":
            row[name] = float("nan")
    row["llc_per_chain"] = np.full(chains, np.nan)
    row["loss_trace"] = np.full((chains, draws), np.nan, dtype=np.float32)
    row["burnin_trace"] = np.full((chains, burnin), np.nan, dtype=np.float32)
    return row


def fill_row(row: dict[str, Any], r: LLCResult) -> None:
    """Copy an estimate into a row."""
    d = r.diagnostics
    row.update(
        status="ok", init_loss=r.init_loss, llc_mean=r.llc_mean, llc_std=r.llc_std, llc_se=r.llc_se,
        llc_per_chain=np.asarray(r.llc_per_chain, dtype=np.float64),
        loss_trace=np.asarray(r.loss_trace, dtype=np.float32), burnin_trace=np.asarray(r.burnin_trace, dtype=np.float32),
        rhat=d.rhat, ess_bulk=d.ess_bulk, ess_tail=d.ess_tail, acceptance=d.acceptance, drift=d.drift,
        chains_ok=d.chains_ok, verdict=d.verdict, reasons="; ".join(d.reasons),
    )


def fail_row(row: dict[str, Any], message: str) -> None:
    """Mark a row failed: the checkpoint (or step) could not be used, and `message` says why in one line."""
    row.update(status="failed", message=message, verdict="fail")


def run_attrs(config: SGLDConfig, device, engine: str, model: nn.Module, data: Data,
              meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The root attributes of a results file: what was computed, on what, with which versions; `meta` adds the
    run's own description (command line, model spec, data spec, ...)."""
    attrs = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "description": "local learning coefficient (λ̂) at each checkpoint of a training run, by slt-probe walk",
        "created": utc_now(), "engine": engine, "device": str(device),
        "config_resolved": config.to_dict(), "num_params": sum(p.numel() for p in model.parameters()),
        "num_samples": num_samples(data), "versions": versions(), **(meta or {}),
    }
    if engine == "slt":  # where each chain's noise comes from: rows that drew other noise are another computation
        attrs["noise"] = NOISE_STREAMS
    for dist in ("slt-probe", "torch", "devinterp"):
        attrs[f"{dist.replace('-', '_')}_version"] = attrs["versions"][dist]
    return attrs


def check_same_run(out: Path, old: dict[str, Any], new: dict[str, Any], hint: str) -> None:
    """Resume only the same computation: same config, engine, model and data (InputError otherwise)."""
    old_cfg = {k: v for k, v in (old.get("config_resolved") or {}).items() if k not in RESUME_FREE}
    new_cfg = {k: v for k, v in new["config_resolved"].items() if k not in RESUME_FREE}
    diff = describe_difference(old_cfg, new_cfg)
    if diff:
        raise InputError(f"{out}: holds a walk with a different config ({diff}); {hint}")
    if new.get("noise") is not None and old.get("noise") != new["noise"]:
        raise InputError(f"{out}: holds a walk whose chains drew their noise another way (an earlier slt-probe: "
                         f"{old.get('noise') or 'one stream for all chains'}); its rows cannot be continued with this "
                         f"one's; {hint}")
    for key in ("engine", "num_params", "num_samples"):
        if old.get(key) != new.get(key):
            raise InputError(f"{out}: holds a walk with a different {key} ({old.get(key)!r} → {new.get(key)!r}); {hint}")
    old_data, new_data = old.get("data") or {}, new.get("data") or {}
    if old_data.get("sha256") != new_data.get("sha256"):
        raise InputError(f"{out}: holds a walk on different data (sha256 {str(old_data.get('sha256'))[:12]} → "
                         f"{str(new_data.get('sha256'))[:12]}); {hint}")
    old_model, new_model = old.get("model") or {}, new.get("model") or {}
    for key in ("spec", "kwargs"):
        if old_model.get(key) != new_model.get(key):
            raise InputError(f"{out}: holds a walk of a different model ({key} {old_model.get(key)!r} → "
                             f"{new_model.get(key)!r}); {hint}")


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> Optional[str]:
    """The first field that differs between two flat dicts, as 'lr 0.0001 → 0.0002', or None."""
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} → {new.get(key)!r}"
    return None


class ResultsFile:
    """A results file being written by a walk or a training hook (its one writer: the lock is held until close()).

    Opening reads what an earlier run left at `path`, its parts folded in (unless overwrite), so that this run
    continues it; adopt() then refuses, before any work, attrs that describe another computation. `hint` ends those
    refusals: what the caller can do instead (the walk names its command-line options, the hook its arguments).
    start() writes the file with this run's attrs; add() then writes each finished unit as a part, and finish()
    folds the parts into the file. Other processes of a torchrun walk write their parts with write_part.
    """

    def __init__(self, path: Path | str, config: SGLDConfig, *, overwrite: bool = False,
                 hint: str = "write elsewhere with --out, or pass --overwrite to start again", wait: bool = False):
        self.path, self.config, self.hint = Path(path), config, hint
        self.previous: Optional[dict[str, Any]] = None  # the attrs of the run this one continues
        self.rows: dict[int, dict[str, Any]] = {}
        self.attrs: dict[str, Any] = {}
        self.started = False
        self.main_rows = 0  # rows in the file itself when it was last written
        check_output(self.path)
        self.lock = WriterLock(self.path).acquire(wait)  # held until close(): one writer at a time
        try:
            if self.path.exists() and not overwrite:
                self.previous, rows = self._read_previous()
                self.rows = {r["step"]: r for r in rows}
            else:  # parts of a file that is gone, or starts again, belong to no run
                parts.remove_all(self.path)
            remove_stale_temporaries(self.path)
            parts.remove_temporaries(self.path)
        except BaseException:
            self.close()
            raise

    def _read_previous(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            return read(self.path)
        except OSError as e:  # unreadable: never advise --overwrite, it would destroy a file that may be valid
            raise InputError(f"{self.path}: exists but cannot be read ({' '.join(str(e).split())}); nothing was "
                             f"changed; write elsewhere with --out") from None
        except ValueError as e:
            raise InputError(f"{self.path}: exists and is not an slt-probe results file ({e}); nothing was changed; "
                             f"write elsewhere with --out") from None

    def close(self) -> None:
        """Let another writer have the file."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def check(self, attrs: dict[str, Any]) -> None:
        """InputError when the run this one continues computed something else than `attrs` describes."""
        if self.previous is not None:
            check_same_run(self.path, self.previous, attrs, self.hint)

    def adopt(self, attrs: dict[str, Any]) -> None:
        """This run's root attributes, once checked; a continued file keeps its creation time."""
        self.check(attrs)
        if self.previous is not None:
            attrs["created"] = self.previous.get("created", attrs["created"])
        self.attrs = attrs

    def resumed_probes(self) -> dict[int, dict[str, Any]]:
        """The probe values of the run continued, by step ({} when none): a rerun measures only what is missing."""
        old = Probes.read(self.path) if self.previous is not None else None
        return old.values if old else {}

    def resumed_refined(self, refine: dict[str, str], num_params: dict[str, int],
                        where: Optional[dict[str, dict]] = None) -> Refined:
        """resume_refined with the refined group of the run continued."""
        old = Refined.read(self.path) if self.previous is not None and refine else None
        return resume_refined(old, refine, num_params, where)

    def new_row(self, step: int) -> dict[str, Any]:
        """A row for `step` with every measured field NaN (what a failed checkpoint stores)."""
        row = empty_row(self.config.chains, self.config.draws, self.config.burnin)
        row["step"] = step
        return row

    def start(self) -> None:
        """The file as this run begins, before any part: save(), unless the file is there with no parts to fold in
        (then this run's attrs are written when finish() folds its parts in; a run that adds nothing leaves the file,
        and its stages, as they were)."""
        if self.previous is None or parts.files(self.path):
            self.save()
        else:
            self.started, self.main_rows = True, len(self.rows)

    def save(self) -> None:
        """The whole file, atomically: this run's attrs, every row in memory, the parts folded in (the first save of
        a new file, or with overwrite, keeps nothing of an old one). The training hook saves after each measurement,
        so that plain h5py sees each as it comes; a walk only at its start, then adds parts."""
        fresh = self.previous is None and not self.started
        self.main_rows = self._written(lambda: merge(self.path, self.attrs or None, self.rows, fresh=fresh,
                                                     shape=(self.config.chains, self.config.draws, self.config.burnin)))
        self.started = True

    def add(self, name: str, rows: list[dict[str, Any]] = (), probes: Optional[Probes] = None,
            refined: Optional[Refined] = None) -> None:
        """A finished unit of work (rows, and the probes and refined λ̂ measured with them) as the part `name`: a cost
        that does not grow with the file. The parts are folded into the file when they outnumber its rows.
        OutputError when it cannot be written (a full disk): the file keeps what it held."""
        for row in rows:
            self.rows[row["step"]] = row
        self._written(lambda: write_part(self.path, name, rows, self.config, probes, refined))
        if len(parts.files(self.path)) > max(MIN_PARTS, self.main_rows):
            self.main_rows = self._written(lambda: merge(self.path, self.attrs or None))

    def finish(self) -> None:
        """Every part folded into the file, the parts folder removed: what h5py, pandas or xarray read is complete."""
        if parts.files(self.path):
            self.main_rows = self._written(lambda: merge(self.path, self.attrs or None))
        parts.remove_folder_if_empty(self.path)

    def _written(self, write_it: Callable[[], Any]) -> Any:
        """write_it(), with a failure to write (OSError) said in one line that names the file."""
        try:
            return write_it()
        except OSError as e:
            raise OutputError(f"{self.path}: could not be written ({e.strerror or e}); it keeps what it held "
                              f"before") from None


def resume_refined(old: Optional[Refined], refine: dict[str, str], num_params: dict[str, int],
                   where: Optional[dict[str, dict]] = None) -> Refined:
    """The refined group a run writes: each component asked for (`refine[name]` its regex or a head's label,
    `num_params[name]` coordinates, `where[name]` its layer and head) with the rows `old` (the continued run's) has for
    the same component; old's other components kept as they are. A changed component starts again."""
    refined = Refined(dict(refine), dict(num_params), {name: {} for name in refine}, dict(where or {}))
    for name, pattern in (old.params if old else {}).items():
        if name not in refine:  # not asked for this time: kept as it is
            refined.params[name], refined.num_params[name] = pattern, old.num_params[name]
            refined.values[name], refined.where[name] = old.values[name], old.where.get(name, {})
        elif refine[name] == pattern and num_params[name] == old.num_params[name]:  # the same: rows reused
            refined.values[name] = old.values[name]
    return refined


def check_output(path: Path) -> None:
    """Refuse, before any work, a results file that could not be written: creates its folder, refuses a folder
    or a folder that cannot be created (InputError, one line)."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; the results file goes inside it, e.g. --out {path / 'results.h5'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path.parent}: cannot create the folder for the results file ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise InputError(f"{path.parent}: the results file cannot be written there (no write permission)")


# ----------------------------------------------------------------------------------------------------------
# writing


# Groups that survive a rewrite of the rows. Transitions do not: they describe the rows they were found in,
# and the walk finds them again at its end.
KEPT_GROUPS = ("probes", "refined")


def write(path: Path, attrs: dict[str, Any], rows: list[dict[str, Any]], chains: int, draws: int, burnin: int,
          probes: Optional[Probes] = None, refined: Optional[Refined] = None, carry: bool = True) -> None:
    """Write the whole file atomically: attrs (JSON-encoded when not str/number), rows sorted by step, and the
    probes and refined groups (from `probes` / `refined` when given, else, with carry, carried over from the file
    replaced)."""
    path = Path(path)
    rows = sorted(rows, key=lambda r: r["step"])
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = encode_attr(value)
            f.attrs["updated"] = utc_now()
            f.attrs["num_checkpoints"] = len(rows)
            k = len(rows)
            for name, kind, description in COLUMNS:
                values = [r[name] for r in rows]
                if kind == "str":
                    ds = f.create_dataset(name, data=np.array(values, dtype=object), dtype=STR, maxshape=(None,))
                elif kind in ("int64", "float64"):
                    ds = f.create_dataset(name, data=np.array(values, dtype=kind).reshape(k), maxshape=(None,))
                else:
                    inner = {"chain": (chains,), "trace": (chains, draws), "burnin": (chains, burnin)}[kind]
                    dtype = np.float64 if kind == "chain" else np.float32
                    arr = np.stack(values).astype(dtype) if values else np.zeros((0, *inner), dtype)
                    big = kind != "chain" and 0 not in inner
                    # one checkpoint per chunk: a row is read or written as a unit
                    ds = f.create_dataset(name, data=arr, maxshape=(None, *inner),
                                          chunks=(1, *inner) if big else None,
                                          compression="gzip" if big else None, shuffle=big)
                ds.attrs["description"] = description
                if kind in ("trace", "burnin", "chain"):
                    ds.attrs["dims"] = json.dumps(["checkpoint", "chain", "draw" if kind == "trace" else "step"][: arr.ndim])
            if probes is not None:
                probes.write(f.create_group("probes"))
            if refined is not None:
                refined.write(f.create_group("refined"), chains)
            if carry and path.exists():
                with h5py.File(path, "r") as old:
                    for name in KEPT_GROUPS:
                        if name in old and name not in f:
                            old.copy(old[name], f, name=name)


def write_part(path: Path, name: str, rows: list[dict[str, Any]], config: SGLDConfig,
               probes: Optional[Probes] = None, refined: Optional[Refined] = None) -> None:
    """A finished unit of work of results file `path` as its part `name` (parts.py), atomically: its rows, and the
    probes and refined λ̂ measured with them. Needs no lock: a part's name is its writer's alone."""
    folder = parts.folder(path)
    folder.mkdir(exist_ok=True)
    write(folder / f"{name}.h5", {"schema": PART_SCHEMA, "schema_version": SCHEMA_VERSION}, list(rows),
          config.chains, config.draws, config.burnin, probes=probes, refined=refined, carry=False)


def merge(path: Path, attrs: Optional[dict[str, Any]] = None, rows: Optional[dict[int, dict[str, Any]]] = None, *,
          fresh: bool = False, shape: tuple[int, int, int] = (0, 0, 0)) -> int:
    """Fold the parts into the file, rewritten atomically, then delete them; returns the file's rows. The caller holds
    the writer lock. attrs replace the file's (the run's own); rows, when given, replace its rows by step; fresh: a
    new file of attrs and rows only (chains, draws, burnin = shape), nothing of the old one kept.

    Idempotent: a part already in the file replaces a row with itself, so a writer killed between the rewrite and the
    deletion leaves nothing wrong behind."""
    path = Path(path)
    if fresh or (rows is not None and attrs is not None and not parts.files(path)):  # nothing to read back
        write(path, attrs or {}, list((rows or {}).values()), *shape, carry=not fresh)
        return len(rows or {})
    main, pieces = _read_all(path, groups=True)
    merged = {r["step"]: r for r in _rows(main.arrays)}
    for _, piece in pieces:
        merged.update((r["step"], r) for r in _rows(piece.arrays))
    merged.update(rows or {})
    # the groups are rebuilt only when a part adds to them; else they are carried over as they are
    probes = _fold([main.probes] + [p.probes for _, p in pieces], Probes.fold) if any(p.probes for _, p in pieces) else None
    refined = (_fold([main.refined] + [p.refined for _, p in pieces], Refined.fold)
               if any(p.refined for _, p in pieces) else None)
    chains, draws = main.arrays["loss_trace"].shape[1:]
    write(path, attrs if attrs is not None else main.attrs, list(merged.values()), chains, draws,
          main.arrays["burnin_trace"].shape[2], probes=probes, refined=refined)
    parts.remove([p for p, _ in pieces])
    return len(merged)


def _fold(items: list, fold: Callable) -> Any:
    out = None
    for item in items:
        if item is not None:
            out = item if out is None else fold(out, item)
    return out


# ----------------------------------------------------------------------------------------------------------
# reading


@dataclass
class _Piece:
    """What one file holds: the results file itself, or one of its parts."""

    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray]
    probes: Optional[Probes] = None
    refined: Optional[Refined] = None


def _read_piece(path: Path, schema: str, groups: bool) -> _Piece:
    with h5py.File(path, "r") as f:
        if decode_attr(f.attrs.get("schema")) != schema:
            raise ValueError("not an slt-probe results file (no schema attribute)" if schema == SCHEMA else
                             f"{path}: not a part of an slt-probe results file")
        version = int(f.attrs.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise ValueError(f"written by a newer slt-probe (schema {version} > {SCHEMA_VERSION})")
        attrs = {k: decode_attr(v) for k, v in f.attrs.items()}
        arrays = {}
        for name, kind, _ in COLUMNS:
            if name not in f:
                raise ValueError(f"dataset {name!r} is missing")
            arrays[name] = f[name].asstr()[...] if kind == "str" else f[name][...]
        if groups:
            return _Piece(attrs, arrays, Probes.from_file(f), Refined.from_file(f))
    return _Piece(attrs, arrays)


def _read_all(path: Path, groups: bool) -> tuple[_Piece, list[tuple[Path, _Piece]]]:
    """The results file and each of its parts (parts.read_each: a part merged meanwhile means reading again)."""
    return parts.read_each(path, lambda p: _read_piece(p, SCHEMA, groups),
                           lambda p: _read_piece(p, PART_SCHEMA, groups))


def _rows(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    def cell(name: str, kind: str, i: int) -> Any:
        v = arrays[name][i]
        return str(v) if kind == "str" else v.item() if kind in ("int64", "float64") else v

    return [{name: cell(name, kind, i) for name, kind, _ in COLUMNS} for i in range(len(arrays["step"]))]


def _stack(rows: list[dict[str, Any]], like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows (sorted by step) as the arrays read_arrays gives, shaped and typed like `like`'s."""
    out = {}
    for name, kind, _ in COLUMNS:
        values = [r[name] for r in rows]
        if kind == "str":
            out[name] = np.array(values, dtype=object).reshape(len(rows))
        elif values:
            out[name] = np.stack([np.asarray(v) for v in values]).astype(like[name].dtype)
        else:
            out[name] = np.zeros((0, *like[name].shape[1:]), like[name].dtype)
    return out


def read_arrays(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(attrs, every dataset along the checkpoint axis) of a results file, its parts folded in; ValueError when it is
    not one."""
    main, pieces = _read_all(Path(path), groups=False)
    if not pieces:
        return main.attrs, main.arrays
    rows = {r["step"]: r for r in _rows(main.arrays)}
    for _, piece in pieces:
        rows.update((r["step"], r) for r in _rows(piece.arrays))
    attrs = {**main.attrs, "num_checkpoints": len(rows)}
    return attrs, _stack([rows[s] for s in sorted(rows)], main.arrays)


def read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(attrs, rows) of a results file, its parts folded in, rows as store.write takes them; ValueError when it is not
    one."""
    attrs, arrays = read_arrays(path)
    return attrs, _rows(arrays)


@dataclass
class Results:
    """A walk's results: `table` has one row per checkpoint; `arrays` the full per-chain / per-draw data."""

    path: Path
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray]  # every dataset, along the checkpoint axis
    table: Any  # pandas.DataFrame of the one-value-per-checkpoint columns, indexed by row
    transitions: Optional[Transitions] = None  # the λ̂ curve's, when detection has run

    @property
    def config(self) -> dict[str, Any]:
        return self.attrs["config_resolved"]

    def __repr__(self) -> str:
        return f"Results({str(self.path)!r}, {len(self.table)} checkpoints, engine {self.attrs.get('engine')!r})"


def load_results(path: str | Path) -> Results:
    """Read a results file: `load_results("results.h5").table` is the λ̂ curve as a DataFrame."""
    path = Path(path)
    attrs, arrays = read_arrays(path)
    table = pd.DataFrame({name: arrays[name] for name, kind, _ in COLUMNS if kind not in ("chain", "trace", "burnin")})
    # parts not yet folded in have changed the curve the stored transitions were found in (a merge drops them)
    transitions = None if parts.files(path) else read_transitions(path)
    return Results(path=path, attrs=attrs, arrays=arrays, table=table, transitions=transitions)
