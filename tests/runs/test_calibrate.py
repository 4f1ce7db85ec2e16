"""calibrate (slt_probe/runs/calibrate.py): a hyperparameter sweep that recommends settings a deep linear network
with known λ confirms, batched or one grid point at a time, and only after they pass the bias checks. The `calibrate`
command is tested in tests/test_cli.py; recommendations on more DLNs and both samplers in
tests/validation/test_calibration.py."""

from dataclasses import replace

import numpy as np
import pytest

from slt_probe.engine.dln import dln_problem, mse
from slt_probe.engine.estimate import failed_checks
from slt_probe.runs.calibrate import CalibrationGrid, calibrate

TINY, HUGE = 1e-9, 1e-4


@pytest.fixture(scope="module")
def dln():
    return dln_problem((8, 6, 4, 8))


def test_the_recommendation_recovers_the_known_llc_and_bad_steps_fail(dln):
    grid = CalibrationGrid(lr=[TINY, 5e-7, 1e-6, 2e-6, HUGE], localization=[1.0, 100.0])
    cfg = replace(dln.config, draws=1000, burnin=150)
    cal = calibrate([(0, dln.model)], dln.data, loss_fn=mse, grid=grid, config=cfg)
    for g, p in enumerate(cal.points):
        print(p, f"{cal.results[g][0].llc_mean:.3f} ± {cal.results[g][0].llc_se:.3f}", failed_checks(cal.results[g][0]),
              "pass" if cal.passed[g] else "fail")
    best, rec = cal.recommended_config(), cal.recommendation
    assert best is not None and best.lr not in (TINY, HUGE)
    r = rec.results["candidate"][0]  # twice the sweep's draws
    print(f"recommended lr {best.lr:g} γ {best.localization:g}: λ̂ {r.llc_mean:.3f} vs λ {dln.llc}", rec.checks)
    assert abs(r.llc_mean - dln.llc) / dln.llc <= 0.10
    assert all(rec.checks[k].startswith("passed") for k in ("diagnostics", "step size", "localization"))
    assert cal.bias_checks[-1] is rec and not any(b.passed for b in cal.bias_checks[:-1])
    for g, p in enumerate(cal.points):
        if p["lr"] == HUGE:
            assert not cal.passed[g] and "diverged" in failed_checks(cal.results[g][0])
        if p["lr"] == TINY:  # the chains barely leave w*: autocorrelated, still climbing
            assert not cal.passed[g] and {"rhat", "ess", "drift"} & set(failed_checks(cal.results[g][0]))


def test_the_batched_sweep_agrees_with_one_point_at_a_time(dln):
    grid = CalibrationGrid(lr=[5e-7, 2e-6], localization=[1.0, 100.0])
    cfg = replace(dln.config, draws=600, burnin=150)
    batched = calibrate([(0, dln.model)], dln.data, loss_fn=mse, grid=grid, config=cfg)
    one_by_one = calibrate([(0, dln.model)], dln.data, loss_fn=mse, grid=grid, config=cfg, vectorize=False)
    a, b = batched.llc()[:, 0], one_by_one.llc()[:, 0]
    se = np.hypot(batched.llc_se()[:, 0], one_by_one.llc_se()[:, 0])
    print("batched", a.round(3), "one by one", b.round(3), "z", ((a - b) / se).round(2))
    assert np.all(np.abs(a - b) <= 3 * se)
