"""The same estimate through devinterp 2.0.1, the field's reference library: a second engine and a cross-check.

devinterp samples; we take its per-step loss trace and init_loss and reduce them exactly as our own
engine does (burn-in discarded, diverged chains reported, same diagnostics), so the two engines differ
only in the sampler. devinterp itself averages burn-in into λ̂; with burnin=0 the numbers are its own.
It is handed our loss too: its default feeds a window's T+1 tokens to the model and drops the last
position's logits, which is the same cross-entropy but needs a context of T+1; ours feeds the first T.
"""

from __future__ import annotations

import copy
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slt_probe.engine.data import Data, LossFn, lm_cross_entropy
from slt_probe.engine.sampler import SGLDConfig, resolve_device


@dataclass
class DevinterpTrace:
    """What devinterp sampled, for estimate.summarize to reduce as it reduces our own sampler's chains."""

    loss: np.ndarray  # [chains, burnin + draws] minibatch loss; NaN from a failed chain's first non-finite loss on
    init_loss: float
    num_params: int
    notes: list[str]
    seconds: float


def sample_devinterp(model: nn.Module, data: Data, *, loss_fn: LossFn, config: SGLDConfig) -> DevinterpTrace:
    """devinterp 2.0.1's chains around the model's current parameters (config.nbeta resolved)."""
    if loss_fn is not lm_cross_entropy or not isinstance(data, torch.Tensor):
        raise ValueError("engine='devinterp' supports language-model token data with the default loss only")
    if config.params is not None:
        raise ValueError("a refined LLC (params) is computed by engine='slt' only")
    if config.dtype == "bfloat16" or config.grad_accum != 1:
        raise ValueError("bfloat16 autocast and grad_accum are engine='slt' features")
    # imported when used: devinterp and datasets take seconds to import, which every other command would pay
    from datasets import Dataset
    from devinterp.slt.llc import llc as devinterp_llc

    device = resolve_device(config.device)
    work = nn.Module.to(copy.deepcopy(model), dtype=getattr(torch, config.dtype))  # as in estimate.sample
    dataset = Dataset.from_dict({"input_ids": data.cpu().long().numpy()}).with_format("torch")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = devinterp_llc(
            work,
            dataset,
            observables={},
            lr=config.lr,
            n_beta=float(config.nbeta),
            localization=config.localization,
            num_chains=config.chains,
            num_draws=config.draws,
            num_burnin_steps=config.burnin,
            batch_size=config.batch_size,
            init_seed=config.seed,
            # the same sampler, devinterp's way: its RMSProp preconditioner adapts for the whole run
            **({"sampling_method": "rmsprop_sgld", "rmsprop_alpha": config.rmsprop_alpha,
                "rmsprop_eps": config.rmsprop_eps} if config.sampler == "rmsprop" else {}),
            loss_fn=_per_token_loss,
            device=str(device),
            output_path=f"{tmp}/samples.zarr",
        )
        loss = np.asarray(out["loss_trace"].values, dtype=np.float64)  # [chains, burnin + draws]
        init_loss = float(out["init_loss"])
    seconds = time.perf_counter() - start

    # devinterp stops a chain at its first non-finite loss and only warns; the rest of its row is fill.
    for w in caught:
        m = re.search(r"Chain (\d+) failed", str(w.message))
        if m:
            c = int(m.group(1))
            bad = ~np.isfinite(loss[c]) | (loss[c] == 0)
            first = int(np.argmax(bad)) if bad.any() else loss.shape[1] - 1
            loss[c, first:] = np.nan
    return DevinterpTrace(loss, init_loss, sum(p.numel() for p in model.parameters()), [f"devinterp {_version()}"],
                          seconds)


def _per_token_loss(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """devinterp's loss_fn protocol: per-token cross-entropy [B, T] of tokens [B, T+1], predicting input_ids[:, 1:]
    from input_ids[:, :-1], exactly as data.lm_cross_entropy does before its mean."""
    from devinterp.slt.lm_loss import NonFiniteLogitsError, lm_forward_logits  # loaded by sample_devinterp already

    logits = lm_forward_logits(model, input_ids[:, :-1])  # [B, T, vocab]
    if not torch.isfinite(logits).all():
        raise NonFiniteLogitsError("Non-finite values detected in model logits.")  # devinterp's own signal
    return F.cross_entropy(logits.transpose(1, 2).float(), input_ids[:, 1:], reduction="none")  # [B, T]


def _version() -> str:
    return version("devinterp")
