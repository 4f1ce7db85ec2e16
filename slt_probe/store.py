"""The HDF5 results file of a walk: its schema, in one place, and how it is written and read.

One file per walk. Root attributes describe the run (versions, command line, config, model, data);
datasets run along a checkpoint axis of length K, one row per checkpoint, sorted by step. Every
dataset carries a `description` attribute, so the file explains itself to h5py, pandas or xarray.

Crash safety: HDF5 is not journaled (a writer killed mid-update can leave a file that no longer
opens), so the file is never modified in place. Each update writes a complete new file beside it and
renames it over the old one (os.replace is atomic on POSIX and Windows): at any moment, `results.h5`
is the last complete version, whatever kills the process.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import h5py
import numpy as np

SCHEMA = "slt-probe.walk"
SCHEMA_VERSION = 1

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
KINDS = {name: kind for name, kind, _ in COLUMNS}
_STR = h5py.string_dtype()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("slt-probe", "torch", "devinterp", "numpy", "h5py"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


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


# ----------------------------------------------------------------------------------------------------------
# writing


# Groups that survive a rewrite of the rows. Transitions do not: they describe the rows they were found in,
# and the walk finds them again at its end.
KEPT_GROUPS = ("probes", "refined")


def write(path: Path, attrs: dict[str, Any], rows: list[dict[str, Any]], chains: int, draws: int, burnin: int,
          probes: Optional["Probes"] = None, refined: Optional["Refined"] = None) -> None:
    """Write the whole file atomically: attrs (JSON-encoded when not str/number), rows sorted by step, and the
    probes and refined groups (from `probes` / `refined` when given, else carried over from the file replaced)."""
    path = Path(path)
    rows = sorted(rows, key=lambda r: r["step"])
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
            f.attrs["updated"] = utc_now()
            f.attrs["num_checkpoints"] = len(rows)
            k = len(rows)
            for name, kind, description in COLUMNS:
                values = [r[name] for r in rows]
                if kind == "str":
                    ds = f.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR, maxshape=(None,))
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
            if path.exists():
                with h5py.File(path, "r") as old:
                    for name in KEPT_GROUPS:
                        if name in old and name not in f:
                            old.copy(old[name], f, name=name)
        commit(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class Probes:
    """Behavioural measurements per checkpoint, keyed by step: the file's `probes` group.

    values[step][name] is a number (a curve the plot draws) or an array (per-head scores, kept in the
    subgroup probes/heads/). info[name] = (label, description).
    """

    info: dict[str, tuple[str, str]]
    values: dict[int, dict[str, Any]]

    def write(self, g: h5py.Group) -> None:
        g.attrs["description"] = "behavioural probes per checkpoint (slt-probe walk --probes), keyed by step"
        steps = sorted(self.values)
        g.create_dataset("step", data=np.array(steps, dtype=np.int64)).attrs["description"] = "checkpoint step"
        heads = None
        for name, (label, description) in self.info.items():
            column = [self.values[s].get(name) for s in steps]
            shape = next((np.shape(v) for v in column if v is not None), ())
            data = np.stack([np.full(shape, np.nan) if v is None else np.asarray(v, dtype=np.float64)
                             for v in column]) if steps else np.zeros((0, *shape))
            if shape:
                heads = heads or g.create_group("heads")
                ds = heads.create_dataset(name, data=data)
            else:
                ds = g.create_dataset(name, data=data.reshape(len(steps)))
            ds.attrs["label"], ds.attrs["description"] = label, description

    @staticmethod
    def read(path: Path) -> Optional["Probes"]:
        with h5py.File(path, "r") as f:
            if "probes" not in f or "step" not in f["probes"]:
                return None
            g = f["probes"]
            steps = [int(s) for s in g["step"][...]]
            columns = {name: ds for name, ds in g.items() if isinstance(ds, h5py.Dataset) and name != "step"}
            if "heads" in g:
                columns.update(dict(g["heads"].items()))
            info = {name: (str(_decode_attr(ds.attrs.get("label", name))), str(_decode_attr(ds.attrs.get("description", ""))))
                    for name, ds in columns.items()}
            arrays = {name: ds[...] for name, ds in columns.items()}
        values = {s: {name: (a[i].item() if a.ndim == 1 else a[i]) for name, a in arrays.items()}
                  for i, s in enumerate(steps)}
        return Probes(info, values)


REFINED_FIELDS = {  # name: description; one value per checkpoint of the component's subgroup
    "step": "checkpoint step",
    "llc_mean": "refined λ̂: only this component's parameters sampled, the rest held at w* (Wang et al. 2024)",
    "llc_se": "standard error of llc_mean across chains",
    "llc_per_chain": "refined λ̂ of each chain [checkpoint, chain]; NaN for a diverged chain",
    "verdict": "ok | warn | fail of this estimate's diagnostics (fail: it could not be computed)",
}


@dataclass
class Refined:
    """Refined LLCs per checkpoint, the file's `refined` group: one subgroup per component (walk(refine=...)).

    params[name] is the regular expression over parameter names that selects the component, num_params[name]
    how many parameters it holds; values[name][step] = {"llc_mean", "llc_se", "llc_per_chain", "verdict"}.
    """

    params: dict[str, str]
    num_params: dict[str, int]
    values: dict[str, dict[int, dict[str, Any]]]

    def write(self, g: h5py.Group, chains: int) -> None:
        g.attrs["description"] = ("refined LLCs: λ̂ with only one component's parameters sampled (Wang et al. 2024, "
                                  "arXiv 2410.02984), one subgroup per component, keyed by step")
        for name, pattern in self.params.items():
            sub = g.create_group(name)
            sub.attrs["params"], sub.attrs["num_params"] = pattern, int(self.num_params.get(name, 0))
            sub.attrs["description"] = f"refined λ̂ of the parameters matching {pattern!r}"
            steps = sorted(self.values.get(name, {}))
            rows = [self.values[name][s] for s in steps]
            for field, description in REFINED_FIELDS.items():
                if field == "step":
                    data = np.array(steps, dtype=np.int64)
                elif field == "verdict":
                    data = np.array([r["verdict"] for r in rows], dtype=object)
                elif field == "llc_per_chain":
                    data = np.stack([np.asarray(r[field], dtype=np.float64) for r in rows]) if rows \
                        else np.zeros((0, chains))
                else:
                    data = np.array([r[field] for r in rows], dtype=np.float64).reshape(len(rows))
                ds = sub.create_dataset(field, data=data, dtype=_STR if field == "verdict" else None)
                ds.attrs["description"] = description

    def curve(self, name: str, steps) -> dict[str, np.ndarray]:
        """Component `name`'s llc_mean, llc_se [K] and llc_per_chain [K, chains] along `steps`; NaN at steps
        it has no estimate for (a checkpoint that failed)."""
        values = self.values[name]
        chains = next((len(v["llc_per_chain"]) for v in values.values()), 0)
        have = [int(s) in values for s in steps]
        col = lambda k: np.array([values[int(s)][k] if h else np.nan for s, h in zip(steps, have)], dtype=float)  # noqa: E731
        per_chain = np.array([np.asarray(values[int(s)]["llc_per_chain"], dtype=float) if h else np.full(chains, np.nan)
                              for s, h in zip(steps, have)], dtype=float).reshape(len(have), chains)
        return {"llc_mean": col("llc_mean"), "llc_se": col("llc_se"), "llc_per_chain": per_chain}

    @staticmethod
    def read(path: Path) -> Optional["Refined"]:
        with h5py.File(path, "r") as f:
            if "refined" not in f:
                return None
            params, num_params, values = {}, {}, {}
            for name, sub in f["refined"].items():
                params[name] = str(_decode_attr(sub.attrs["params"]))
                num_params[name] = int(sub.attrs.get("num_params", 0))
                cols = {k: (sub[k].asstr()[...] if k == "verdict" else sub[k][...]) for k in REFINED_FIELDS}
                values[name] = {int(s): {"llc_mean": float(cols["llc_mean"][i]), "llc_se": float(cols["llc_se"][i]),
                                         "llc_per_chain": cols["llc_per_chain"][i], "verdict": str(cols["verdict"][i])}
                                for i, s in enumerate(cols["step"])}
        return Refined(params, num_params, values)


def write_group(path: Path, name: str, fill: Callable[[h5py.Group], None]) -> None:
    """Replace group `name` of an existing results file, atomically: fill(group) writes its contents."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            if name in f:
                del f[name]
            fill(f.create_group(name))
            f.attrs["updated"] = utc_now()
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


def remove_stale_temporaries(path: Path) -> None:
    """Temporaries left by a killed writer (never the live file)."""
    for tmp in Path(path).parent.glob(f"{Path(path).name}.tmp*"):
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------
# reading


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_arrays(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(attrs, every dataset along the checkpoint axis) of a results file; ValueError when it is not one."""
    with h5py.File(path, "r") as f:
        if _decode_attr(f.attrs.get("schema")) != SCHEMA:
            raise ValueError("not an slt-probe results file (no schema attribute)")
        version = int(f.attrs.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise ValueError(f"written by a newer slt-probe (schema {version} > {SCHEMA_VERSION})")
        attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        arrays = {}
        for name, kind, _ in COLUMNS:
            if name not in f:
                raise ValueError(f"dataset {name!r} is missing")
            arrays[name] = f[name].asstr()[...] if kind == "str" else f[name][...]
    return attrs, arrays


def read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(attrs, rows) of a results file, rows as store.write takes them; ValueError when it is not one."""
    attrs, arrays = read_arrays(path)

    def cell(name: str, kind: str, i: int) -> Any:
        v = arrays[name][i]
        return str(v) if kind == "str" else v.item() if kind in ("int64", "float64") else v

    rows = [{name: cell(name, kind, i) for name, kind, _ in COLUMNS} for i in range(len(arrays["step"]))]
    return attrs, rows


@dataclass
class Results:
    """A walk's results: `table` has one row per checkpoint; `arrays` the full per-chain / per-draw data."""

    path: Path
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray]  # every dataset, along the checkpoint axis
    table: Any  # pandas.DataFrame of the one-value-per-checkpoint columns, indexed by row
    transitions: Any = None  # slt_probe.transitions.Transitions, when detection has run

    @property
    def config(self) -> dict[str, Any]:
        return self.attrs["config_resolved"]

    def __repr__(self) -> str:
        return f"Results({str(self.path)!r}, {len(self.table)} checkpoints, engine {self.attrs.get('engine')!r})"


def load_results(path: str | Path) -> Results:
    """Read a results file: `load_results("results.h5").table` is the λ̂ curve as a DataFrame."""
    import pandas as pd

    path = Path(path)
    attrs, arrays = read_arrays(path)
    table = pd.DataFrame({name: arrays[name] for name, kind, _ in COLUMNS if kind not in ("chain", "trace", "burnin")})
    return Results(path=path, attrs=attrs, arrays=arrays, table=table, transitions=read_transitions(path))


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> Optional[str]:
    """The first field that differs between two flat dicts, as 'lr 0.0001 → 0.0002', or None."""
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} → {new.get(key)!r}"
    return None


# ----------------------------------------------------------------------------------------------------------
# transitions: a group beside the rows, replaced whenever detection runs again

BOUNDARY_FIELDS = {
    "step": "checkpoint step nearest the stage boundary",
    "index": "that checkpoint's row in the per-checkpoint datasets",
    "log_step": "precise location of the boundary, log10(step)",
    "kind": "peak | trough | plateau: how λ̂ turns there",
    "confidence": "fraction of chain-bootstrap resamples with a boundary within ±1 checkpoint",
    "tentative": "confidence below the detection's min_confidence",
    "hidden": "a stage on either side is hidden (significant Δλ̂, small Δloss)",
}
STAGE_FIELDS = {
    "start_step": "first checkpoint step of the stage",
    "end_step": "last checkpoint step of the stage",
    "start_index": "row of the first checkpoint",
    "end_index": "row of the last checkpoint",
    "dllc": "change of the smoothed λ̂ over the stage",
    "dllc_se": "standard error of dllc, from the s.e. at both ends",
    "dloss": "change of the loss (init_loss) over the stage",
    "type": "A (λ̂ rises, loss falls) | B (λ̂ falls, loss flat or falling slightly) | other",
    "hidden": "significant Δλ̂ (>= k_se s.e.) with |Δloss| < hidden_loss_frac × the run's loss drop",
}

SPURT_FIELDS = {
    "step": "checkpoint step nearest the steepest point of the smoothed λ̂",
    "index": "that checkpoint's row in the per-checkpoint datasets",
    "log_step": "precise location of the steepest point, log10(step)",
    "rate": "dλ̂ / dlog10(step) at the steepest point",
    "start_step": "first checkpoint step of the window where |dλ̂/dlog t| >= spurt_drop × its peak",
    "end_step": "last checkpoint step of that window",
    "dllc": "change of the smoothed λ̂ across the window",
    "dllc_se": "standard error of dllc, from the s.e. at both ends",
    "dloss": "change of the loss (init_loss) across the window",
    "type": "A (λ̂ rises, loss falls) | B (λ̂ falls, loss flat or falling slightly) | other",
    "hidden": "significant Δλ̂ (>= k_se s.e.) with |Δloss| < hidden_loss_frac × the run's loss drop",
    "confidence": "fraction of chain-bootstrap resamples with a spurt of the same sign within ±1 checkpoint",
    "tentative": "confidence below the detection's min_confidence",
}
_INT_FIELDS = ("step", "index", "start_step", "end_step", "start_index", "end_index")


def transitions_group(refined: Optional[str] = None) -> str:
    """Where a curve's transitions live: `transitions` for the LLC, `refined/<name>/transitions` for a refined λ̂."""
    return "transitions" if refined is None else f"refined/{refined}/transitions"


def write_transitions(path: Path, t, refined: Optional[str] = None) -> None:
    """Store a Transitions (slt_probe.transitions) as the file's `transitions` group, or as that of the refined
    λ̂ curve `refined`, replacing any earlier one."""
    from dataclasses import asdict

    def fill(g: h5py.Group) -> None:
        g.attrs["description"] = "developmental stages found in the λ̂ curve (slt_probe.detect_transitions)"
        g.attrs["params"] = json.dumps(asdict(t.config))
        g.attrs["smoothing"] = json.dumps(t.smoothing)
        g.attrs["notes"] = json.dumps(t.notes)
        g.attrs["created"] = utc_now()
        for sub, items, fields in (("boundaries", t.boundaries, BOUNDARY_FIELDS), ("stages", t.stages, STAGE_FIELDS),
                                   ("spurts", t.spurts, SPURT_FIELDS)):
            group = g.create_group(sub)
            for name, description in fields.items():
                values = [getattr(item, name) for item in items]
                if name in ("kind", "type"):
                    ds = group.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR)
                else:
                    dtype = bool if name in ("tentative", "hidden") else np.int64 if name in _INT_FIELDS else np.float64
                    ds = group.create_dataset(name, data=np.array(values, dtype=dtype).reshape(len(items)))
                ds.attrs["description"] = description
        smooth = g.create_group("smooth")
        for name, values, description in (("log_step", t.log_step, "dense grid, log10(step)"),
                                          ("llc", t.llc_smooth, "smoothed λ̂ on the grid"),
                                          ("dllc", t.dllc_smooth, "dλ̂ / dlog10(step) on the grid")):
            smooth.create_dataset(name, data=np.asarray(values, dtype=np.float64)).attrs["description"] = description

    write_group(path, transitions_group(refined), fill)


def read_transitions(path: Path, refined: Optional[str] = None):
    """The file's Transitions (of the refined λ̂ curve `refined`), or None when detection has not run on it."""
    group = transitions_group(refined)
    from slt_probe.transitions import Boundary, Spurt, Stage, TransitionConfig, Transitions

    def items(g: h5py.Group, cls, fields) -> list:
        cols = {name: (g[name].asstr()[...] if name in ("kind", "type") else g[name][...]) for name in fields}
        n = len(next(iter(cols.values())))
        return [cls(**{k: _decode_attr(v[i]) for k, v in cols.items()}) for i in range(n)]

    with h5py.File(path, "r") as f:
        if group not in f:
            return None
        g = f[group]
        try:
            return Transitions(
                boundaries=items(g["boundaries"], Boundary, BOUNDARY_FIELDS),
                stages=items(g["stages"], Stage, STAGE_FIELDS),
                config=TransitionConfig(**json.loads(g.attrs["params"])),
                smoothing=json.loads(g.attrs["smoothing"]),
                log_step=g["smooth/log_step"][...], llc_smooth=g["smooth/llc"][...], dllc_smooth=g["smooth/dllc"][...],
                notes=json.loads(g.attrs.get("notes", "[]")),
                spurts=items(g["spurts"], Spurt, SPURT_FIELDS) if "spurts" in g else [],  # files from before spurts
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the transitions group is incomplete or foreign ({e}); run slt-probe transitions again") \
                from None


# ----------------------------------------------------------------------------------------------------------
# calibration sweeps: their own file, grid point × probed checkpoint

CALIBRATION_SCHEMA = "slt-probe.calibration"
CALIBRATION_FIELDS = {  # name: (description, getter of one LLCResult)
    "llc_mean": ("λ̂ at each grid point and probed checkpoint [point, checkpoint]", lambda r: r.llc_mean),
    "llc_se": ("standard error of llc_mean", lambda r: r.llc_se),
    "init_loss": ("L_n(w*) at the probed checkpoint", lambda r: r.init_loss),
    "rhat": ("split R-hat of the loss traces", lambda r: r.diagnostics.rhat),
    "ess_bulk": ("bulk effective sample size of the loss traces", lambda r: r.diagnostics.ess_bulk),
    "acceptance": ("mean MALA acceptance probability", lambda r: r.diagnostics.acceptance),
    "drift": ("relative change of λ̂ between the last two quarters of the draws", lambda r: r.diagnostics.drift),
    "chains_ok": ("chains that did not diverge", lambda r: r.diagnostics.chains_ok),
    "seconds": ("sampling seconds attributed to the point (a shared run split evenly)", None),
}


def write_calibration(path: Path, cal, attrs: Optional[dict[str, Any]] = None) -> None:
    """A calibration sweep (slt_probe.calibrate.Calibration) as a self-describing HDF5 file, written atomically."""
    from slt_probe.calibrate import failed_checks

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    G, P = len(cal.points), len(cal.steps)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"schema": CALIBRATION_SCHEMA, "schema_version": 1, "created": utc_now(),
                            "description": "SGLD hyperparameter sweep by slt-probe calibrate",
                            "config": json.dumps(cal.config.to_dict()), "versions": json.dumps(versions()),
                            "vectorized": bool(cal.vectorized), "advice": json.dumps(cal.advice),
                            "recommended": -1 if cal.recommended is None else int(cal.recommended)})
            for key, value in (attrs or {}).items():
                f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)

            def put(name, data, description, **kw):
                f.create_dataset(name, data=data, **kw).attrs["description"] = description

            for key in ("lr", "localization", "nbeta"):
                put(key, np.array([p[key] for p in cal.points]), f"{key} of each grid point [point]")
            put("step", np.array(cal.steps, dtype=np.int64), "probed checkpoint steps [checkpoint]")
            for name, (description, get) in CALIBRATION_FIELDS.items():
                values = cal.seconds if get is None else [[get(r) for r in row] for row in cal.results]
                put(name, np.array(values, dtype=np.float64).reshape(G, P), description)
            put("failed", np.array([[", ".join(failed_checks(r)) for r in row] for row in cal.results], dtype=object),
                "diagnostics that did not pass (calibrate.ADVICE keys), empty when all passed", dtype=_STR)
            put("passed", np.array(cal.passed, dtype=bool), "every diagnostic passed at every probed checkpoint")
            put("on_plateau", np.array(cal.on_plateau, dtype=bool), "a neighbour in lr agrees on λ̂ (2 s.e.)")
            put("ess_per_second", np.array(cal.ess_per_second), "worst bulk ESS per sampling second over checkpoints")
            draws = cal.config.draws
            traces = np.stack([np.stack([r.loss_trace for r in row]) for row in cal.results]).astype(np.float32)
            put("loss_trace", traces.reshape(G, P, -1, draws), "minibatch loss of every kept draw "
                "[point, checkpoint, chain, draw]", chunks=(1, 1, traces.shape[2], draws), compression="gzip")
        commit(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
