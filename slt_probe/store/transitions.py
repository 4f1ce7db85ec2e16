"""The transitions of a λ̂ curve: the records the detector returns, and the group of the results file that holds them.

The records are defined here, with the schema that stores them, so that a field and its description live in one
place; analysis.transitions fills them. A curve's transitions are a group beside the rows (`transitions` for the
LLC, `refined/<name>/transitions` for a refined λ̂), replaced whenever detection runs again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from slt_probe.store.h5 import STR, decode_attr, utc_now, write_group


@dataclass
class TransitionConfig:
    """The detector's settings (analysis.transitions explains each); stored with what they found."""

    k_se: float = 3.0  # a stage's |Δλ̂| must exceed k_se standard errors, or it merges into a neighbour
    hidden_loss_frac: float = 0.05  # |Δloss| below this fraction of the run's loss drop: the loss hides it
    plateau_tol: float = 0.2  # |dλ̂/dlog t| below this fraction of the neighbouring peaks' slopes is a plateau
    spurt_drop: float = 0.5  # a spurt's |dλ̂/dlog t| falls below this fraction of its peak on both sides
    # a spurt's peak must stand this many s.e. above its base. Higher than k_se: the peak is the largest of many
    # wiggles of the smoothed slope (look-elsewhere). On spurt-free controls (tests/analysis/test_transitions.py) the
    # largest wiggle reached 3 s.e. in 3-17% of curves, 4 s.e. in at most 4%.
    spurt_k_se: float = 4.0
    resamples: int = 200  # bootstrap resamples for the confidence
    min_confidence: float = 0.8  # boundaries reproduced less often are reported tentative
    seed: int = 0
    grid: int = 2000  # points of the dense log-step grid the derivative is examined on
    # decades of log step (0.05: 12% in step) below which checkpoints share their weight in the smoothing, so that
    # a dense stretch is smoothed like one sampled this finely; a resample's boundary (spurt) reproduces a found one
    # within ±1 checkpoint or ±resolution
    resolution: float = 0.05
    # a stated s.e. is checked against the curve's own scatter; when they disagree by more than this factor, the
    # scatter's scale is used instead (see analysis.transitions, "Noise"), unless trust_se
    se_factor: float = 2.0
    trust_se: bool = False  # use a stated s.e. as given, whatever the curve's scatter says

    def __post_init__(self):
        if not (self.k_se > 0 and self.spurt_k_se > 0 and 0 <= self.hidden_loss_frac):
            raise ValueError("need k_se > 0, spurt_k_se > 0 and hidden_loss_frac >= 0")
        if not (0 < self.plateau_tol < 1 and 0 < self.spurt_drop < 1):
            raise ValueError("need 0 < plateau_tol < 1 and 0 < spurt_drop < 1")
        if not (0 <= self.min_confidence <= 1 and self.resamples >= 0 and self.grid >= 100):
            raise ValueError("need 0 <= min_confidence <= 1, resamples >= 0, grid >= 100")
        if not (self.se_factor > 1 and self.resolution > 0):
            raise ValueError("need se_factor > 1 and resolution > 0")


@dataclass
class Boundary:
    step: int  # the checkpoint step nearest the boundary
    index: int  # that checkpoint's row in the input arrays
    log_step: float  # precise location, log10(step)
    kind: str  # peak | trough | plateau
    confidence: float = float("nan")
    tentative: bool = False
    hidden: bool = False  # a stage on either side of it is hidden


@dataclass
class Stage:
    start_step: int
    end_step: int
    start_index: int
    end_index: int
    dllc: float  # change of the smoothed λ̂ over the stage
    dllc_se: float  # its standard error, from the checkpoints' s.e. at both ends
    dloss: float  # change of the loss over the stage (NaN without a loss curve)
    type: str  # A | B | other
    hidden: bool


@dataclass
class Spurt:
    step: int  # the checkpoint step nearest the steepest point
    index: int  # that checkpoint's row in the input arrays
    log_step: float  # precise location of the steepest point, log10(step)
    rate: float  # dλ̂ / dlog10(step) there
    start_step: int  # the window where |dλ̂/dlog t| >= spurt_drop × its peak, as nearest checkpoint steps
    end_step: int
    dllc: float  # change of the smoothed λ̂ across the window
    dllc_se: float  # its standard error, from the checkpoints' s.e. at both ends
    dloss: float  # change of the loss across the window (NaN without a loss curve)
    type: str  # A | B | other, as for stages
    hidden: bool
    confidence: float = float("nan")
    tentative: bool = False


@dataclass
class Transitions:
    boundaries: list[Boundary]
    stages: list[Stage]
    config: TransitionConfig
    smoothing: dict  # how the smoothing was chosen, and whether the boundaries are stable under it
    log_step: np.ndarray  # [G] the dense grid, log10(step)
    llc_smooth: np.ndarray  # [G] smoothed λ̂
    dllc_smooth: np.ndarray  # [G] dλ̂ / dlog10(step)
    notes: list[str] = field(default_factory=list)
    spurts: list[Spurt] = field(default_factory=list)
    # the noise scale the detection used and where it came from: source (stated | chains | curve), and for a stated
    # or chain s.e. its check against the curve's scatter (analysis.transitions, "Noise")
    noise: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        """One row per stage, with the boundary that ends it (what `slt-probe transitions` prints)."""
        rows = []
        for i, s in enumerate(self.stages):
            b = self.boundaries[i] if i < len(self.boundaries) else None
            rows.append({**asdict(s), "boundary_step": b.step if b else None,
                         "boundary_confidence": b.confidence if b else None,
                         "boundary_tentative": b.tentative if b else None, "boundary_kind": b.kind if b else None})
        return rows


# the groups' datasets: name -> description (the `description` attribute of each)
BOUNDARY_FIELDS = {
    "step": "checkpoint step nearest the stage boundary",
    "index": "that checkpoint's row in the per-checkpoint datasets",
    "log_step": "precise location of the boundary, log10(step)",
    "kind": "peak | trough | plateau: how λ̂ turns there",
    "confidence": "fraction of bootstrap resamples with a boundary within ±1 checkpoint or ±resolution decades",
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
    "confidence": "fraction of bootstrap resamples with a spurt of the same sign within ±1 checkpoint or "
                  "±resolution decades",
    "tentative": "confidence below the detection's min_confidence",
}
_INT_FIELDS = ("step", "index", "start_step", "end_step", "start_index", "end_index")


def transitions_group(refined: Optional[str] = None) -> str:
    """Where a curve's transitions live: `transitions` for the LLC, `refined/<name>/transitions` for a refined λ̂."""
    return "transitions" if refined is None else f"refined/{refined}/transitions"


def write_transitions(path: Path, t: Transitions, refined: Optional[str] = None) -> None:
    """Store `t` as the file's `transitions` group, or as that of the refined λ̂ curve `refined`, replacing any
    earlier one."""

    def fill(g: h5py.Group) -> None:
        g.attrs["description"] = "developmental stages found in the λ̂ curve (slt_probe.detect_transitions)"
        g.attrs["params"] = json.dumps(asdict(t.config))
        g.attrs["smoothing"] = json.dumps(t.smoothing)
        g.attrs["notes"] = json.dumps(t.notes)
        g.attrs["noise"] = json.dumps(t.noise)
        g.attrs["created"] = utc_now()
        for sub, items, fields in (("boundaries", t.boundaries, BOUNDARY_FIELDS), ("stages", t.stages, STAGE_FIELDS),
                                   ("spurts", t.spurts, SPURT_FIELDS)):
            group = g.create_group(sub)
            for name, description in fields.items():
                values = [getattr(item, name) for item in items]
                if name in ("kind", "type"):
                    ds = group.create_dataset(name, data=np.array(values, dtype=object), dtype=STR)
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


def read_transitions(path: Path, refined: Optional[str] = None) -> Optional[Transitions]:
    """The file's Transitions (of the refined λ̂ curve `refined`), or None when detection has not run on it."""
    group = transitions_group(refined)

    def items(g: h5py.Group, cls, fields) -> list:
        cols = {name: (g[name].asstr()[...] if name in ("kind", "type") else g[name][...]) for name in fields}
        n = len(next(iter(cols.values())))
        return [cls(**{k: decode_attr(v[i]) for k, v in cols.items()}) for i in range(n)]

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
                noise=json.loads(g.attrs.get("noise", "{}")),  # files from before the noise check: {}
                spurts=items(g["spurts"], Spurt, SPURT_FIELDS) if "spurts" in g else [],  # files from before spurts
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the transitions group is incomplete or foreign ({e}); run slt-probe transitions again") \
                from None


