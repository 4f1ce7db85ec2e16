"""The parts folder of a results file (slt_probe/store/parts.py, results.ResultsFile.add / merge): each finished
checkpoint written on its own, folded in by every reader, folded into the file now and then and at the end.

What must hold: readers see the parts' rows, probes and refined λ̂; folding is idempotent (a writer killed between
the rewrite and the deletion of the parts leaves nothing wrong); the rows written per checkpoint do not grow with
the file (amortized); kill -9 at any moment, folds included, leaves a file that reads every row written before, and
a rerun completes it with the same numbers."""

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from slt_probe import SGLDConfig, store

C, DRAWS, BURNIN = 3, 5, 2
CONFIG = SGLDConfig(chains=C, draws=DRAWS, burnin=BURNIN)
ATTRS = {"schema": store.SCHEMA, "schema_version": store.SCHEMA_VERSION, "engine": "slt", "method": "loop",
         "config_resolved": CONFIG.to_dict(), "num_params": 7, "num_samples": 10}


def make_row(step):
    rng = np.random.default_rng(step)
    row = store.empty_row(C, DRAWS, BURNIN)
    row.update(step=step, path=f"step_{step}.pt", format="torch", sha256=f"{step:064x}", status="ok",
               finished=store.utc_now(), seconds=1.5, init_loss=2.0 + step, llc_mean=10.0 * step, llc_std=0.5,
               llc_se=0.3, chains_ok=C, verdict="ok", llc_per_chain=rng.normal(size=C),
               loss_trace=rng.normal(size=(C, DRAWS)).astype(np.float32),
               burnin_trace=rng.normal(size=(C, BURNIN)).astype(np.float32))
    return row


def probes_at(step):
    return store.Probes({"acc": ("accuracy", "fraction right")}, {step: {"acc": step / 100}})


def refined_at(step, params=r"^a\."):
    return store.Refined({"a": params}, {"a": 4}, {"a": {step: {"llc_mean": step + 0.5, "llc_se": 0.1, "verdict": "ok",
                                                             "llc_per_chain": np.full(C, step + 0.5)}}},
                         {"a": {"layer": None, "head": None}})


def walk(path, steps, finish=True):
    """What a walk does with its file: start, a part per checkpoint (row, probes, refined λ̂), finish."""
    f = store.ResultsFile(path, CONFIG)
    f.adopt(dict(ATTRS, created=store.utc_now()))
    f.start()
    for s in steps:
        f.add(store.parts.part_name(s), [make_row(s)], probes_at(s), refined_at(s))
    if finish:
        f.finish()
    f.close()


def assert_rows(path, steps):
    attrs, rows = store.read(path)
    assert [r["step"] for r in rows] == steps and attrs["num_checkpoints"] == len(steps)
    for r in rows:
        want = make_row(r["step"])
        for name, kind, _ in store.COLUMNS:
            if name != "finished":
                np.testing.assert_array_equal(np.asarray(r[name]), np.asarray(want[name]), err_msg=name)
    assert sorted(store.Probes.read(path).values) == steps
    assert sorted(store.Refined.read(path).values["a"]) == steps


def test_readers_fold_the_parts_in_and_finish_folds_them_into_the_file(tmp_path):
    path = tmp_path / "r.h5"
    walk(path, [20, 0, 10], finish=False)
    assert len(store.parts.files(path)) == 3
    with h5py.File(path, "r") as f:  # plain h5py: the file as it was started
        assert f["step"].shape == (0,)
    assert_rows(path, [0, 10, 20])  # every slt-probe reader: the rows written so far
    res = store.load_results(path)
    assert list(res.table.step) == [0, 10, 20] and res.arrays["loss_trace"].shape == (3, C, DRAWS)
    assert res.arrays["loss_trace"].dtype == np.float32

    f = store.ResultsFile(path, CONFIG)  # a rerun sees them too
    assert sorted(f.rows) == [0, 10, 20]
    f.finish()
    f.close()
    assert not store.parts.folder(path).exists()
    with h5py.File(path, "r") as h:
        assert list(h["step"][...]) == [0, 10, 20] and "probes" in h and "refined/a" in h
    assert_rows(path, [0, 10, 20])


def test_folding_is_idempotent(tmp_path):
    path = tmp_path / "r.h5"
    walk(path, [0, 10], finish=False)
    saved = tmp_path / "saved"
    shutil.copytree(store.parts.folder(path), saved)
    with store.WriterLock(path):
        store.merge(path)
    before = store.load_results(path).arrays
    shutil.copytree(saved, store.parts.folder(path), dirs_exist_ok=True)  # killed before the parts were deleted
    assert_rows(path, [0, 10])
    for name, a in store.load_results(path).arrays.items():
        np.testing.assert_array_equal(a, before[name], err_msg=name)
    with store.WriterLock(path):
        store.merge(path)
    assert_rows(path, [0, 10])
    assert not store.parts.files(path)


def test_a_part_replaces_the_files_row_and_a_changed_component_starts_again(tmp_path):
    path = tmp_path / "r.h5"
    walk(path, [0, 10])
    f = store.ResultsFile(path, CONFIG)
    f.adopt(dict(ATTRS, created=store.utc_now()))
    f.start()
    row = make_row(10)
    row["llc_mean"] = -1.0
    f.add("again", [row], refined=refined_at(10, params=r"^b\."))  # step 10 again; component a now samples b
    t = store.load_results(path).table.set_index("step")
    assert t.loc[10, "llc_mean"] == -1.0 and t.loc[0, "llc_mean"] == 0.0
    r = store.Refined.read(path)
    assert r.params["a"] == r"^b\." and sorted(r.values["a"]) == [10]  # the old pattern's steps are gone
    f.close()


def test_a_reader_that_meets_a_part_merged_meanwhile_reads_again(tmp_path, monkeypatch):
    path = tmp_path / "r.h5"
    walk(path, [0, 10], finish=False)
    real, calls = store.parts.files, []

    def listing(p):  # the first listing names a part that the writer folds in and deletes before it is read
        calls.append(1)
        return real(p) + ([store.parts.folder(p) / "gone.h5"] if len(calls) == 1 else [])

    monkeypatch.setattr(store.parts, "files", listing)
    assert [r["step"] for r in store.read(path)[1]] == [0, 10] and len(calls) == 2


def test_the_rows_written_per_checkpoint_do_not_grow_with_the_file(tmp_path, monkeypatch):
    written = []
    write = store.results.write

    def counting(path, attrs, rows, *args, **kwargs):
        written.append(len(rows))
        return write(path, attrs, rows, *args, **kwargs)

    monkeypatch.setattr(store.results, "write", counting)
    k = 300
    walk(tmp_path / "r.h5", range(k))
    # before: the whole file after every checkpoint, k (k + 1) / 2 = 45150 rows; now a part of one row each, and
    # the parts folded in when they outnumber the file's rows: at most 1 + 2 + 1 rows per checkpoint in all
    assert sum(written) <= 4 * k, sum(written)
    assert written.count(1) == k
    assert_rows(tmp_path / "r.h5", list(range(k)))


WRITER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_parts import CONFIG, ATTRS, make_row, probes_at, refined_at
from slt_probe import store

path = sys.argv[1]
f = store.ResultsFile(path, CONFIG)
f.adopt(dict(ATTRS, created=store.utc_now()))
f.start()
for s in range(120):
    if s in f.rows:
        continue
    f.add(store.parts.part_name(s), [make_row(s)], probes_at(s), refined_at(s))
    print(s, flush=True)
    if s % 3 == 0:  # fold often, so that kills land inside folds too
        store.merge(path, f.attrs)
f.finish()
f.close()
"""


def test_kill_9_at_any_moment_leaves_a_readable_file_and_a_rerun_completes_it(tmp_path):
    path, here = tmp_path / "r.h5", os.path.dirname(__file__)
    script = textwrap.dedent(WRITER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rng, seen = random.Random(0), 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path), here], env=env, stdout=subprocess.PIPE,
                                text=True)
        proc.stdout.readline()  # at least one part written
        time.sleep(rng.uniform(0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        with h5py.File(path, "r") as f:
            assert f.attrs["schema"] == store.SCHEMA
        steps = [r["step"] for r in store.read(path)[1]]
        assert steps == list(range(len(steps))) and len(steps) >= max(seen, 1)  # nothing written is lost
        seen = len(steps)
    assert seen < 120, "the writer finished before it was killed"
    subprocess.run([sys.executable, "-c", script, str(path), here], env=env, check=True, capture_output=True)
    assert_rows(path, list(range(120)))
    assert not store.parts.folder(path).exists() and not list(tmp_path.glob("r.h5.tmp*"))


@pytest.mark.parametrize("what", ["folder", "foreign"])
def test_a_results_file_gone_or_a_foreign_part(tmp_path, what):
    path = tmp_path / "r.h5"
    walk(path, [0], finish=False)
    if what == "folder":  # the file deleted by hand: a new walk does not inherit its parts
        path.unlink()
        walk(path, [10])
        assert [r["step"] for r in store.read(path)[1]] == [10]
    else:
        with h5py.File(store.parts.folder(path) / "zzz.h5", "w") as f:
            f["x"] = [1]
        with pytest.raises(ValueError, match="zzz.h5: not a part"):
            store.read(path)
