"""Choosing SGLD hyperparameters with evidence: sweep lr × localization (× nbeta) at a few checkpoints.

Every grid point runs with the same seed, minibatches and budget at every probed checkpoint. A point
passes when its diagnostics are clean (verdict "ok": no divergence, R-hat <= 1.1, ESS >= 50, MALA
acceptance >= 0.5, λ̂ >= 0, no drift) at every probed checkpoint. Among passing points we want one where
λ̂ has stopped depending on lr (its neighbours in lr, same γ and nβ, agree within 2 combined standard
errors at every checkpoint: the plateau of λ̂ against lr that a well-chosen step size sits on, Lau et al.
2023 §5). A candidate is recommended only when it passes two bias checks, run after the sweep with four times its draws:
halving lr must not move λ̂ (the discretization bias of an unadjusted Langevin step grows with ε; too small an ε has
not equilibrated, which shows the same way), and dividing γ by 10 must not move it either (the localization pulls
λ̂ down where the posterior is wide). Candidates are tried on a plateau first, then weakest γ first; when only the
localization check fails and γ/10 still samples (its step at most too large for it: then lr is halved too), γ is
followed down below the grid.

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

# The default lr grid per sampler: RMSProp's G = 1/(eps + sqrt(V)) is ~1/eps = 10 where gradients are small, so
# the same drift needs an ε ten times smaller.
LR_GRID = {"sgld": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3), "rmsprop": (1e-6, 3e-6, 1e-5, 3e-5, 1e-4)}
PLATEAU_SE = 2.0  # neighbours in lr agree when |Δλ̂| <= PLATEAU_SE combined standard errors
# The bias checks a recommendation must pass (sgld's ULA bias grows with lr, the localization bias with γ): λ̂ at
# lr/2 and at γ/10, same seed, VERIFY_DRAWS × the sweep's draws and burn-in, must agree with λ̂ at the candidate within
# AGREE_SE combined standard errors at every probed checkpoint. Up to VERIFY_CANDIDATES passing points are tried,
# best first; the first that passes both is recommended.
AGREE_SE = 2.0
# ... or within AGREE_RELATIVE of λ̂: an unadjusted Langevin step's bias is about linear in ε (Vollmer et al. 2016,
# arXiv 1501.00438), so a shift of 5% at lr/2 bounds the bias at the candidate near 10%, the accuracy promised; long
# chains resolve smaller shifts than that, which need not disqualify a step size.
AGREE_RELATIVE = 0.05
# The bias checks run VERIFY_DRAWS × the sweep's draws: following γ below the grid reaches chains that mix slowly (the
# DLN's flat directions, held by γ alone). At 2× their ESS was 33–39 on four of the six DLNs of test_calibration.py,
# verdict warn, and calibrate declined to recommend, or did not, by the draw of the noise; at 4× all six recommend.
VERIFY_DRAWS = 4
VERIFY_CANDIDATES = 4
GAMMA_CHECK_FACTOR = 10.0
GAMMA_STEPS_DOWN = 3  # when γ/10 changes λ̂ but samples cleanly, follow it down this many factors of 10
RUNS = ("candidate", "lr/2", f"γ/{GAMMA_CHECK_FACTOR:g}")  # the three runs of a bias check, in this order


@dataclass
class CalibrationGrid:
    lr: Optional[Sequence[float]] = None  # None: LR_GRID[sampler]
    localization: Sequence[float] = (30.0, 100.0, 300.0)
    nbeta: Optional[Sequence[float]] = None  # None: the config's nβ (resolved: n / log n by default)

    def points(self, default_nbeta: float, sampler: str = "sgld") -> list[dict[str, float]]:
        nbetas = list(self.nbeta) if self.nbeta else [default_nbeta]
        lrs = self.lr if self.lr else LR_GRID[sampler]
        return [{"lr": float(lr), "localization": float(g), "nbeta": float(nb)}
                for nb, g, lr in itertools.product(nbetas, sorted(self.localization), sorted(lrs))]


@dataclass
class BiasCheck:
    """One candidate's bias checks: λ̂ at the candidate, at lr/2 and at γ/10, each VERIFY_DRAWS × the sweep's draws."""
    point: dict[str, float]  # the candidate {lr, localization, nbeta}
    grid_index: Optional[int]  # its row in the sweep; None when γ was followed below the grid
    results: dict[str, list[LLCResult]]  # RUNS -> one result per probed checkpoint
    checks: dict[str, str]  # "diagnostics" | "plateau" | "step size" | "localization" -> "passed: ..." and the like
    passed: bool  # diagnostics, step size and localization all passed (the plateau is a preference, not a check)


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
    bias_checks: list[BiasCheck] = field(default_factory=list)  # the candidates tried, in order
    advice: list[str] = field(default_factory=list)
    vectorized: bool = True

    @property
    def recommendation(self) -> Optional[BiasCheck]:
        """The first candidate that passed its bias checks (the last one tried), or None."""
        return self.bias_checks[-1] if self.bias_checks and self.bias_checks[-1].passed else None

    @property
    def recommended(self) -> Optional[int]:
        """The recommendation's row in the sweep; None when nothing passed or it lies below the grid."""
        return self.recommendation.grid_index if self.recommendation else None

    def recommended_config(self) -> Optional[SGLDConfig]:
        rec = self.recommendation
        return None if rec is None else replace(self.config, **rec.point)

    def llc(self) -> np.ndarray:
        return np.array([[r.llc_mean for r in row] for row in self.results])  # [G, P]

    def llc_se(self) -> np.ndarray:
        return np.array([[r.llc_se for r in row] for row in self.results])  # [G, P]

    def table(self) -> list[dict]:
        """One row per grid point: its settings, λ̂ ± s.e. at each probed checkpoint, ESS per second, and the outcome
        (what `slt-probe calibrate` prints; pandas.DataFrame(cal.table()) in a notebook)."""
        tried = {b.grid_index: b for b in self.bias_checks if b.grid_index is not None}  # checked at the grid point
        rows = []
        for g, p in enumerate(self.points):
            failed = sorted({k for r in self.results[g] for k in failed_checks(r)})
            if not self.passed[g]:
                result = "fail: " + ", ".join(failed)
            elif g == self.recommended:
                result = "recommended"
            else:
                bias = [k for k in ("step size", "localization") if tried[g].checks[k].startswith("failed")] \
                    if g in tried else []
                result = "pass" + (", plateau" if self.on_plateau[g] else "") + \
                    (f"; bias check failed: {', '.join(bias)}" if bias else "")
            rows.append({**p, "llc": [r.llc_mean for r in self.results[g]], "llc_se": [r.llc_se for r in self.results[g]],
                         "ess_per_second": self.ess_per_second[g], "passed": self.passed[g],
                         "on_plateau": self.on_plateau[g], "recommended": g == self.recommended, "failed": failed,
                         "result": result})
        return rows

    def checks_table(self) -> list[dict]:
        """One row per bias check run: the candidate, λ̂ at it, at lr/2 and at γ/10 per probed checkpoint, the checks."""
        return [{**b.point, "in_grid": b.grid_index is not None, "passed": b.passed, "checks": b.checks,
                 **{run: [(r.llc_mean, r.llc_se) for r in b.results[run]] for run in RUNS}} for b in self.bias_checks]

    def write_toml(self, path: str | Path) -> Path:
        """The recommended settings as a file `slt-probe walk --config` reads, with the checks they passed."""
        cfg, rec = self.recommended_config(), self.recommendation
        if cfg is None:
            raise ValueError("no configuration passed: nothing to recommend")
        lines = ["# SGLD settings chosen by slt-probe calibrate; the checks they passed:"]
        lines += [f"#   {k}: {v}" for k, v in rec.checks.items()]
        lines.append("[sgld]")
        for key in ("lr", "localization", "nbeta", "chains", "draws", "burnin", "batch_size", "seed", "sampler"):
            lines.append(f"{key} = {getattr(cfg, key)!r}")
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        return Path(path)


def _assess(cal: Calibration) -> None:
    """passed, on_plateau, ess_per_second and advice from the sweep's results."""
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

    if any(cal.passed):
        return
    cal.advice.append("no configuration passes every diagnostic at every probed checkpoint")
    for j, step in enumerate(cal.steps):
        counts: dict[str, int] = {}
        for g in range(G):
            for key in failed_checks(cal.results[g][j]):
                counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            cal.advice.append(f"step {step}: {n} of {G} configurations: {ADVICE[key]}")


def candidates(cal: Calibration) -> list[int]:
    """The passing points in the order they are tried: on a plateau of λ̂ against lr first, then the weakest
    localization (the least bias from γ), then the most effective samples per second."""
    passing = [g for g in range(len(cal.points)) if cal.passed[g]]
    return sorted(passing, key=lambda g: (not cal.on_plateau[g], cal.points[g]["localization"],
                                          -cal.ess_per_second[g]))


def _agree(a: list[LLCResult], b: list[LLCResult]) -> tuple[bool, str]:
    """Whether λ̂ agrees between two runs at every probed checkpoint (AGREE_SE or AGREE_RELATIVE), and the worst
    case in words."""
    worst, ok, z_max = "", True, -1.0
    for ra, rb in zip(a, b):
        if rb.verdict == "fail" or not np.isfinite(rb.llc_mean):
            return False, f"a run that fails its diagnostics ({', '.join(failed_checks(rb)) or rb.verdict})"
        shift = abs(ra.llc_mean - rb.llc_mean)
        z = shift / max(float(np.hypot(ra.llc_se, rb.llc_se)), 1e-300)
        ok &= z <= AGREE_SE or shift <= AGREE_RELATIVE * abs(ra.llc_mean)
        if z > z_max:
            z_max = z
            worst = f"λ̂ {ra.llc_mean:.4g} → {rb.llc_mean:.4g} ({z:.1f} s.e., {shift / abs(ra.llc_mean):.1%})"
    return bool(ok), worst


def _bias_check(cal: Calibration, g: int, point: dict[str, float], results: list[list[LLCResult]]) -> BiasCheck:
    """The verdicts on one candidate from its three runs [RUNS][P]."""
    at, half, weaker = results
    step_ok, step_words = _agree(at, half)
    loc_ok, loc_words = _agree(at, weaker)
    below = point != cal.points[g]
    # the sweep judged the candidate's diagnostics at the sweep's budget; below the grid only this run can
    clean = all(r.verdict == "ok" for r in at) if below else True
    where = f" at γ {point['localization']:g}, below the grid" if below else " in the sweep"
    failed = sorted({k for r in at for k in failed_checks(r)})
    checks = {
        "diagnostics": f"passed: verdict ok at every probed checkpoint{where}" if clean else
                       f"failed{where}: {', '.join(failed) or 'verdict not ok'}",
        "plateau": "not judged: below the grid" if below else
                   ("passed: a neighbouring lr agrees" if cal.on_plateau[g] else "not met: no neighbouring lr agrees"),
        "step size": f"{'passed' if step_ok else 'failed'}: lr/2 gives {step_words}",
        "localization": f"{'passed' if loc_ok else 'failed'}: γ/{GAMMA_CHECK_FACTOR:g} gives {loc_words}",
    }
    return BiasCheck(point=dict(point), grid_index=None if below else g, results=dict(zip(RUNS, results)),
                     checks=checks, passed=clean and step_ok and loc_ok)


def _verify(cal: Calibration, run: Callable[[list[dict[str, float]], SGLDConfig], list[list[LLCResult]]]) -> None:
    """Try the candidates' bias checks in order until one passes (see AGREE_SE); run(points, config) -> [G][P]."""
    # at least twice the steps, burn-in included: the lr/2 run then travels as far (ε × steps) as the sweep's candidate did,
    # so a chain that is merely slower to equilibrate does not read as a step-size bias
    config = replace(cal.config, draws=cal.config.draws * VERIFY_DRAWS, burnin=cal.config.burnin * VERIFY_DRAWS)
    tried = candidates(cal)[:VERIFY_CANDIDATES]
    seen = set()  # points already checked (following γ down can reach another candidate's point): failed, skip
    for g in tried:
        p = dict(cal.points[g])
        for _ in range(GAMMA_STEPS_DOWN + 1):
            if (key := tuple(p.values())) in seen:
                break
            seen.add(key)
            results = run([p, {**p, "lr": p["lr"] / 2}, {**p, "localization": p["localization"] / GAMMA_CHECK_FACTOR}],
                          config)
            check = _bias_check(cal, g, p, results)
            cal.bias_checks.append(check)
            if check.passed:
                return
            # the localization pulls λ̂ and a weaker one still samples: go down a step and check again. A wider
            # posterior may need a smaller step: when the γ/10 run fails the MALA check alone, halve lr as well.
            weaker = {k for r in results[2] for k in failed_checks(r)}  # every verdict short of ok names its checks
            if check.checks["step size"].startswith("passed") and weaker <= {"mala"}:
                p["localization"] /= GAMMA_CHECK_FACTOR
                p["lr"] /= 2 if weaker else 1
                continue
            break
    if tried:
        cal.advice.append(f"none of the {len(tried)} best passing configurations passed the bias checks (λ̂ must not "
                          f"move by more than {AGREE_SE:g} s.e. or {AGREE_RELATIVE:.0%} at lr/2 or at "
                          f"γ/{GAMMA_CHECK_FACTOR:g}): with lr too "
                          "small the chains have not equilibrated, too large they are biased; raise --draws and "
                          "--burnin, or widen the grid (smaller --localization)")


def _run_points(models: Sequence[tuple[int, nn.Module]], data: Data, loss_fn: LossFn, config: SGLDConfig,
                points: list[dict[str, float]], vectorize: bool,
                tick: Callable[[], None]) -> tuple[list[list[LLCResult]], np.ndarray]:
    """Every point at every probed checkpoint with the same seed and minibatches: results [G][P], seconds [G, P].

    vectorize: one batched run of G·C chains per checkpoint, point g owning chains g·C ... g·C + C - 1; else one
    run per point. tick() after each run.
    """
    G, P, C = len(points), len(models), config.chains
    results: list[list[Optional[LLCResult]]] = [[None] * P for _ in range(G)]
    seconds = np.zeros((G, P))

    def summary(loss, mala, trace, init_loss, cfg, num_params, elapsed):
        return summarize(loss, init_loss, cfg, num_params, engine="slt", method=trace.method, mala=mala,
                         mala_step=trace.mala_step.numpy(), notes=trace.notes, seconds=elapsed)

    for j, (step, model) in enumerate(models):
        if vectorize:
            per_chain = {k: torch.tensor([p[k] for p in points for _ in range(C)], dtype=torch.float64)
                         for k in ("lr", "localization", "nbeta")}
            start = time.perf_counter()
            trace, init_loss, num_params = sample(model, data, loss_fn, replace(config, chains=G * C),
                                                  per_chain=per_chain)
            elapsed = (time.perf_counter() - start) / G
            loss, mala = trace.loss.double().numpy(), trace.mala.double().numpy()
            for g, p in enumerate(points):
                rows = slice(g * C, (g + 1) * C)
                results[g][j] = summary(loss[rows], mala[rows], trace, init_loss, replace(config, **p), num_params,
                                        elapsed)
                seconds[g, j] = elapsed
            tick()
        else:
            for g, p in enumerate(points):
                cfg = replace(config, **p)
                start = time.perf_counter()
                trace, init_loss, num_params = sample(model, data, loss_fn, cfg)
                seconds[g, j] = time.perf_counter() - start
                results[g][j] = summary(trace.loss.double().numpy(), trace.mala.double().numpy(), trace, init_loss,
                                        cfg, num_params, seconds[g, j])
                tick()
    return results, seconds


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
    """Sweep `grid` at each (step, model) in `models`, then bias-check the best candidates and recommend one.

    config: the budget and everything the grid does not vary (chains per grid point, draws, burnin, batch
      size, seed, device, sampler); its lr / localization are ignored, its nbeta is the default grid value.
    progress(done, total) counts sampling runs; the total grows by one bias check each time a candidate fails.
    """
    config = (config or SGLDConfig()).resolved(num_samples(data))
    grid = grid or CalibrationGrid()
    if loss_fn is None:
        check_lm_tokens(data)
        loss_fn = lm_cross_entropy
    points = grid.points(float(config.nbeta), config.sampler)
    G, P = len(points), len(models)
    per_sweep, per_check = (P, P) if vectorize else (P * G, P * len(RUNS))
    done = 0

    def tick():  # the total counts the bias check under way: it grows when a candidate fails and the next is tried
        nonlocal done
        done += 1
        if progress:
            checks = len(cal.bias_checks) + 1
            progress(done, max(done, per_sweep + checks * per_check))

    cal = Calibration(config=config, points=points, steps=[int(s) for s, _ in models], results=[], seconds=np.zeros(0),
                      vectorized=vectorize)
    cal.results, cal.seconds = _run_points(models, data, loss_fn, config, points, vectorize, tick)
    _assess(cal)
    _verify(cal, lambda pts, cfg: _run_points(models, data, loss_fn, cfg, pts, vectorize, tick)[0])
    if progress:
        progress(done, done)
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
