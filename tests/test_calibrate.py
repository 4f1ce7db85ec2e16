"""calibrate: a hyperparameter sweep that recommends settings a deep linear network with known λ confirms."""

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
from modelfiles import MODELS_DIR
from test_walk import MODEL_KW, train_checkpoints
from typer.testing import CliRunner

import slt_probe
from slt_probe.calibrate import CalibrationGrid, calibrate, failed_checks
from slt_probe.reference import dln_reference, mse

TINY, HUGE = 1e-9, 1e-4



@pytest.fixture(scope="module")
def dln():
    return dln_reference((8, 6, 4, 8))


def test_the_recommendation_recovers_the_known_llc_and_bad_steps_fail(dln):
    grid = CalibrationGrid(lr=[TINY, 5e-7, 1e-6, 2e-6, HUGE], localization=[1.0, 100.0])
    cfg = replace(dln.config, draws=1000, burnin=150)
    cal = calibrate([(0, dln.model)], dln.data, loss_fn=mse, grid=grid, config=cfg)
    for g, p in enumerate(cal.points):
        print(p, f"{cal.results[g][0].llc_mean:.3f} ± {cal.results[g][0].llc_se:.3f}", failed_checks(cal.results[g][0]),
              "pass" if cal.passed[g] else "fail")
    best = cal.recommended_config()
    assert best is not None and best.lr not in (TINY, HUGE)
    r = cal.results[cal.recommended][0]
    print(f"recommended lr {best.lr:g} γ {best.localization:g}: λ̂ {r.llc_mean:.3f} vs λ {dln.llc}")
    assert abs(r.llc_mean - dln.llc) / dln.llc <= 0.15
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


def test_the_calibrate_command_writes_sweep_plot_and_a_config_walk_reads(tmp_path):
    rng = np.random.default_rng(0)
    tokens = (np.arange(256 * 9).reshape(256, 9) * 7 + rng.integers(0, 3, (256, 9))) % 32
    np.save(tmp_path / "data.npy", tokens.astype(np.int64))
    (tmp_path / "model.json").write_text(json.dumps(MODEL_KW))
    train_checkpoints(tmp_path / "ckpts", tokens)
    common = ["--model", f"{MODELS_DIR / 'attn_only.py'}:attn_only", "--model-config", str(tmp_path / "model.json"),
              "--data", str(tmp_path / "data.npy")]
    runner = CliRunner()
    result = runner.invoke(slt_probe.cli.app, [
        "calibrate", str(tmp_path / "ckpts"), *common, "--lr", "1e-5,1e-4,100", "--localization", "100",
        "--nbeta", "30", "--chains", "2", "--draws", "60", "--burnin", "10", "--batch-size", "16",
        "--out", str(tmp_path / "cal.h5"), "--toml", str(tmp_path / "cal.toml"), "--png", str(tmp_path / "cal.png"),
        "--quiet"])
    print(result.output)
    with h5py.File(tmp_path / "cal.h5", "r") as f:
        assert f.attrs["schema"] == "slt-probe.calibration"
        assert list(f["step"][...]) == [10, 20, 30]  # first after step 0, middle, last
        assert f["loss_trace"].shape == (3, 3, 2, 60)
        assert all(f[name].attrs["description"] for name in f)
        assert not f["passed"][2] and "diverged" in f["failed"].asstr()[2, 0]  # lr 100
    assert (tmp_path / "cal.png").stat().st_size > 10_000
    if result.exit_code == 1:  # nothing passed on this tiny budget: said so, with advice
        assert "no configuration passed" in result.output and "note:" in result.output
        return
    assert result.exit_code == 0
    result = runner.invoke(slt_probe.cli.app, ["walk", str(tmp_path / "ckpts"), *common, "--config",
                                               str(tmp_path / "cal.toml"), "--out", str(tmp_path / "w.h5"), "--quiet"])
    assert result.exit_code == 0, result.output
    cfg = slt_probe.load_results(tmp_path / "w.h5").attrs["config_resolved"]
    assert cfg["nbeta"] == 30.0 and cfg["chains"] == 2 and cfg["draws"] == 60
