"""estimate_llc: the local learning coefficient λ̂ of a model at its current parameters w*.

λ̂ = nβ (E_w[L_m(w)] − L_n(w*)) (Lau et al. 2023, arXiv 2308.12108, eq. 7), the expectation over the
draws of localized SGLD chains after burn-in, L_n(w*) measured once on a fixed evaluation set.

The evaluation set is the multiset of samples the kept draws see (their minibatches, shared by every
chain), so both terms are means over the same samples and the sampling noise of the data cancels.
With an unrelated subset, that noise (times nβ, which is large) is common to all chains, invisible in
their spread, and swamps λ̂: on a noisy regression with n = 65536 it made λ̂ swing from −3 to 18 across
seeds (true 6); paired, the spread was 0.2.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from slt_probe.engine.data import (Data, LossFn, as_tuple, batch_schedule, check_lm_tokens, lm_cross_entropy, num_samples,
                             take, to_device)
from slt_probe.engine.devinterp import sample_devinterp
from slt_probe.engine.diagnostics import Diagnostics, diagnose
from slt_probe.engine.sampler import (ChainTrace, Params, SGLDConfig, auto_method, autocast_loss, count_params,
                                     resolve_device, run_chains, select)


@dataclass
class LLCResult:
    llc_mean: float  # mean of λ̂ over the chains that did not diverge
    llc_std: float  # standard deviation of λ̂ across those chains (ddof=1; 0 for one chain)
    llc_per_chain: np.ndarray  # [chains], NaN for a diverged chain
    init_loss: float  # L_n(w*) on the evaluation set: the samples of the kept draws
    loss_trace: np.ndarray  # [chains, draws] minibatch loss of each kept draw
    burnin_trace: np.ndarray  # [chains, burnin] minibatch loss during burn-in (not in λ̂)
    diagnostics: Diagnostics
    config: SGLDConfig  # as used, nbeta resolved
    engine: str = "slt"
    num_params: int = 0
    seconds: float = 0.0

    @property
    def llc_se(self) -> float:
        """Standard error of llc_mean from the spread across chains."""
        n = self.diagnostics.chains_ok
        return self.llc_std / math.sqrt(n) if n > 1 else float("nan")

    @property
    def verdict(self) -> str:
        return self.diagnostics.verdict

    def __repr__(self) -> str:
        return (
            f"LLCResult(llc={self.llc_mean:.4g} ± {self.llc_se:.2g} (s.e.), init_loss={self.init_loss:.4g}, "
            f"chains={self.config.chains}, draws={self.config.draws}, nbeta={self.config.nbeta:.4g}, "
            f"verdict={self.verdict!r}, method={self.diagnostics.method!r})"
        )


def failed_checks(r: LLCResult) -> list[str]:
    """The diagnostics.ADVICE keys of the checks an estimate did not pass (calibrate's pass / fail)."""
    return list(r.diagnostics.failed)


def summarize(
    loss: np.ndarray,
    init_loss: float,
    config: SGLDConfig,
    num_params: int,
    *,
    engine: str,
    method: str,
    mala: Optional[np.ndarray] = None,
    mala_step: Optional[np.ndarray] = None,
    notes: Optional[list[str]] = None,
    seconds: float = 0.0,
) -> LLCResult:
    """λ̂ and diagnostics from a loss trace [chains, burnin + draws]; shared by both engines."""
    b = config.burnin
    finite = np.isfinite(loss).all(axis=1)
    per_chain = config.nbeta * (loss[:, b:].mean(axis=1) - init_loss)  # [chains]
    per_chain = np.where(finite, per_chain, np.nan)
    ok = per_chain[finite]
    diag = diagnose(loss, b, config.nbeta, init_loss, per_chain, num_params, mala, mala_step, method, notes)
    return LLCResult(
        llc_mean=float(ok.mean()) if ok.size else float("nan"),
        llc_std=float(ok.std(ddof=1)) if ok.size > 1 else 0.0 if ok.size else float("nan"),
        llc_per_chain=per_chain,
        init_loss=float(init_loss),
        loss_trace=loss[:, b:],
        burnin_trace=loss[:, :b],
        diagnostics=diag,
        config=config,
        engine=engine,
        num_params=num_params,
        seconds=seconds,
    )


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn: LossFn, data: Data, batches: torch.Tensor, chunk: int) -> float:
    """Mean loss over the multiset of samples in `batches` [k, B], each distinct sample evaluated once.

    A sample seen m times weighs m; loss_fn must return the mean of per-sample losses over its batch.
    Over several epochs this costs n forward samples instead of k·B.
    """
    uniq, counts = batches.reshape(-1).unique(return_counts=True)  # [u], [u]
    total = torch.zeros((), dtype=torch.float64, device=batches.device)
    for m in counts.unique().tolist():
        for part in uniq[counts == m].split(chunk):
            total += loss_fn(model, take(data, part)).double() * (m * part.numel())
    return float(total / batches.numel())


def estimate_llc(
    model: nn.Module,
    data: Data,
    *,
    loss_fn: Optional[LossFn] = None,
    config: Optional[SGLDConfig] = None,
    engine: str = "slt",
    progress: Optional[Callable[[int, int], None]] = None,
    inplace: bool = False,
) -> LLCResult:
    """Estimate the LLC of `model` at its current parameters.

    data: a tensor (or tuple of tensors), first dimension = samples. Without loss_fn it must be token ids
      [N, T+1] and the loss is next-token cross-entropy.
    loss_fn(model, batch) -> scalar mean loss over the batch.
    engine: "slt" (this package's sampler) or "devinterp" (devinterp 2.0.1's, LM token data only).
    The model is not modified: sampling runs on a copy, in eval mode, in config.dtype on config.device. inplace=True
    lets the sampler take the model instead of copying it (one model's memory less): its parameters already on the
    device in config.dtype are replaced by equal tensors, views of the sampler's w*, and it is left in eval mode
    (a walk's own model; never a model being trained).
    """
    config = config or SGLDConfig()
    tensors = as_tuple(data)
    n = tensors[0].shape[0]
    config = config.resolved(n)
    if loss_fn is None:
        check_lm_tokens(data)
        loss_fn = lm_cross_entropy
    if engine == "devinterp":
        d = sample_devinterp(model, data, loss_fn=loss_fn, config=config)
        return summarize(d.loss, d.init_loss, config, d.num_params, engine="devinterp", method="devinterp",
                         notes=d.notes, seconds=d.seconds)
    if engine != "slt":
        raise ValueError(f"engine must be 'slt' or 'devinterp', got {engine!r}")

    trace, init_loss, num_params = sample(model, data, loss_fn, config, progress=progress, inplace=inplace)
    return summarize(
        trace.loss.double().numpy(),
        init_loss,
        config,
        num_params,
        engine="slt",
        method=trace.method,
        mala=trace.mala.double().numpy(),
        mala_step=trace.mala_step.numpy(),
        notes=trace.notes,
        seconds=trace.seconds,
    )


def private_copy(model: nn.Module, device: torch.device, dtype: torch.dtype, inplace: bool = False) -> nn.Module:
    """A copy of the model to sample, in eval mode, on `device` in `dtype`. Parameters already there are shared with
    the caller's model, not copied: run_chains holds w* once, in its flat vector, and puts views of it in the copy's
    modules in their place (FlatModel(own=True)); the shared tensors are only read. Otherwise each is converted.
    inplace: the model itself when its parameters are all there (estimate_llc's inplace)."""
    params = list(model.parameters())
    if all(p.device == device and p.dtype == dtype for p in params):
        return model.eval() if inplace else copy.deepcopy(model, memo={id(p): p for p in params}).eval()
    # nn.Module.to itself: a model may override .to with its own signature (TransformerLens's HookedTransformer)
    work = nn.Module.to(copy.deepcopy(model), device=device, dtype=dtype).eval()
    for p in work.parameters():
        p.requires_grad_(False)  # gradients come from the sampler's own leaves, never from .grad
    return work


def sample(
    model: nn.Module,
    data: Data,
    loss_fn: LossFn,
    config: SGLDConfig,
    *,
    per_chain: Optional[dict] = None,
    groups: Optional[list[Params]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    inplace: bool = False,
) -> tuple[ChainTrace, float, int]:
    """The raw chains behind estimate_llc: (trace, L_n(w*), number of parameters). config.nbeta resolved.

    per_chain: {"lr" | "localization" | "nbeta": [chains] values} samples a hyperparameter grid in one run.
    groups: components sampled in one run, a group of chains each (run_chains); the count is then the first's.
    """
    device = resolve_device(config.device)
    work = private_copy(model, device, config.state_dtype, inplace)
    data = to_device(data, device)
    # Minibatches depend on the seed alone: every chain and every checkpoint sees the same sequence.
    schedule = batch_schedule(num_samples(data), config.batch_size, config.steps, config.seed,
                              config.mala_period).to(device)  # [T, B]
    num_params = count_params(work, groups[0] if groups else config.params)  # all, or a refined LLC's d
    # L_n(w*) under the loss the chains see: in bf16 autocast when they sample under it
    init_loss = evaluate_loss(work, autocast_loss(loss_fn, config, device), data, schedule[config.burnin :],
                              chunk=max(1, 4 * config.batch_size // config.grad_accum))
    if not math.isfinite(init_loss):
        raise ValueError(f"the loss at w* is not finite ({init_loss}): the checkpoint or the data is broken")
    trace = run_chains(work, loss_fn, data, config, schedule, progress=progress, per_chain=per_chain, groups=groups,
                       own=True)
    return trace, init_loss, num_params


def estimate_components(
    model: nn.Module,
    data: Data,
    components: dict[str, Params],
    *,
    loss_fn: Optional[LossFn] = None,
    config: Optional[SGLDConfig] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    inplace: bool = False,
) -> dict[str, LLCResult]:
    """The refined λ̂ of each component {name: params}, as estimate_llc(config=replace(config, params=...)) gives it.

    Components that sample the same parameters (the heads of one layer: the same tensors, other coordinates) share
    one run, config.chains chains each with their own mask and the noise a run of their own would draw
    (run_chains' groups): one model copy, one L_n(w*), one pass at step 0 and wider steps instead of one run each.
    inplace: as estimate_llc's.
    """
    config = (config or SGLDConfig()).resolved(as_tuple(data)[0].shape[0])
    if loss_fn is None:
        check_lm_tokens(data)
        loss_fn = lm_cross_entropy
    named = list(model.named_parameters())
    batches: dict[tuple, list[str]] = {}  # the parameters sampled -> the components that sample them
    for name, params in components.items():
        key = tuple(m is not None for m in select(named, params))
        batches.setdefault(key, []).append(name)
    total, done = len(batches) * config.steps, 0
    results = {}
    for names in batches.values():
        C, G = config.chains, len(names)
        report = None if progress is None else lambda k, _, d=done: progress(d + k, total)
        trace, init_loss, _ = sample(model, data, loss_fn, replace(config, chains=G * C),
                                     groups=[components[n] for n in names], progress=report, inplace=inplace)
        done += config.steps
        loss, mala = trace.loss.double().numpy(), trace.mala.double().numpy()  # [G * C, steps], [G * C, pairs]
        for g, name in enumerate(names):
            rows = slice(g * C, (g + 1) * C)
            notes = trace.notes + ([f"sampled with {G - 1} other components in one run of {G * C} chains"]
                                   if G > 1 else [])
            results[name] = summarize(loss[rows], init_loss, replace(config, params=components[name]),
                                      count_params(model, components[name]), engine="slt", method=trace.method,
                                      mala=mala[rows], mala_step=trace.mala_step.numpy(), notes=notes,
                                      seconds=trace.seconds / G)
    return {name: results[name] for name in components}


def sampling_method(model: nn.Module, config: SGLDConfig) -> str:
    """config.method, with "auto" resolved for this model (sampler.auto_method: by size and device, not by timing).

    A walk or a training hook resolves it once and stores it, so that a resumed run samples as the first did.
    """
    if config.method != "auto":
        return config.method
    return auto_method(count_params(model), config.chains, resolve_device(config.device))
