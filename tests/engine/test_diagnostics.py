"""The diagnostics of a set of chains (slt_probe/engine/diagnostics.py): a diverged chain is left out and named."""

import numpy as np

from slt_probe.engine.diagnostics import diagnose


def test_one_diverged_chain_is_left_out_and_named():
    loss = np.full((3, 30), 1.0) + np.random.default_rng(0).normal(0, 0.01, (3, 30))
    loss[1, 17:] = np.inf
    per_chain = 10.0 * (loss[:, 5:].mean(axis=1) - 0.9)
    per_chain[1] = np.nan
    d = diagnose(loss, burnin=5, nbeta=10.0, init_loss=0.9, llc_per_chain=per_chain, num_params=100)
    assert d.verdict == "fail" and d.chains_ok == 2
    assert d.diverged == [{"chain": 1, "step": 17, "draw": 12}]
    assert "chain 1 diverged (non-finite loss at draw 12)" in d.reasons[0]
