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
                            "recommended": -1 if cal.recommended is None else int(cal.recommended)})
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
