"""The SGLD sampler (slt_probe/engine/sampler.py): the vmapped and the looped paths give the same chains, MALA
acceptance tracks the step size, and a model that cannot be vmapped falls back to the loop and says so."""

import math

import numpy as np
import torch
from tiny_problems import CFG, dln_problem, lm_tokens, tiny_lm
from torch import nn

from slt_probe import SGLDConfig, estimate_llc
from slt_probe.engine.dln import mse


def test_vmap_and_loop_agree_on_the_transformer():
    model, data = tiny_lm(), lm_tokens()
    a = estimate_llc(model, data, config=SGLDConfig(**CFG, method="vmap"))
    b = estimate_llc(model, data, config=SGLDConfig(**CFG, method="loop"))
    assert a.diagnostics.method == "vmap" and b.diagnostics.method == "loop"
    # same noise and minibatches on both paths: equal up to float rounding, not just statistically
    np.testing.assert_allclose(a.loss_trace, b.loss_trace, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.llc_per_chain, b.llc_per_chain, rtol=1e-3, atol=1e-3)


def test_vmap_and_loop_agree_statistically_with_independent_seeds():
    model, data = dln_problem()
    cfg = dict(lr=1e-4, localization=1.0, nbeta=200.0, chains=8, draws=300, burnin=100, batch_size=100)
    a = estimate_llc(model, data, loss_fn=mse, config=SGLDConfig(**cfg, method="vmap", seed=1))
    b = estimate_llc(model, data, loss_fn=mse, config=SGLDConfig(**cfg, method="loop", seed=2))
    se = math.hypot(a.llc_se, b.llc_se)
    assert abs(a.llc_mean - b.llc_mean) < 4 * se, (a, b)


def test_mala_acceptance_falls_as_the_step_size_grows():
    model, data = dln_problem()
    acc, reasons = [], []
    for lr in (1e-6, 6e-3):
        cfg = SGLDConfig(lr=lr, localization=1.0, nbeta=1000.0, chains=2, draws=200, burnin=0, batch_size=100)
        d = estimate_llc(model, data, loss_fn=mse, config=cfg).diagnostics
        acc.append(d.acceptance)
        reasons.append(d.reasons)
    assert acc[0] > 0.95 and acc[1] < 0.5, acc
    assert any("MALA acceptance" in r for r in reasons[1]) and not any("MALA" in r for r in reasons[0])


class NotVmappable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        if self.lin.weight.sum().item() > 1e9:  # data-dependent Python control flow: vmap cannot trace it
            return x[:, :2]
        return self.lin(x)


def test_models_that_cannot_be_vmapped_fall_back_to_the_loop_and_say_so():
    torch.manual_seed(0)
    model = NotVmappable()
    x = torch.randn(500, 3)
    data = (x, model(x).detach())
    r = estimate_llc(model, data, loss_fn=mse, config=SGLDConfig(lr=1e-4, nbeta=100.0, chains=2, draws=30, burnin=0,
                                                                 batch_size=50, method="vmap"))
    assert r.diagnostics.method == "loop"
    assert any("vmap failed" in note for note in r.diagnostics.notes)
    assert math.isfinite(r.llc_mean)
