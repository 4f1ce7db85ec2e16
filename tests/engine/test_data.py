"""The minibatch plumbing (slt_probe/engine/data.py): the schedule of minibatches that every chain shares."""

import torch

from slt_probe.engine.data import batch_schedule


def test_common_random_numbers_minibatches_depend_on_seed_only():
    a = batch_schedule(1000, 32, 50, seed=5, repeat_every=10)
    b = batch_schedule(1000, 32, 50, seed=5, repeat_every=10)
    assert torch.equal(a, b) and a.shape == (50, 32)
    assert torch.equal(a[11], a[10]) and not torch.equal(a[12], a[11])  # MALA pairs reuse one batch
    # within an epoch no sample repeats
    fresh = torch.cat([a[t] for t in range(50) if t % 10 != 1][:31])
    assert fresh.unique().numel() == fresh.numel()
    assert not torch.equal(a, batch_schedule(1000, 32, 50, seed=6, repeat_every=10))
