"""`slt-probe demo --quick`: the whole pipeline (train, walk with probes, transitions, plot) in seconds."""

import json

import h5py
from typer.testing import CliRunner

import slt_probe
from slt_probe.cli import app


def test_the_quick_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(out), "--quick", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "previous-token heads: onset" in result.output and "induction heads: onset" in result.output
    run = out / "run"
    assert (run / "model.json").exists() and (run / "data.npy").exists() and (run / "train_log.json").exists()
    res = slt_probe.load_results(out / "results.h5")
    assert len(res.table) >= 5 and set(res.table.status) == {"ok"}
    assert res.transitions is not None  # detection ran (and was stored)
    with h5py.File(out / "results.h5", "r") as f:
        assert list(f["probes/step"][...]) == list(res.table.step)
        for name in ("prev_token", "prefix_matching", "icl_score"):
            assert f[f"probes/{name}"].shape == (len(res.table),) and f[f"probes/{name}"].attrs["label"]
        assert f["probes/heads/prev_token_heads"].ndim == 3
    assert (out / "curves.png").stat().st_size > 20_000
    report = json.loads((out / "report.json").read_text())
    assert set(report["onsets"]) == {"prev_token", "prefix_matching"} and report["steps"] == list(res.table.step)
    assert set(report["onsets_halfway"]) == set(report["aligned"]) == set(report["onsets"])
    assert isinstance(report["spurts"], list) and isinstance(report["boundaries"], list)
    with h5py.File(out / "results.h5", "r") as f:
        assert "spurts" in f["transitions"]
    # the refined λ̂ of each layer's heads, with its transitions, and each probe read against its best head's layer
    refined = slt_probe.store.Refined.read(out / "results.h5")
    assert set(refined.params) == {"layer0", "layer1"}
    for name in ("layer0", "layer1"):
        assert sorted(refined.values[name]) == list(res.table.step)
        assert slt_probe.store.read_transitions(out / "results.h5", refined=name) is not None
    assert set(report["refined"]) == {"layer0", "layer1"}
    assert set(report["aligned_refined"]) <= {name for name, at in report["onsets"].items() if at is not None}
    assert all(r["component"] in ("layer0", "layer1") for r in report["aligned_refined"].values())
    assert "refined λ̂ of layer0" in result.output
