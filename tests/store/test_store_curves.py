"""A λ̂ curve read from a table, written as a results file (slt_probe/store/curves.py): the walk's schema with nothing
sampled (0 chains, engine "external", its source named), read back by store.read and load_results; a previous
conversion is replaced, anything else refused. Detecting in such a file: tests/test_cli.py."""

import hashlib

import h5py
import numpy as np
import pytest

from slt_probe import store
from slt_probe.errors import InputError
from slt_probe.inputs.curves import read_curve

STEPS = [10, 20, 40, 80, 160, 320]


def table(tmp_path, se=True, loss=True):
    text = "step,llc,se,loss\n" + "".join(f"{s},{i + 1.5},{0.1 * (i + 1)},{4 - 0.5 * i}\n"
                                          for i, s in enumerate(STEPS))
    path = tmp_path / "curve.csv"
    path.write_text(text)
    return read_curve(path, se="se" if se else None, loss="loss" if loss else None)


def test_a_curve_is_a_results_file_with_nothing_sampled(tmp_path):
    curve = table(tmp_path)
    out = store.write_curve(tmp_path / "curve.h5", curve, {"command": "slt-probe transitions curve.csv"})
    assert out == tmp_path / "curve.h5" and store.is_curve_file(out)
    attrs, rows = store.read(out)
    assert attrs["schema"] == store.SCHEMA and attrs["schema_version"] == store.SCHEMA_VERSION
    assert attrs["engine"] == "external" and "read from the table curve.csv" in attrs["description"]
    assert attrs["source"] == {"csv": str((tmp_path / "curve.csv").resolve()),
                               "sha256": hashlib.sha256((tmp_path / "curve.csv").read_bytes()).hexdigest(),
                               "columns": {"step": "step", "llc": "llc", "se": "se", "loss": "loss"},
                               "rows_without_llc": 0}
    assert attrs["command"] == "slt-probe transitions curve.csv" and attrs["versions"]["slt-probe"]
    assert attrs["created"] and attrs["num_checkpoints"] == len(STEPS)
    assert [r["step"] for r in rows] == STEPS and {r["status"] for r in rows} == {r["verdict"] for r in rows} == {"ok"}
    assert [r["llc_mean"] for r in rows] == [i + 1.5 for i in range(len(STEPS))]
    assert [r["llc_se"] for r in rows] == pytest.approx([0.1 * (i + 1) for i in range(len(STEPS))])
    assert [r["init_loss"] for r in rows] == [4 - 0.5 * i for i in range(len(STEPS))]
    assert all(r["path"] == "" and r["chains_ok"] == 0 and np.isnan(r["llc_std"]) for r in rows)
    res = store.load_results(out)
    k = len(STEPS)
    assert res.arrays["llc_per_chain"].shape == (k, 0) and res.arrays["loss_trace"].shape == (k, 0, 0)
    assert res.arrays["burnin_trace"].shape == (k, 0, 0) and res.config == {} and res.transitions is None
    assert list(res.table["step"]) == STEPS


def test_without_se_and_loss_columns_they_are_nan(tmp_path):
    out = store.write_curve(tmp_path / "c.h5", table(tmp_path, se=False, loss=False))
    t = store.load_results(out).table
    assert t["llc_se"].isna().all() and t["init_loss"].isna().all() and t["llc_mean"].notna().all()
    assert store.read(out)[0]["source"]["columns"] == {"step": "step", "llc": "llc", "se": None, "loss": None}


def test_a_previous_conversion_is_replaced_anything_else_refused(tmp_path):
    out = tmp_path / "c.h5"
    store.write_curve(out, table(tmp_path, loss=False))
    with h5py.File(out, "a") as f:
        f.create_group("transitions")  # found in the old curve: gone with it
    store.write_curve(out, table(tmp_path))
    with h5py.File(out, "r") as f:
        assert "transitions" not in f and np.isfinite(f["init_loss"][:]).all()

    walk = tmp_path / "walk.h5"
    row = store.empty_row(2, 3, 0)
    row.update(step=1, status="ok", llc_mean=1.0)
    store.write(walk, {"schema": store.SCHEMA, "schema_version": store.SCHEMA_VERSION, "engine": "slt"}, [row], 2, 3, 0)
    other = tmp_path / "notes.h5"
    other.write_text("not HDF5")
    for path in (walk, other):
        before = path.read_bytes()
        with pytest.raises(InputError) as e:
            store.write_curve(path, table(tmp_path))
        assert str(e.value) == (f"{path}: exists and is not a curve converted from a CSV/TSV file (a walk's "
                                f"results?); nothing was changed; write elsewhere with --out")
        assert path.read_bytes() == before
    with pytest.raises(InputError, match="is a folder"):
        store.write_curve(tmp_path, table(tmp_path))
