"""Faults a walk meets in real use (issue 14): a second writer, a checkpoint rotated away or rewritten while it is
read, an output that cannot be written, a full disk; and reruns that give the same numbers whatever the load."""

import os
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch
from modelfiles import load_model_file
from walkrun import MODEL_KW, STEPS, make_run

import slt_probe
from slt_probe import store
from slt_probe.engine.estimate import sampling_method
from slt_probe.engine.sampler import VMAP_PARAMS_UP_TO, auto_method
from slt_probe.errors import InputError, OutputError
from slt_probe.inputs.checkpoints import discover
from slt_probe.runs import walker

CONFIG = slt_probe.SGLDConfig(chains=2, draws=10, burnin=2, batch_size=16, nbeta=30.0, method="loop", seed=3)


@pytest.fixture()
def run(tmp_path):
    return make_run(tmp_path)


def walk(run, out, **kw):
    model = load_model_file("attn_only").attn_only(**MODEL_KW)
    data = torch.from_numpy(np.load(run / "data.npy"))
    return slt_probe.walk(kw.pop("ckpts", run / "ckpts"), out, model=model, data=data, config=CONFIG, **kw)


HOLD = """
import sys, time
from slt_probe.store import WriterLock
lock = WriterLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(path, seconds):
    """A process that holds `path`'s writer lock for `seconds`; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ----------------------------------------------------------------------------------------------------------
# one writer at a time


def test_a_second_writer_is_refused_with_the_holders_name_and_loses_nothing(run):
    out = run / "r.h5"
    walk(run, out)
    before = slt_probe.load_results(out).arrays["llc_mean"].copy()
    holder = hold_lock(out, 60)
    try:
        with pytest.raises(InputError) as e:
            walk(run, out, overwrite=True)
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and "--wait" in msg and "\n" not in msg and "--overwrite" not in msg
        # readers keep working while another process holds the file
        np.testing.assert_array_equal(slt_probe.load_results(out).arrays["llc_mean"], before)
    finally:
        holder.kill()
        holder.wait()
    walk(run, out, overwrite=True)  # a dead holder's lock is gone with it


def test_wait_waits_for_the_other_writer(run):
    out = run / "r.h5"
    holder = hold_lock(out, 2)
    start = time.monotonic()
    summary = walk(run, out, wait=True)
    assert time.monotonic() - start >= 1.0 and summary.computed == len(STEPS)
    holder.wait()


def test_two_walks_over_disjoint_steps_into_one_file_keep_every_row(run):
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        import slt_probe
        from slt_probe.demo.model import attn_only
        from slt_probe.inputs.checkpoints import discover, select
        found, _ = discover({str(run / 'ckpts')!r})
        todo = select(found, steps=[int(s) for s in sys.argv[1].split(",")])
        slt_probe.walk(todo, {str(run / 'both.h5')!r}, root={str(run / 'ckpts')!r}, model=attn_only(**{MODEL_KW!r}),
                       data=torch.from_numpy(np.load({str(run / 'data.npy')!r})),
                       config=slt_probe.SGLDConfig(chains=2, draws=10, burnin=2, batch_size=16, nbeta=30.0,
                                                   method="loop", seed=3), wait=True)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", script, steps], env=env, stderr=subprocess.PIPE, text=True)
             for steps in ("0,20", "10,30")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert list(slt_probe.load_results(run / "both.h5").table.step) == STEPS  # 4 of 4 rows, not 2


def test_temporaries_belong_to_their_writer(run):
    out = run / "r.h5"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live, dead = run / f"r.h5.tmp{alive.pid}", run / "r.h5.tmp999999999"
        live.write_bytes(b"half")
        dead.write_bytes(b"half")
        walk(run, out)
        assert live.exists() and not dead.exists()  # a running writer's temporary is not pulled from under it
    finally:
        alive.kill()
        alive.wait()


# ----------------------------------------------------------------------------------------------------------
# checkpoints that vanish or change while the walk runs


def test_a_checkpoint_rotated_away_mid_walk_is_a_failed_row_and_the_walk_goes_on(run):
    out = run / "r.h5"

    def on_event(kind, **info):  # a trainer rotates step_20.pt away while step 10 is estimated
        if kind == "start" and info["checkpoint"].step == 10:
            (run / "ckpts" / "step_20.pt").unlink()

    summary = walk(run, out, on_event=on_event)
    t = slt_probe.load_results(out).table.set_index("step")
    assert list(t.index) == STEPS and summary.computed == 3 and [f["step"] for f in summary.failed] == [20]
    assert t.loc[20, "status"] == "failed" and "step_20.pt" in t.loc[20, "message"]
    assert "\n" not in t.loc[20, "message"] and (t.loc[[0, 10, 30], "status"] == "ok").all()
    # rotated away after it was measured, between a rerun's discovery and its reading: its row stands
    found, _ = discover(run / "ckpts")
    (run / "ckpts" / "step_0.pt").unlink()
    summary = walk(run, out, ckpts=found, root=run / "ckpts")
    t2 = slt_probe.load_results(out).table.set_index("step")
    assert t2.loc[0, "status"] == "ok" and t2.loc[0, "llc_mean"] == t.loc[0, "llc_mean"]
    assert summary.skipped == 3 and summary.computed == 0 and not summary.failed  # 0 kept; 10, 30 unchanged


def test_a_checkpoint_rewritten_while_it_is_read_is_a_failed_row(run, monkeypatch):
    out = run / "r.h5"
    load = walker.load_state_dict

    def load_then_rewrite(ckpt, device):
        state = load(ckpt, device)
        if ckpt.step == 10:  # the trainer overwrites it meanwhile
            torch.save({k: v.clone() for k, v in state.items()}, ckpt.path)
            os.utime(ckpt.path, ns=(time.time_ns(), time.time_ns() + 10**9))
        return state

    monkeypatch.setattr(walker, "load_state_dict", load_then_rewrite)
    walk(run, out)
    t = slt_probe.load_results(out).table.set_index("step")
    assert t.loc[10, "status"] == "failed" and "changed while it was read" in t.loc[10, "message"]
    assert (t.loc[[0, 20, 30], "status"] == "ok").all()


# ----------------------------------------------------------------------------------------------------------
# the output side


def test_the_output_is_checked_before_any_work(run):
    started = []
    with pytest.raises(InputError, match="is a folder"):
        walk(run, run / "ckpts", overwrite=True, on_event=lambda kind, **info: started.append(kind))
    assert not started
    walk(run, run / "new" / "deeper" / "r.h5")  # a missing folder is made
    assert (run / "new" / "deeper" / "r.h5").exists()


def test_an_unreadable_file_is_never_answered_with_overwrite(run):
    out = run / "r.h5"
    out.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError) as e:
        walk(run, out)
    assert "--overwrite" not in str(e.value) and "nothing was changed" in str(e.value)
    assert out.read_bytes() == b"not hdf5 at all"


def test_a_full_disk_stops_the_walk_in_one_line_and_the_file_keeps_its_rows(run, monkeypatch):
    out = run / "r.h5"
    write, calls = store.results.write, []

    def full_after_three(*args, **kwargs):  # the file at the walk's start, then the parts of steps 0 and 10
        calls.append(1)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return write(*args, **kwargs)

    monkeypatch.setattr(store.results, "write", full_after_three)
    with pytest.raises(OutputError) as e:
        walk(run, out)
    assert str(out) in str(e.value) and "No space left" in str(e.value) and "\n" not in str(e.value)
    assert list(slt_probe.load_results(out).table.step) == STEPS[:2]  # intact, with what was written before
    assert not list(run.glob("r.h5.tmp*"))
    monkeypatch.setattr(store.results, "write", write)
    walk(run, out)  # the lock went with the failed walk; a rerun completes the file
    assert list(slt_probe.load_results(out).table.step) == STEPS


# ----------------------------------------------------------------------------------------------------------
# identical commands, identical numbers


def test_auto_is_a_rule_not_a_timing():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_method(104, 4, cpu) == "vmap" and auto_method(VMAP_PARAMS_UP_TO, 16, cpu) == "vmap"
    assert auto_method(VMAP_PARAMS_UP_TO + 1, 2, cpu) == "loop" and auto_method(67_584, 4, cpu) == "loop"
    assert auto_method(67_584, 4, cuda) == "vmap"
    assert auto_method(25_600, 2, cpu) == "loop"  # an attention-only transformer, where the loop wins at 2 chains too
    model = load_model_file("attn_only").attn_only(**MODEL_KW)  # 2,752 parameters × 4 chains: vmap
    data = torch.randint(0, 32, (64, 9))
    auto = slt_probe.SGLDConfig(chains=4, draws=12, burnin=2, batch_size=16, nbeta=30.0, method="auto")
    assert sampling_method(model, auto) == "vmap"
    a, b = slt_probe.estimate_llc(model, data, config=auto), slt_probe.estimate_llc(model, data, config=auto)
    explicit = slt_probe.estimate_llc(model, data, config=slt_probe.SGLDConfig(**{**auto.to_dict(), "method": "vmap"}))
    assert a.diagnostics.method == "vmap"
    np.testing.assert_array_equal(a.loss_trace, b.loss_trace)
    np.testing.assert_array_equal(a.loss_trace, explicit.loss_trace)


def test_a_walk_into_a_file_being_read_by_h5py_still_works(run):
    out = run / "r.h5"
    walk(run, out, ckpts=run / "ckpts")
    with h5py.File(out, "r") as f:  # a reader holds the old version open while the walk replaces it
        walk(run, out, overwrite=True)
        assert f["step"].shape == (len(STEPS),)
    assert list(slt_probe.load_results(out).table.step) == STEPS
