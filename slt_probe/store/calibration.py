"""The HDF5 file of a calibration sweep: grid point × probed checkpoint, self-describing like a walk's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np

from slt_probe.engine.estimate import failed_checks
from slt_probe.store.atomic import atomic_path
from slt_probe.store.h5 import STR, encode_attr, utc_now, versions


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
    """A calibration sweep (a runs.calibrate.Calibration) as a self-describing HDF5 file, written atomically."""
    G, P = len(cal.points), len(cal.steps)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"schema": CALIBRATION_SCHEMA, "schema_version": 1, "created": utc_now(),
                            "description": "SGLD hyperparameter sweep by slt-probe calibrate",
                            "config": json.dumps(cal.config.to_dict()), "versions": json.dumps(versions()),
                            "vectorized": bool(cal.vectorized), "advice": json.dumps(cal.advice),
                            "recommended": -1 if cal.recommended is None else int(cal.recommended),
                            "recommended_point": json.dumps(cal.recommendation.point if cal.recommendation else None)})
            for key, value in (attrs or {}).items():
                f.attrs[key] = encode_attr(value)

            def put(name, data, description, **kw):
                f.create_dataset(name, data=data, **kw).attrs["description"] = description

            for key in ("lr", "localization", "nbeta"):
                put(key, np.array([p[key] for p in cal.points]), f"{key} of each grid point [point]")
            put("step", np.array(cal.steps, dtype=np.int64), "probed checkpoint steps [checkpoint]")
            for name, (description, get) in CALIBRATION_FIELDS.items():
                values = cal.seconds if get is None else [[get(r) for r in row] for row in cal.results]
                put(name, np.array(values, dtype=np.float64).reshape(G, P), description)
            put("failed", np.array([[", ".join(failed_checks(r)) for r in row] for row in cal.results], dtype=object),
                "diagnostics that did not pass (diagnostics.ADVICE keys), empty when all passed", dtype=STR)
            put("passed", np.array(cal.passed, dtype=bool), "every diagnostic passed at every probed checkpoint")
            put("on_plateau", np.array(cal.on_plateau, dtype=bool), "a neighbour in lr agrees on λ̂ (2 s.e.)")
            put("ess_per_second", np.array(cal.ess_per_second), "worst bulk ESS per sampling second over checkpoints")
            draws = cal.config.draws
            traces = np.stack([np.stack([r.loss_trace for r in row]) for row in cal.results]).astype(np.float32)
            put("loss_trace", traces.reshape(G, P, -1, draws), "minibatch loss of every kept draw "
                "[point, checkpoint, chain, draw]", chunks=(1, 1, traces.shape[2], draws), compression="gzip")
            _write_bias_checks(f, cal)


def _write_bias_checks(f: h5py.File, cal) -> None:
    """Group bias_checks: the candidates tried after the sweep, in order [candidate], with λ̂ of their three runs
    (the candidate, lr/2, γ/10) [candidate, run, checkpoint] and each check's outcome in words."""
    grp = f.create_group("bias_checks")
    runs = list(cal.bias_checks[0].results) if cal.bias_checks else []
    grp.attrs.update({"description": "bias checks of the best passing candidates, in the order they were tried; the "
                                     "last is the recommendation when its passed is true",
                      "runs": json.dumps(runs),
                      "draws": int(cal.bias_checks[0].results[runs[0]][0].loss_trace.shape[-1]) if runs else 0})
    K, P = len(cal.bias_checks), len(cal.steps)

    def put(name, data, description, **kw):
        grp.create_dataset(name, data=data, **kw).attrs["description"] = description

    for key in ("lr", "localization", "nbeta"):
        put(key, np.array([b.point[key] for b in cal.bias_checks], dtype=np.float64), f"{key} of the candidate [candidate]")
    put("grid_index", np.array([-1 if b.grid_index is None else b.grid_index for b in cal.bias_checks], dtype=np.int64),
        "the candidate's row in the sweep, -1 when γ was followed below the grid [candidate]")
    for name, get, description in (("llc_mean", lambda r: r.llc_mean, "λ̂"), ("llc_se", lambda r: r.llc_se, "s.e. of λ̂")):
        values = np.array([[[get(r) for r in b.results[run]] for run in runs] for b in cal.bias_checks],
                          dtype=np.float64).reshape(K, len(runs), P)
        put(name, values, f"{description} of each run [candidate, run (attribute runs), checkpoint]")
    put("passed", np.array([b.passed for b in cal.bias_checks], dtype=bool), "diagnostics, step size and localization "
        "all passed [candidate]")
    names = ["diagnostics", "plateau", "step size", "localization"]
    put("checks", np.array([[b.checks[k] for k in names] for b in cal.bias_checks], dtype=object).reshape(K, len(names)),
        f"each check's outcome in words [candidate, check: {', '.join(names)}]", dtype=STR)
