"""The SGLD sampler (slt_probe/engine/sampler.py): the vmapped and the looped paths give the same chains, MALA
acceptance tracks the step size, and a model that cannot be vmapped falls back to the loop and says so; the flat
loss is functional_call's, tied weights and all, and step 0's one pass serves every chain exactly."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_problems import CFG, dln_problem, lm_tokens, tiny_lm
from torch import nn
from torch.func import functional_call

from slt_probe import SGLDConfig, estimate_llc
from slt_probe.engine.data import lm_cross_entropy
from slt_probe.engine.dln import dln_problem as engine_dln_problem
from slt_probe.engine.dln import mse
from slt_probe.engine.estimate import estimate_components, sample
from slt_probe.engine.sampler import Coordinates, FlatModel, _GradientPaths
from slt_probe.inputs.heads import components


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


class Tied(nn.Module):
    """One weight under two names (an embedding tied to the unembedding, in miniature)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_flat_loss_is_functional_calls_with_ties_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = Tied()
    batch = (torch.randn(8, 3), torch.randn(8, 3))
    flat = FlatModel(model, mse)
    assert flat.names == ["a.weight", "a.bias", "b.bias"]  # the tied weight once
    before = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    w = (flat.w0 + 0.1 * torch.randn_like(flat.w0)).requires_grad_()
    loss = flat.loss(w, batch)
    (g,) = torch.autograd.grad(loss, w)
    ref_w = w.detach().clone().requires_grad_()
    params = flat.unflatten(ref_w)
    ref = mse(lambda x: functional_call(model, params, (x,)), batch)  # tie_weights: b.weight follows a.weight
    (ref_g,) = torch.autograd.grad(ref, ref_w)
    assert torch.equal(loss, ref) and torch.equal(g, ref_g)
    after = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert model.b.weight is model.a.weight

    def broken(m, b):
        raise RuntimeError("loss failed")

    try:
        FlatModel(model, broken).loss(w, batch)
    except RuntimeError:
        pass
    assert all(p is before[n] for n, p in model.named_parameters(remove_duplicate=False))  # restored on error too


def test_step_zero_one_pass_gives_every_chain_what_its_own_pass_would():
    model, data = tiny_lm(), lm_tokens()
    for p in model.parameters():
        p.requires_grad_(False)
    flat = FlatModel(model, lm_cross_entropy)
    w = flat.w0.expand(3, -1).clone()
    grads = torch.empty_like(w), torch.empty_like(w)
    each = _GradientPaths(flat, w, grads[0]).loop([data[:32]])
    once = _GradientPaths(flat, w, grads[1]).loop([data[:32]], same=True)
    assert torch.equal(each, once) and torch.equal(grads[0], grads[1])


# ----------------------------------------------------------------------------------------------------------
# RMSProp-preconditioned SGLD (sampler="rmsprop"); its accuracy is validated against closed forms in
# tests/validation (test_regular.py: a badly scaled regression that one step size cannot equilibrate)


def test_rmsprop_vmap_and_loop_agree_on_the_transformer():
    model, data = tiny_lm(), lm_tokens()
    cfg = dict(CFG, lr=CFG["lr"] / 10, sampler="rmsprop")
    a = estimate_llc(model, data, config=SGLDConfig(**cfg, method="vmap"))
    b = estimate_llc(model, data, config=SGLDConfig(**cfg, method="loop"))
    np.testing.assert_allclose(a.loss_trace, b.loss_trace, rtol=1e-4, atol=1e-5)
    plain = estimate_llc(model, data, config=SGLDConfig(**dict(cfg, sampler="sgld"), method="vmap"))
    assert not np.allclose(a.loss_trace, plain.loss_trace)  # the preconditioner does act


def test_the_preconditioner_adapts_during_burnin_and_is_then_frozen():
    """Frozen and ever-adapting runs share every step of burn-in (same noise, same batches, same G) and part
    after it: the draws are sampled with one fixed G, which leaves the tempered posterior invariant."""
    model, data = dln_problem()
    cfg = dict(lr=1e-5, localization=1.0, nbeta=200.0, chains=2, draws=50, burnin=20, batch_size=100,
               sampler="rmsprop", method="vmap")
    frozen = estimate_llc(model, data, loss_fn=mse, config=SGLDConfig(**cfg))
    adapting = estimate_llc(model, data, loss_fn=mse, config=SGLDConfig(**cfg, rmsprop_freeze=False))
    burn = cfg["burnin"]
    np.testing.assert_array_equal(frozen.burnin_trace, adapting.burnin_trace)
    np.testing.assert_array_equal(frozen.loss_trace[:, :1], adapting.loss_trace[:, :1])  # w at step burnin: same G
    assert not np.allclose(frozen.loss_trace[:, 2:], adapting.loss_trace[:, 2:])
    assert frozen.burnin_trace.shape == (2, burn)


def test_rmsprop_mala_acceptance_accounts_for_the_preconditioner():
    """The MALA ratio of a preconditioned step (proposal N(w − ε/2 G ∇U, ε G)) predicts the step's bias: on a DLN
    whose λ is known, at an ε 10x too large, the bias MALA implies matches the bias measured (+36% and +38%)."""
    problem = engine_dln_problem(sampler="rmsprop")
    found = {}
    for lr in (1e-7, 1e-6):
        r = estimate_llc(problem.model, problem.data, loss_fn=mse, config=replace(problem.config, lr=lr))
        found[lr] = (r.llc_mean / problem.llc - 1, r.diagnostics.step_bias, r.diagnostics.acceptance)
    (err_ok, _, acc_ok), (err, implied, _) = found[1e-7], found[1e-6]
    assert acc_ok > 0.95 and abs(err_ok) < 0.05, found
    assert err > 0.2 and abs(implied - err) < 0.1, found


def test_sampler_settings_are_checked():
    for bad in (dict(sampler="adam"), dict(rmsprop_alpha=1.0), dict(rmsprop_eps=0.0)):
        try:
            SGLDConfig(**bad)
        except ValueError as e:
            assert next(iter(bad)).split("_")[0] in str(e)
        else:
            raise AssertionError(f"{bad} accepted")


# ----------------------------------------------------------------------------------------------------------
# components: coordinates, and several of them in one run


def test_whole_tensor_coordinates_sample_as_their_regex_does():
    model, data = tiny_lm(), lm_tokens()
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n.startswith("blocks.1.")}
    cfg = SGLDConfig(**CFG, method="loop")
    by_regex = estimate_llc(model, data, config=replace(cfg, params=r"^blocks\.1\."))
    by_coordinates = estimate_llc(model, data, config=replace(cfg, params=Coordinates(masks, "layer 1")))
    np.testing.assert_array_equal(by_regex.loss_trace, by_coordinates.loss_trace)
    assert by_regex.num_params == by_coordinates.num_params == sum(m.numel() for m in masks.values())
    assert by_coordinates.config.to_dict()["params"] == "layer 1"  # stored by its label


def test_components_in_one_run_read_as_their_own_runs_do_bit_for_bit():
    # the loop path computes each chain alone and each group draws its own run's noise: equal to the last bit
    model, data = tiny_lm(), lm_tokens()
    heads = {c.name: c.params for c in components(model, "heads")}  # 2 layers x 2 heads: two runs of 2 groups
    cfg = SGLDConfig(**CFG, method="loop")
    batched = estimate_components(model, data, heads, config=cfg)
    assert list(batched) == list(heads)
    for name, params in heads.items():
        alone = estimate_llc(model, data, config=replace(cfg, params=params))
        np.testing.assert_array_equal(batched[name].loss_trace, alone.loss_trace, err_msg=name)
        assert batched[name].llc_mean == alone.llc_mean and batched[name].num_params == alone.num_params
    assert len({r.llc_mean for r in batched.values()}) == 4  # different coordinates, different numbers
    vmapped = estimate_components(model, data, heads, config=replace(cfg, method="vmap"))
    for name in heads:  # the vmap path batches other shapes: equal to rounding
        assert vmapped[name].llc_mean == pytest.approx(batched[name].llc_mean, rel=1e-4, abs=1e-4)


def test_bad_coordinates_are_refused_by_name():
    model, data = tiny_lm(), lm_tokens()
    cfg = SGLDConfig(**CFG)
    bad = {"unknown": ({"blocks.9.qkv.weight": torch.ones(3, dtype=torch.bool)}, "has no parameter 'blocks.9"),
           "shape": ({"blocks.0.qkv.weight": torch.ones(3, dtype=torch.bool)}, r"has shape \(3,\), the parameter"),
           "empty": ({"blocks.0.qkv.weight": torch.zeros(96, 32, dtype=torch.bool)}, "selects no coordinates")}
    for label, (masks, words) in bad.items():
        with pytest.raises(ValueError, match=f"^{label}: .*{words}"):
            estimate_llc(model, data, config=replace(cfg, params=Coordinates(masks, label)))
    with pytest.raises(ValueError, match="must select the same parameters"):
        sample(model, data, lm_cross_entropy, replace(cfg.resolved(256), chains=6), groups=[r"^blocks\.0\.", r"^blocks\.1\."])


# ----------------------------------------------------------------------------------------------------------
# chain groups: chains run g at a time, each with its own noise, so the grouping never shows in the numbers


@pytest.mark.parametrize("method", ["loop", "vmap"])
@pytest.mark.parametrize("sampler", ["sgld", "rmsprop"])
def test_the_chain_grouping_changes_no_number(method, sampler):
    model, data = tiny_lm(), lm_tokens()
    cfg = SGLDConfig(**dict(CFG, chains=4, method=method, sampler=sampler, mala_every=3))
    runs = [estimate_llc(model, data, config=replace(cfg, chain_group=g)) for g in (None, 1, 3)]
    for r in runs[1:]:  # 4 at once, one after another, 3 then 1: equal to the last bit, MALA included
        np.testing.assert_array_equal(r.loss_trace, runs[0].loss_trace)
        np.testing.assert_array_equal(r.llc_per_chain, runs[0].llc_per_chain)
        assert r.diagnostics.acceptance == runs[0].diagnostics.acceptance
    assert any("chains run 1 at a time" in n for n in runs[1].diagnostics.notes)


def test_a_chain_draws_the_same_whatever_runs_beside_it():
    # chain i's noise is its own stream: the first 2 of 4 chains are the 2 chains of a 2-chain run
    model, data = tiny_lm(), lm_tokens()
    cfg = SGLDConfig(**dict(CFG, method="loop"))
    two, four = (estimate_llc(model, data, config=replace(cfg, chains=c)) for c in (2, 4))
    np.testing.assert_array_equal(four.loss_trace[:2], two.loss_trace)
    assert not np.array_equal(four.loss_trace[2], four.loss_trace[0])  # and the chains differ from one another


def test_components_and_hyperparameter_grids_keep_their_numbers_one_chain_at_a_time():
    model, data = tiny_lm(), lm_tokens()
    heads = {c.name: c.params for c in components(model, "heads")}
    cfg = SGLDConfig(**CFG, method="loop")
    together, *grouped = (estimate_components(model, data, heads, config=replace(cfg, chain_group=g)) for g in (None, 1, 4))
    for name in heads:  # 4 at a time: groups that straddle two heads' chains (3 each)
        for other in grouped:
            np.testing.assert_array_equal(together[name].loss_trace, other[name].loss_trace)
    per_chain = {"lr": torch.tensor([1e-4, 1e-4, 3e-4, 3e-4]), "localization": torch.tensor([100.0, 300.0] * 2)}
    config = replace(cfg, chains=4).resolved(256)
    traces = [sample(model, data, lm_cross_entropy, replace(config, chain_group=g), per_chain=per_chain)[0]
              for g in (None, 1)]
    assert torch.equal(traces[0].loss, traces[1].loss) and torch.equal(traces[0].mala, traces[1].mala)


def test_auto_chain_groups_follow_the_free_memory(monkeypatch):
    import slt_probe.engine.sampler as sampler

    cfg = SGLDConfig(chains=8, mala_every=10)
    cpu = torch.device("cpu")
    monkeypatch.setattr(sampler, "free_memory", lambda device: 10 * 3 * 4 * 1000)  # 10 chains' w, grad, MALA vector
    assert sampler.chain_group(cfg, 1000, cpu) == 5  # half the free memory
    monkeypatch.setattr(sampler, "free_memory", lambda device: 1)
    assert sampler.chain_group(cfg, 1000, cpu) == 1
    assert sampler.chain_group(replace(cfg, chain_group=3), 1000, cpu) == 3
    monkeypatch.setattr(sampler, "free_memory", lambda device: None)
    assert sampler.chain_group(cfg, 1000, cpu) == 8
    with pytest.raises(ValueError, match="chain_group"):
        SGLDConfig(chain_group=0)


def test_a_group_that_runs_out_of_device_memory_is_halved_and_reads_the_same(monkeypatch):
    import slt_probe.engine.sampler as sampler

    model, data = tiny_lm(), lm_tokens()
    cfg = SGLDConfig(**dict(CFG, chains=4, method="loop"))
    expected = estimate_llc(model, data, config=cfg)
    run = sampler._Block.run

    def short_of_memory(block, *args):  # what CUDA raises when a group's activations do not fit
        if len(block.ids) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return run(block, *args)

    monkeypatch.setattr(sampler._Block, "run", short_of_memory)
    r = estimate_llc(model, data, config=cfg)
    np.testing.assert_array_equal(r.loss_trace, expected.loss_trace)
    assert any("out of memory: chains run 1 at a time" in n for n in r.diagnostics.notes)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # a group the user set is theirs: no silent change
        estimate_llc(model, data, config=replace(cfg, chain_group=2))


@pytest.mark.parametrize("params", [None, r"^blocks\.1\."])
def test_the_callers_model_is_only_read(params):
    # the sampling copy shares the caller's parameters (on the same device and dtype) and puts views of w* in place
    # of the sampled ones in its own modules: the caller's tensors, flags and mode are as they were
    model, data = tiny_lm(), lm_tokens()
    model.train()
    before = {n: (p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    estimate_llc(model, data, config=SGLDConfig(**dict(CFG, params=params)))
    assert model.training
    for n, p in model.named_parameters():
        same, value, flag = before[n]
        assert p is same and torch.equal(p, value) and p.requires_grad == flag and p.grad is None, n
