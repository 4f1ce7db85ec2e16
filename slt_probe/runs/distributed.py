"""A walk over torchrun's processes (ranks): who each process is, and what they tell each other.

    torchrun --nproc_per_node 4 -m slt_probe walk ckpts/ ...

Each rank estimates its share of the walk's units of work and writes each finished one as a part of the results file
(store/parts.py); rank 0 holds the file's writer lock, folds the parts into it when all are done, and detects the
stages. Estimates need no communication: each depends only on the seed, the config and the checkpoint (common random
numbers), so a sharded walk reads bit for bit as a one-process walk. What the ranks share goes through
torch.distributed's own key-value store (the rendezvous store): the start signal, a count of finished units (rank 0's
progress bar) and, at the end, each rank's summary. Waits on it poll, with no deadline: a rank may finish its share
hours before another, and torchrun ends every rank when one dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from slt_probe.engine.sampler import resolve_device
from slt_probe.errors import InputError


def launched() -> bool:
    """Whether this process was started by torchrun (torch.distributed.run), as one rank of several or of one."""
    return dist.is_available() and dist.is_torchelastic_launched()


def rank_device(device: str, local_rank: int) -> str:
    """A rank's device: its own GPU (cuda:LOCAL_RANK) where the config says auto or cuda and CUDA is there; an
    explicit cuda:i, or cpu, as given."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return "cpu" if device == "auto" else device


@dataclass
class Ranks:
    """This process's place in the walk: rank of world, and the key-value store the ranks share (None: one process
    alone, not started by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    store: Optional[Any] = None  # a torch.distributed Store

    @property
    def leader(self) -> bool:
        """Rank 0: the writer of the results file, the one that reports."""
        return self.rank == 0

    def share(self, key: str, value: Any) -> None:
        if self.store is not None:
            self.store.set(f"slt_probe/{key}", json.dumps(value))

    def receive(self, key: str, poll: float = 0.5) -> Any:
        """The value another rank shared under `key`, once it has (waiting as long as it takes)."""
        self.wait(key, poll)
        return json.loads(self.store.get(f"slt_probe/{key}"))

    def wait(self, key: str, poll: float = 0.5) -> None:
        while not self.store.check([f"slt_probe/{key}"]):
            time.sleep(poll)

    def count(self, key: str, n: int = 0) -> int:
        """Add n to the shared counter `key` and return its value (n = 0: only read it)."""
        return int(self.store.add(f"slt_probe/{key}", n)) if self.store is not None else n

    def barrier(self) -> None:
        if self.store is not None and self.world > 1:
            dist.barrier()


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[Ranks, str]]:
    """Join the torchrun job (from its environment: RANK, WORLD_SIZE, LOCAL_RANK, the rendezvous): NCCL for ranks on
    GPUs, gloo on CPUs. Yields (this rank, its device: rank_device). Leaves the job when the block ends."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = rank_device(device, local_rank)
    try:
        cuda = resolve_device(device).type == "cuda"
    except ValueError as e:  # cuda asked for where there is none
        raise InputError(f"--device: {e}") from None
    if cuda and local_rank >= torch.cuda.device_count() and device == f"cuda:{local_rank}":
        raise InputError(f"rank {local_rank} of this node has no GPU of its own ({torch.cuda.device_count()} here): "
                         f"start at most that many ranks per node (--nproc_per_node)")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    # the collectives here are only start-up barriers; the long waits poll the store (no deadline)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30),
                            **({"device_id": torch.device(device)} if cuda else {}))
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), local_rank, dist.distributed_c10d._get_default_store()), device
    finally:
        dist.destroy_process_group()
