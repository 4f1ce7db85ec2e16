"""Choosing SGLD hyperparameters with evidence: sweep lr × localization (× nbeta) at a few checkpoints.

Every grid point runs with the same seed, minibatches and budget at every probed checkpoint. A point
passes when its diagnostics are clean (verdict "ok": no divergence, R-hat <= 1.1, ESS >= 50, MALA
acceptance >= 0.5, λ̂ >= 0, no drift) at every probed checkpoint. Among passing points we want one where
λ̂ has stopped depending on lr (its neighbours in lr, same γ and nβ, agree within 2 combined standard
errors at every checkpoint: the plateau of λ̂ against lr that a well-chosen step size sits on, Lau et al.
2023 §5) and that gives the most effective samples per second.

The sweep is one run per checkpoint: each grid point is a group of chains in the same batch, with its own
ε, γ and nβ (sampler.run_chains(per_chain=...)); `vectorize=False` runs the points one at a time instead,
which gives statistically the same answer (tested). calibrate_folder is what `slt-probe calibrate` runs: it
picks the checkpoints, builds model and data from the command line's specs, sweeps, and writes the evidence.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from slt_probe.analysis.plot import plot_calibration
from slt_probe.engine.data import Data, LossFn, check_lm_tokens, lm_cross_entropy, num_samples
from slt_probe.engine.diagnostics import ADVICE
from slt_probe.engine.estimate import LLCResult, failed_checks, sample, summarize
from slt_probe.engine.sampler import SGLDConfig, resolve_device
from slt_probe.errors import CheckpointError, InputError
from slt_probe.inputs.checkpoints import Checkpoint, discover, load_into, load_state_dict, select
from slt_probe.inputs.specs import RunSpec, load_inputs
from slt_probe.store import atomic_path, write_calibration

PLATEAU_SE = 2.0  # neighbours in lr agree when |Δλ̂| <= PLATEAU_SE combined standard errors


@dataclass
class CalibrationGrid:
    lr: Sequence[float] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
    localization: Sequence[float] = (30.0, 100.0, 300.0)
    nbeta: Optional[Sequence[float]] = None  # None: the config's nβ (resolved: n / log n by default)

    def points(self, default_nbeta: float) -> list[dict[str, float]]:
        nbetas = list(self.nbeta) if self.nbeta else [default_nbeta]
        return [{"lr": float(lr), "localization": float(g), "nbeta": float(nb)}
                for nb, g, lr in itertools.product(nbetas, sorted(self.localization), sorted(self.lr))]


@dataclass
class Calibration:
    config: SGLDConfig  # the base config: chains, draws, burnin, batch, seed
    points: list[dict[str, float]]  # G grid points {lr, localization, nbeta}
    steps: list[int]  # P probed checkpoints
    results: list[list[LLCResult]]  # [G][P]
    seconds: np.ndarray  # [G, P] sampling seconds attributed to each point (a shared run is split evenly)
    passed: list[bool] = field(default_factory=list)  # [G]
    on_plateau: list[bool] = field(default_factory=list)  # [G]
    ess_per_second: list[float] = field(default_factory=list)  # [G] worst over checkpoints
    recommended: Optional[int] = None
    advice: list[str] = field(default_factory=list)
    vectorized: bool = True

    def recommended_config(self) -> Optional[SGLDConfig]:
        if self.recommended is None:
            return None
        return replace(self.config, **self.points[self.recommended])

    def llc(self) -> np.ndarray:
        return np.array([[r.llc_mean for r in row] for row in self.results])  # [G, P]

    def llc_se(self) -> np.ndarray:
        return np.array([[r.llc_se for r in row] for row in self.results])  # [G, P]

    def table(self) -> list[dict]:
        """One row per grid point: its settings, λ̂ ± s.e. at each probed checkpoint, ESS per second, and the outcome
        (what `slt-probe calibrate` prints; pandas.DataFrame(cal.table()) in a notebook)."""
        rows = []
        for g, p in enumerate(self.points):
            failed = sorted({k for r in self.results[g] for k in failed_checks(r)})
            result = ("recommended" if g == self.recommended else "pass" + (", plateau" if self.on_plateau[g] else "")) \
                if self.passed[g] else "fail: " + ", ".join(failed)
            rows.append({**p, "llc": [r.llc_mean for r in self.results[g]], "llc_se": [r.llc_se for r in self.results[g]],
                         "ess_per_second": self.ess_per_second[g], "passed": self.passed[g],
                         "on_plateau": self.on_plateau[g], "recommended": g == self.recommended, "failed": failed,
                         "result": result})
        return rows

    def write_toml(self, path: str | Path) -> Path:
        """The recommended settings as a file `slt-probe walk --config` reads."""
        cfg = self.recommended_config()
        if cfg is None:
            raise ValueError("no configuration passed: nothing to recommend")
        lines = ["# SGLD settings chosen by slt-probe calibrate", "[sgld]"]
        for key in ("lr", "localization", "nbeta", "chains", "draws", "burnin", "batch_size", "seed"):
            lines.append(f"{key} = {getattr(cfg, key)!r}")
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        return Path(path)


def _assess(cal: Calibration) -> None:
    """passed, on_plateau, ess_per_second, recommended and advice from the results."""
    G, P = len(cal.points), len(cal.steps)
    llc, se = cal.llc(), cal.llc_se()
    cal.passed = [all(not failed_checks(cal.results[g][j]) and cal.results[g][j].verdict == "ok" for j in range(P))
                  for g in range(G)]
    ess = np.array([[cal.results[g][j].diagnostics.ess_bulk for j in range(P)] for g in range(G)])
    cal.ess_per_second = [float(np.min(ess[g] / np.maximum(cal.seconds[g], 1e-9))) for g in range(G)]

    # neighbours in lr within each (localization, nbeta) series
    cal.on_plateau = [False] * G
    series: dict[tuple, list[int]] = {}
    for g, p in enumerate(cal.points):
        series.setdefault((p["localization"], p["nbeta"]), []).append(g)
    for members in series.values():
        members.sort(key=lambda g: cal.points[g]["lr"])
        for a, b in zip(members[:-1], members[1:]):
            if cal.passed[a] and cal.passed[b]:
                agree = np.all(np.abs(llc[a] - llc[b]) <= PLATEAU_SE * np.hypot(se[a], se[b]))
                if agree:
                    cal.on_plateau[a] = cal.on_plateau[b] = True

    passing = [g for g in range(G) if cal.passed[g]]
    flat = [g for g in passing if cal.on_plateau[g]]
    pool = flat or passing
    if pool:
        cal.recommended = max(pool, key=lambda g: (cal.ess_per_second[g], cal.points[g]["lr"]))
        if not flat:
            cal.advice.append("no two neighbouring step sizes agree on λ̂: λ̂ still depends on lr here; "
                              "try a finer lr grid around the recommendation, or more draws")
        return
    cal.advice.append("no configuration passes every diagnostic at every probed checkpoint")
    for j, step in enumerate(cal.steps):
        counts: dict[str, int] = {}
        for g in range(G):
            for key in failed_checks(cal.results[g][j]):
                counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            cal.advice.append(f"step {step}: {n} of {G} configurations: {ADVICE[key]}")


def calibrate(
    models: Sequence[tuple[int, nn.Module]],
    data: Data,
    *,
    loss_fn: Optional[LossFn] = None,
    grid: Optional[CalibrationGrid] = None,
    config: Optional[SGLDConfig] = None,
    vectorize: bool = True,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Calibration:
    """Sweep `grid` at each (step, model) in `models` and recommend a configuration.

    config: the budget and everything the grid does not vary (chains per grid point, draws, burnin, batch
      size, seed, device); its lr / localization are ignored, its nbeta is the default grid value.
    progress(done, total) counts probed (checkpoint, run) pairs.
    """
    config = (config or SGLDConfig()).resolved(num_samples(data))
    grid = grid or CalibrationGrid()
    if loss_fn is None:
        check_lm_tokens(data)
        loss_fn = lm_cross_entropy
    points = grid.points(float(config.nbeta))
    G, P, C = len(points), len(models), config.chains
    results: list[list[Optional[LLCResult]]] = [[None] * P for _ in range(G)]
    seconds = np.zeros((G, P))
    runs = P if vectorize else P * G
    done = 0
    for j, (step, model) in enumerate(models):
        if vectorize:
            # one batch of G·C chains: grid point g owns chains g·C ... g·C + C - 1
            per_chain = {k: torch.tensor([p[k] for p in points for _ in range(C)], dtype=torch.float64)
                         for k in ("lr", "localization", "nbeta")}
            start = time.perf_counter()
            trace, init_loss, num_params = sample(model, data, loss_fn, replace(config, chains=G * C),
                                                  per_chain=per_chain)
            elapsed = time.perf_counter() - start
            loss, mala = trace.loss.double().numpy(), trace.mala.double().numpy()
            for g, p in enumerate(points):
                rows = slice(g * C, (g + 1) * C)
                results[g][j] = summarize(loss[rows], init_loss, replace(config, **p), num_params, engine="slt",
                                          method=trace.method, mala=mala[rows], mala_step=trace.mala_step.numpy(),
                                          notes=trace.notes, seconds=elapsed / G)
                seconds[g, j] = elapsed / G
            done += 1
            if progress:
                progress(done, runs)
        else:
            for g, p in enumerate(points):
                cfg = replace(config, **p)
                start = time.perf_counter()
                trace, init_loss, num_params = sample(model, data, loss_fn, cfg)
                seconds[g, j] = time.perf_counter() - start
                results[g][j] = summarize(trace.loss.double().numpy(), init_loss, cfg, num_params, engine="slt",
                                          method=trace.method, mala=trace.mala.double().numpy(),
                                          mala_step=trace.mala_step.numpy(), notes=trace.notes,
                                          seconds=seconds[g, j])
                done += 1
                if progress:
                    progress(done, runs)
    cal = Calibration(config=config, points=points, steps=[int(s) for s, _ in models], results=results,
                      seconds=seconds, vectorized=vectorize)
    _assess(cal)
    return cal


def calibration_points(found: list[Checkpoint], at: str = "first,middle,last",
                       steps: Optional[list[int]] = None) -> list[Checkpoint]:
    """The checkpoints to calibrate at: `steps`, or `at` = some of first, middle, last.

    "first" is meant to be early but past warm-up: the first checkpoint at or beyond 1% of the last step
    (step 0 is the random initialisation, not a model the walk's settings must suit).
    """
    if steps:
        return select(found, steps=steps)
    trained = [c for c in found if c.step > 0 and c.step >= found[-1].step / 100] or found
    where = {"first": trained[0], "middle": trained[len(trained) // 2], "last": trained[-1]}
    chosen = []
    for name in at.replace(" ", "").split(","):
        if name not in where:
            raise InputError(f"--at expects first, middle and/or last, got {name!r}")
        if where[name] not in chosen:
            chosen.append(where[name])
    return sorted(chosen, key=lambda c: c.step)


def calibrate_folder(
    ckpt_dir: Path | str,
    spec: RunSpec,
    *,
    grid: CalibrationGrid,
    config: SGLDConfig,
    at: str = "first,middle,last",
    steps: Optional[list[int]] = None,
    vectorize: bool = True,
    out: Path | str = "calibration.h5",
    toml: Path | str = "calibration.toml",
    png: Path | str = "calibration.png",
    progress: Optional[Callable[[int, int], None]] = None,
) -> Calibration:
    """`slt-probe calibrate`: sweep `grid` at some checkpoints of a folder (calibration_points), with model, data
    and loss built from `spec`; write the sweep to `out`, its picture to `png` and, when a configuration passed,
    the recommendation to `toml` (for walk --config). InputError, before any sampling, when an input is bad."""
    try:
        device = resolve_device(config.device)
    except ValueError as e:
        raise InputError(str(e)) from None
    found, _ = discover(ckpt_dir)
    points = calibration_points(found, at, steps)
    inputs = load_inputs(spec, points[0])
    models = []
    for c in points:
        model = copy.deepcopy(inputs.model).to(device)
        try:
            load_into(model, load_state_dict(c, device), source=str(c.path))
        except CheckpointError as e:  # the few checkpoints asked for must all load
            raise InputError(str(e)) from None
        models.append((c.step, model))
    cal = calibrate(models, inputs.data, loss_fn=inputs.loss_fn, grid=grid, config=config, vectorize=vectorize,
                    progress=progress)
    write_calibration(out, cal, {"model": inputs.model_desc, "data": inputs.data_desc,
                                 "checkpoint_dir": str(Path(ckpt_dir).resolve())})
    plot_calibration(cal, png)
    if cal.recommended is not None:
        cal.write_toml(toml)
    return cal
