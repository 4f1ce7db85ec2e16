"""The estimate (slt_probe/engine/estimate.py): λ̂ = nβ (mean draw loss − L_n(w*)), reproducible for a seed, the
caller's model untouched, nβ's default, failures reported, bf16 models, parity with devinterp, the loss at w*.

The sampler's two paths are tested in test_sampler.py, the minibatch schedule in test_data.py, the diagnostics in
test_diagnostics.py; λ̂ against closed forms in tests/validation/.
"""

import math

import numpy as np
import pytest
import torch
from tiny_problems import CFG, dln_problem, lm_tokens, tiny_lm
from torch import nn

from slt_probe import SGLDConfig, estimate_llc
from slt_probe.engine.data import batch_schedule
from slt_probe.engine.dln import mse


def test_same_seed_same_result_and_model_untouched():
    model, data = tiny_lm(), lm_tokens()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = estimate_llc(model, data, config=SGLDConfig(**CFG, method="loop"))
    b = estimate_llc(model, data, config=SGLDConfig(**CFG, method="loop"))
    np.testing.assert_array_equal(a.loss_trace, b.loss_trace)
    assert a.llc_mean == b.llc_mean
    c = estimate_llc(model, data, config=SGLDConfig(**{**CFG, "seed": 4}, method="loop"))
    assert not np.array_equal(a.loss_trace, c.loss_trace)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_llc_is_nbeta_times_mean_draw_loss_minus_init_loss_burnin_excluded():
    model, data = tiny_lm(), lm_tokens()
    r = estimate_llc(model, data, config=SGLDConfig(**CFG))
    assert r.loss_trace.shape == (CFG["chains"], CFG["draws"])
    assert r.burnin_trace.shape == (CFG["chains"], CFG["burnin"])
    expected = CFG["nbeta"] * (r.loss_trace.mean(axis=1) - r.init_loss)
    np.testing.assert_allclose(r.llc_per_chain, expected, rtol=1e-10)
    assert r.llc_mean == pytest.approx(expected.mean())
    # every chain starts at w* on the same first minibatch: identical first losses
    assert np.ptp(r.burnin_trace[:, 0]) == 0


def test_nbeta_default_is_n_over_log_n_and_stored():
    model, data = dln_problem(n=1500)
    r = estimate_llc(model, data, loss_fn=mse, config=SGLDConfig(lr=1e-5, chains=2, draws=20, burnin=0, batch_size=50))
    assert r.config.nbeta == pytest.approx(1500 / math.log(1500))
    # ... whatever the batch size
    r2 = estimate_llc(model, data, loss_fn=mse, config=SGLDConfig(lr=1e-5, chains=2, draws=20, burnin=0, batch_size=100))
    assert r2.config.nbeta == r.config.nbeta


def test_divergence_is_a_reported_failure_never_a_silent_nan():
    model, data = dln_problem()
    cfg = SGLDConfig(lr=1.0, localization=1.0, nbeta=1000.0, chains=2, draws=100, burnin=0, batch_size=100)
    r = estimate_llc(model, data, loss_fn=mse, config=cfg)
    assert r.verdict == "fail"
    assert math.isnan(r.llc_mean)
    assert any("diverged" in reason for reason in r.diagnostics.reasons)
    assert {d["chain"] for d in r.diagnostics.diverged} == {0, 1}


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="token ids"):
        estimate_llc(tiny_lm(), torch.randn(10, 5), config=SGLDConfig(chains=1, draws=5))
    with pytest.raises(ValueError, match="batch_size"):
        estimate_llc(tiny_lm(), lm_tokens(n=8), config=SGLDConfig(chains=1, draws=5, batch_size=32))
    with pytest.raises(ValueError, match="lr"):
        SGLDConfig(lr=-1)
    with pytest.raises(ValueError, match="method"):
        SGLDConfig(method="fast")


def test_bf16_checkpoints_are_sampled_in_float32():
    model = tiny_lm().to(torch.bfloat16)
    r = estimate_llc(model, lm_tokens(), config=SGLDConfig(**CFG, method="loop"))
    assert math.isfinite(r.llc_mean) and r.loss_trace.dtype == np.float64
    assert next(model.parameters()).dtype == torch.bfloat16  # the caller's model is untouched


def test_parity_with_devinterp_on_the_attention_only_transformer():
    """Same lr, nbeta, localization, chains, draws, batch; burn-in 0 (devinterp averages burn-in in).

    Both engines share one minibatch sequence across chains, so part of their error is common to all
    chains and the chain spread understates it (seed-to-seed sd here is ~1.7x the per-run s.e.). The
    standard errors therefore come from independent seeds: 4 runs per engine.
    """
    model = tiny_lm(seed=1)
    data = lm_tokens(n=512, seq=16, seed=1)
    runs = {"slt": [], "devinterp": []}
    for seed in range(4):
        cfg = SGLDConfig(lr=3e-4, localization=100.0, nbeta=30.0, chains=4, draws=120, burnin=0, batch_size=32,
                         seed=seed)
        for engine in runs:
            r = estimate_llc(model, data, config=cfg, engine=engine)
            assert r.engine == engine and r.loss_trace.shape == (4, 120) and r.verdict != "fail"
            runs[engine].append(r.llc_mean)
    ours, ref = np.array(runs["slt"]), np.array(runs["devinterp"])
    combined = math.hypot(ours.std(ddof=1) / 2, ref.std(ddof=1) / 2)
    print(f"slt-probe {ours.mean():.4f} ± {ours.std(ddof=1) / 2:.4f}, devinterp {ref.mean():.4f} ± "
          f"{ref.std(ddof=1) / 2:.4f}, difference {(ours.mean() - ref.mean()) / combined:+.2f} combined s.e.")
    assert abs(ours.mean() - ref.mean()) < 3 * combined, (ours, ref)


def test_init_loss_is_the_mean_over_the_draws_samples_counted_with_multiplicity():
    from slt_probe.engine.estimate import evaluate_loss

    model, data = dln_problem(n=300)
    batches = batch_schedule(300, 64, 20, seed=0, repeat_every=10)  # [20, 64]: ~4 epochs, MALA repeats
    with torch.no_grad():
        direct = torch.stack([mse(model, (data[0][b], data[1][b])) for b in batches]).mean()
    assert evaluate_loss(model, mse, data, batches, chunk=50) == pytest.approx(float(direct), rel=1e-6)


class OwnTo(nn.Module):
    """A model whose .to has its own signature, as TransformerLens's HookedTransformer.to(device_or_dtype)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 1)

    def to(self, device_or_dtype, print_details=True):  # no device= / dtype= keywords
        return super().to(device_or_dtype)

    def forward(self, x):
        return self.net(x)


def test_a_model_with_its_own_to_signature_is_moved_all_the_same():
    torch.manual_seed(0)
    x = torch.randn(256, 3)
    data = (x, x @ torch.tensor([[1.0], [-2.0], [0.5]]))

    r = estimate_llc(OwnTo(), data, loss_fn=mse, config=SGLDConfig(lr=1e-4, localization=10.0, nbeta=50.0, chains=2,
                                                                   draws=50, burnin=10, batch_size=32))
    assert math.isfinite(r.llc_mean)


# ----------------------------------------------------------------------------------------------------------
# precision and micro-batches


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_micro_batches_give_the_full_minibatchs_numbers(method):
    # the loss and gradient of k equal micro-batches, averaged: the minibatch's, up to float rounding
    model, data = tiny_lm(), lm_tokens()
    cfg = SGLDConfig(**CFG, method=method)
    whole = estimate_llc(model, data, config=cfg)
    split = estimate_llc(model, data, config=SGLDConfig(**{**cfg.to_dict(), "grad_accum": 4}))
    np.testing.assert_allclose(split.loss_trace, whole.loss_trace, rtol=1e-4)
    assert split.llc_mean == pytest.approx(whole.llc_mean, rel=1e-3, abs=1e-3)
    assert split.init_loss == pytest.approx(whole.init_loss, rel=1e-6)
    with pytest.raises(ValueError, match="grad_accum must be >= 1 and divide batch_size"):
        SGLDConfig(**{**cfg.to_dict(), "grad_accum": 5})


def test_bf16_autocast_keeps_the_chains_in_float32_and_reads_the_transformer_as_float32_does():
    # benchmarks/precision.py: on the demo transformer bf16 is within 0.02 s.e. of float32; on a noiseless DLN it
    # reads ~2 s.e. low (its loss at w* is 5e-14 in float32, bf16's rounding floor 4e-4, times nβ ~9e3)
    model, data = tiny_lm(), lm_tokens()
    cfg = SGLDConfig(**{**CFG, "chains": 8, "draws": 100})
    f32 = estimate_llc(model, data, config=cfg)
    bf16 = estimate_llc(model, data, config=SGLDConfig(**{**cfg.to_dict(), "dtype": "bfloat16"}))
    assert bf16.config.dtype == "bfloat16" and bf16.loss_trace.dtype == np.float64
    assert not np.array_equal(bf16.loss_trace, f32.loss_trace)  # autocast did run in bf16
    assert abs(bf16.init_loss - f32.init_loss) < 0.02 * f32.init_loss
    assert abs(bf16.llc_mean - f32.llc_mean) < 2 * f32.llc_se, (bf16.llc_mean, f32.llc_mean, f32.llc_se)
    with pytest.raises(ValueError, match="engine='slt' features"):
        estimate_llc(model, data, config=SGLDConfig(**{**cfg.to_dict(), "dtype": "bfloat16"}), engine="devinterp")
