"""A deep linear network whose learning coefficient is known in closed form: the estimator's ground truth.

A deep linear network at a generic full-rank true parameter, with noiseless targets: the setup of
Furman & Lau 2024 (arXiv 2402.03698), where the local learning coefficient equals Aoyagi's formula.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from slt_probe.engine.closed_forms import dln_learning_coefficient
from slt_probe.engine.estimate import LLCResult, estimate_llc
from slt_probe.engine.sampler import SGLDConfig


@dataclass
class DLNProblem:
    name: str
    model: nn.Module
    data: tuple[torch.Tensor, torch.Tensor]  # (x [n, in], y [n, out])
    llc: float  # the true learning coefficient
    config: SGLDConfig  # hyperparameters that estimate it well


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def deep_linear_network(widths: Sequence[int]) -> nn.Sequential:
    """W_L ... W_1 x with no biases; widths = [in, hidden..., out]."""
    return nn.Sequential(*[nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:])])


# ε per sampler. RMSProp's G = 1/(0.1 + sqrt(V)) is ~10 where the gradients are small, so its ε is smaller: on the
# default DLN, ε 1e-7 read 24.5 ± 0.35 (λ 24), 3e-7 read +8% and the MALA check flagged it.
DLN_LR = {"sgld": 5e-7, "rmsprop": 1e-7}


def dln_problem(widths: Sequence[int] = (8, 6, 4, 8), n: int = 100_000, seed: int = 0,
                sampler: str = "sgld", scale: float = 10.0) -> DLNProblem:
    """A DLN at a random full-rank true parameter; λ from Aoyagi's formula with r = min(widths).

    Inputs are uniform in [−scale, scale]; the loss's curvature grows as scale², and with it how far into the
    asymptotic regime nβ = n / log n reaches (at n 2e4 and scale 0.3 the estimand is ~15% below λ).
    """
    if sampler not in DLN_LR:
        raise ValueError(f"sampler must be one of {', '.join(DLN_LR)}, got {sampler!r}")
    gen = torch.Generator().manual_seed(seed)
    model = deep_linear_network(widths)
    with torch.no_grad():
        for layer in model:
            # Haar-random (semi-)orthogonal layers: a generic point (full-rank product a.s.) whose loss
            # Hessian is well conditioned, so a few thousand SGLD steps equilibrate every direction.
            nn.init.orthogonal_(layer.weight, generator=gen)
        x = torch.rand(n, widths[0], generator=gen) * (2 * scale) - scale  # [−10, 10] by default, as Furman & Lau
        y = model(x)  # noiseless targets: w* is a true parameter, L_n(w*) = 0
    config = SGLDConfig(lr=DLN_LR[sampler], localization=1.0, nbeta=None, chains=4, draws=1000, burnin=200,
                        batch_size=500, sampler=sampler)
    return DLNProblem(
        name=f"DLN {list(widths)} at a full-rank true parameter",
        model=model,
        data=(x, y),
        llc=dln_learning_coefficient(list(widths), min(widths)),
        config=config,
    )


@dataclass
class DLNCheck:
    problem: DLNProblem
    result: LLCResult

    @property
    def relative_error(self) -> float:
        return (self.result.llc_mean - self.problem.llc) / self.problem.llc


def check_dln(problem: DLNProblem, progress: Optional[Callable[[int, int], None]] = None, **overrides) -> DLNCheck:
    """λ̂ of the problem's DLN beside Aoyagi's λ: what `slt-probe validate` prints.

    overrides: SGLDConfig fields that replace the problem's own settings (seed, method, device, draws, chains).
    """
    config = replace(problem.config, **overrides)
    return DLNCheck(problem, estimate_llc(problem.model, problem.data, loss_fn=mse, config=config, progress=progress))
