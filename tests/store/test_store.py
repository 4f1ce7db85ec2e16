"""The results file's schema (slt_probe/store/results.py) round-trips: what store.write puts in is what
store.read / load_results give back; an empty walk and zero burn-in; a foreign or newer file is refused.
The transitions group is tested in test_store_transitions.py, the probes and refined groups with the walker
(tests/runs/test_walker.py)."""

import json

import h5py
import numpy as np
import pytest

from slt_probe import store

C, DRAWS, BURNIN = 3, 5, 2


def make_row(step, status="ok", rng=np.random.default_rng(0)):
    row = store.empty_row(C, DRAWS, BURNIN)
    row.update(step=step, path=f"step_{step}.pt", format="torch", sha256=f"{step:064x}", status=status,
               finished=store.utc_now(), seconds=1.5)
    if status == "ok":
        row.update(init_loss=2.0 + step, llc_mean=10.0 * step, llc_std=0.5, llc_se=0.3, rhat=1.01, ess_bulk=80.0,
                   ess_tail=70.0, acceptance=0.97, drift=0.01, chains_ok=C, verdict="warn", reasons="a; b",
                   llc_per_chain=rng.normal(size=C), loss_trace=rng.normal(size=(C, DRAWS)).astype(np.float32),
                   burnin_trace=rng.normal(size=(C, BURNIN)).astype(np.float32))
    else:
        row.update(message="step_9.pt: truncated", verdict="fail")
    return row


ATTRS = {"schema": store.SCHEMA, "schema_version": store.SCHEMA_VERSION, "engine": "slt", "method": "loop",
         "config_resolved": {"lr": 1e-4, "nbeta": 30.0}, "command": "slt-probe walk x", "num_params": 7}


def test_round_trip(tmp_path):
    rows = [make_row(20), make_row(0), make_row(9, status="failed")]
    path = tmp_path / "r.h5"
    store.write(path, ATTRS, rows, C, DRAWS, BURNIN)
    attrs, back = store.read(path)
    assert attrs["config_resolved"] == {"lr": 1e-4, "nbeta": 30.0} and attrs["num_checkpoints"] == 3
    assert attrs["num_params"] == 7 and attrs["command"] == "slt-probe walk x"
    assert [r["step"] for r in back] == [0, 9, 20]  # sorted by step
    for want in rows:
        got = next(r for r in back if r["step"] == want["step"])
        for name, kind, _ in store.COLUMNS:
            if kind == "str":
                assert got[name] == want[name], name
            else:
                np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    res = store.load_results(path)
    assert list(res.table.columns) == [n for n, k, _ in store.COLUMNS if k not in ("chain", "trace", "burnin")]
    assert res.arrays["loss_trace"].shape == (3, C, DRAWS) and res.arrays["loss_trace"].dtype == np.float32
    assert np.isnan(res.table.set_index("step").loc[9, "llc_mean"])
    with h5py.File(path, "r") as f:
        assert all(f[name].attrs["description"] for name in f)
        assert f["loss_trace"].compression == "gzip" and f["loss_trace"].chunks == (1, C, DRAWS)
        assert json.loads(f["loss_trace"].attrs["dims"]) == ["checkpoint", "chain", "draw"]
    assert not list(tmp_path.glob("r.h5.tmp*"))


def test_an_empty_walk_and_zero_burnin(tmp_path):
    store.write(tmp_path / "e.h5", ATTRS, [], C, DRAWS, 0)
    attrs, rows = store.read(tmp_path / "e.h5")
    assert rows == [] and store.load_results(tmp_path / "e.h5").arrays["burnin_trace"].shape == (0, C, 0)


def test_a_foreign_or_newer_file_is_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(ValueError, match="not an slt-probe results file"):
        store.read(tmp_path / "other.h5")
    store.write(tmp_path / "new.h5", {**ATTRS, "schema_version": store.SCHEMA_VERSION + 1}, [], C, DRAWS, BURNIN)
    with pytest.raises(ValueError, match="newer"):
        store.read(tmp_path / "new.h5")
