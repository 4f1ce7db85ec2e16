"""A walk under torchrun (slt_probe/runs/distributed.py): ranks on the CPU with gloo, as CI runs them.

Each estimate depends only on the seed, the config and the checkpoint, so however the units of work (each
checkpoint's row, each group of refined heads) are dealt out, the file must read bit for bit as a one-process walk's:
with 2 ranks, after kill -9 of one rank or of the whole job and a rerun with 1 or 3 ranks, and with two "nodes" on
this machine meeting at a c10d rendezvous on 127.0.0.1. Only `seconds` and `finished` (when and how long) may differ.
torchrun is started as `python -m torch.distributed.run`, the tiny run of tests/helpers/walkrun.py walked.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch.distributed as dist
from modelfiles import REPO
from walkrun import invoke, make_run, train_checkpoints, walk_args

import slt_probe
from slt_probe import store

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is needed")

ENV = dict(os.environ, OMP_NUM_THREADS="1")
REFINE = ["--refine", "heads", "--refine", r"emb=^embed\."]  # two groups of heads (one per layer) and one more
STEPS = list(range(0, 80, 10))  # 8 checkpoints


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny run with 8 checkpoints, and its one-process walk (`one.h5`), the reference."""
    run = make_run(tmp_path_factory.mktemp("dist"))
    train_checkpoints(run / "many", np.load(run / "data.npy"), steps=STEPS)
    code, out = invoke(*args(run, "one.h5"))
    assert code == 0, out
    return run


def args(run: Path, out: str | Path, quiet: bool = True) -> list[str]:
    a = walk_args(run, out, *REFINE, quiet=quiet)
    a[1] = str(run / "many")
    return [str(x) for x in a]


def torchrun(*launch: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "slt_probe"]


def start(command: list[str]) -> subprocess.Popen:
    # a session of its own: kill -9 of the whole job reaches torchrun and every rank at once
    return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def numbers(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of the file, but when and how long a row took."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
    return {k: v for k, v in found.items() if k not in ("seconds", "finished")}


def assert_same_numbers(a: Path, b: Path) -> None:
    x, y = numbers(a), numbers(b)
    assert set(x) == set(y) and "refined/L1H0/llc_per_chain" in x
    for name in x:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    assert not store.parts.folder(b).exists()  # every part folded into the file, the folder gone


def rank_pid(torchrun_pid: int, rank: int) -> int:
    """The process of `rank`: a child of torchrun whose environment says RANK=rank."""
    for child in Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(child)
    raise LookupError(f"no rank {rank} under {torchrun_pid}")


def wait_for_parts(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until `proc` has written n parts of `out` (parts of an earlier job are older than it)."""
    since, deadline = time.time(), time.monotonic() + timeout
    while True:
        try:
            if sum(p.stat().st_mtime > since for p in store.parts.files(out)) >= n:
                return
        except FileNotFoundError:  # folded into the file meanwhile
            pass
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no parts written"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_write_what_one_process_writes(run):
    out = finish(start(torchrun("--standalone", "--nproc_per_node", "2") + args(run, "two.h5", quiet=False)))
    assert "8 estimated, 0 already done" in out and "units" in out  # rank 0's one bar for the whole walk
    assert out.count("estimated") == 1  # rank 1 prints nothing
    assert_same_numbers(run / "one.h5", run / "two.h5")


def test_kill_9_one_rank_or_all_then_any_world_size_completes_with_the_same_numbers(run):
    out = run / "killed.h5"
    proc = start(torchrun("--standalone", "--nproc_per_node", "2") + args(run, "killed.h5"))
    wait_for_parts(out, 2, proc)
    os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)  # torchrun ends the other rank
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    done = len(slt_probe.load_results(out).table)  # the parts written are read as rows
    assert 1 <= done < len(STEPS)

    copy = run / "copy"
    copy.mkdir()
    shutil.copy(out, copy / "killed.h5")
    shutil.copytree(store.parts.folder(out), store.parts.folder(copy / "killed.h5"))

    # the whole job killed at once, by 3 ranks, then a plain one-process walk finishes
    proc = start(torchrun("--standalone", "--nproc_per_node", "3") + args(run, "killed.h5"))
    wait_for_parts(out, 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    res = finish(start([sys.executable, "-m", "slt_probe"] + args(run, "killed.h5", quiet=False)))
    assert "already done" in res and f"{len(STEPS) - 1} estimated" not in res
    assert_same_numbers(run / "one.h5", out)

    # the state the first kill left, finished by 3 ranks
    res = finish(start(torchrun("--standalone", "--nproc_per_node", "3") + args(run, copy / "killed.h5", quiet=False)))
    assert f"{done} already done" in res
    assert_same_numbers(run / "one.h5", copy / "killed.h5")


def test_two_nodes_on_one_machine_meet_at_a_c10d_rendezvous(run):
    port = free_port()
    nodes = [start(torchrun("--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend",
                            "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test")
                   + args(run, "nodes.h5")) for node in (0, 1)]
    for node in nodes:
        finish(node)
    assert_same_numbers(run / "one.h5", run / "nodes.h5")
