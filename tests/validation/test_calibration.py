"""calibrate's recommendation against a closed form (slt_probe/runs/calibrate.py): on full-rank DLNs of different
depth, width and input scale, the settings it recommends (after the step-size and localization checks) estimate
Aoyagi's λ within 10%, for both samplers. benchmarks/calibration.py runs six DLNs with the walk's budget."""

from dataclasses import replace

import pytest

from slt_probe.engine.dln import dln_problem, mse
from slt_probe.engine.estimate import estimate_llc
from slt_probe.engine.sampler import SGLDConfig
from slt_probe.runs.calibrate import CalibrationGrid, calibrate

# (widths, input scale): the curvature grows as scale², so no one step size suits all three
CASES = [((8, 6, 4, 8), 1.0), ((12, 8, 8, 8, 6), 1.0), ((16, 16), 3.0)]


@pytest.mark.parametrize("sampler", ["sgld", "rmsprop"])
@pytest.mark.parametrize("widths,scale", CASES, ids=lambda v: str(v))
def test_the_recommendation_lands_within_10_percent_of_the_learning_coefficient(widths, scale, sampler):
    p = dln_problem(widths, n=20_000, scale=scale)
    cal = calibrate([(1, p.model)], p.data, loss_fn=mse, grid=CalibrationGrid(),  # the CLI's default grid
                    config=SGLDConfig(chains=4, draws=500, burnin=125, batch_size=32, sampler=sampler))
    rec = cal.recommendation
    assert rec is not None, [b.checks for b in cal.bias_checks]
    assert all(rec.checks[k].startswith("passed") for k in ("diagnostics", "step size", "localization"))
    r = estimate_llc(p.model, p.data, loss_fn=mse, config=replace(cal.recommended_config(), draws=1000, burnin=250))
    print(f"{widths} scale {scale} {sampler}: lr {rec.point['lr']:g} γ {rec.point['localization']:g} → "
          f"λ̂ {r.llc_mean:.2f} ± {r.llc_se:.2f} vs λ {p.llc} ({r.llc_mean / p.llc - 1:+.1%})")
    assert abs(r.llc_mean / p.llc - 1) <= 0.10
