"""The SGLD engine: chains of localized SGLD around a checkpoint w*, in functional PyTorch.

All chains live in one flat matrix w [chains, D] of the sampled parameters (all of them, or a component's tensors).
Each step evaluates the minibatch loss and its gradient for every chain, either with one vmapped forward/backward
over the chain dimension ("vmap") or with one forward/backward per chain ("loop"), then applies one fused update to
all chains. The noise of a run's chains is one draw from one generator (one per component when several share the
run), and every chain sees the same minibatch, so the two paths compute the same numbers up to floating-point
rounding and may be swapped freely.
Which is faster depends on the model and the device (vmap wins where per-step overhead dominates,
loses on CPU for mid-sized models and for transformers), so "auto" picks by a measured rule (auto_method).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional, Union

import torch
from torch import nn
from torch.func import vmap

from slt_probe.engine.data import Data, LossFn, take


@dataclass(frozen=True, eq=False)
class Coordinates:
    """A component smaller than whole tensors: {parameter name: bool mask of that parameter's shape, True where sampled}.

    One attention head's rows of a fused qkv matrix, say: the weight-refined LLC of Wang et al. 2024
    (arXiv 2410.02984) restricted to coordinates. `label` says what it is and stands for the masks in stored configs.
    """

    masks: dict[str, torch.Tensor]
    label: str

    def __str__(self) -> str:
        return self.label


Params = Union[None, str, Coordinates]  # every parameter | a regex over names | some coordinates of some parameters


@dataclass
class SGLDConfig:
    """Hyperparameters of one LLC estimate (names as in Lau et al. 2023, arXiv 2308.12108)."""

    lr: float = 1e-4  # ε, the SGLD step size
    localization: float = 100.0  # γ, strength of the pull back to w*
    # nβ, the inverse temperature times n. None means n/log n with n = number of samples in the data
    # (Lau et al. 2023, after Watanabe's WBIC β = 1/log n); the resolved value is stored with results.
    nbeta: Optional[float] = None
    chains: int = 4
    draws: int = 200  # kept draws per chain, after burn-in
    burnin: int = 50  # steps discarded from λ̂ before the draws
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1"
    # sampling precision, whatever the checkpoint's (bf16 weights are upcast). "bfloat16": the forward and backward
    # passes under torch.autocast in bf16, while the chains, their update and L_n(w*)'s sum stay float32
    dtype: str = "float32"
    grad_accum: int = 1  # each minibatch in this many equal micro-batches, one forward/backward each (memory / k)
    method: str = "auto"  # "vmap" | "loop" | "auto" (by model size and device: auto_method)
    mala_every: int = 10  # every k-th step pair measures the MALA acceptance ratio; 0 disables
    # The weight-refined LLC of a component (Wang et al. 2024, arXiv 2410.02984): only what `params` selects is
    # sampled, the rest stays at w*. A regular expression over parameter names (model.named_parameters()), e.g.
    # r"^blocks\.0\." for the first layer, or Coordinates (one head: inputs/heads.py). None: every parameter (the LLC).
    params: Params = None
    # "sgld": one step size ε for every parameter (Welling & Teh 2011; Lau et al. 2023). "rmsprop": the step and the
    # noise of each parameter scaled by an RMSProp preconditioner G = 1/(rmsprop_eps + sqrt(V)), V the running mean
    # of its squared minibatch gradient (Li et al. 2016, pSGLD; devinterp's "rmsprop_sgld"), adapted during burn-in
    # and then frozen, so that the draws sample the tempered posterior (see run_chains).
    sampler: str = "sgld"
    rmsprop_alpha: float = 0.99  # decay of V's running mean (devinterp's alpha)
    rmsprop_eps: float = 0.1  # added to sqrt(V): G <= 1/rmsprop_eps (devinterp's eps)
    rmsprop_freeze: bool = True  # False: G adapts for the whole run, as devinterp's does (the draws then sample the
    # posterior only approximately: an adapting G needs a correction term that neither applies)

    def __post_init__(self):
        for name in ("lr", "localization"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        if self.nbeta is not None and not (self.nbeta > 0 and math.isfinite(self.nbeta)):
            raise ValueError(f"nbeta must be a finite number > 0, got {self.nbeta}")
        for name in ("chains", "draws", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.burnin < 0 or self.mala_every < 0:
            raise ValueError("burnin and mala_every must be >= 0")
        if self.method not in ("auto", "vmap", "loop"):
            raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {self.method!r}")
        if self.sampler not in ("sgld", "rmsprop"):
            raise ValueError(f"sampler must be 'sgld' or 'rmsprop', got {self.sampler!r}")
        if not (0 <= self.rmsprop_alpha < 1 and self.rmsprop_eps > 0):
            raise ValueError("need 0 <= rmsprop_alpha < 1 and rmsprop_eps > 0")
        if self.dtype not in ("float32", "float64", "bfloat16"):
            raise ValueError(f"dtype must be 'float32', 'float64' or 'bfloat16', got {self.dtype!r}")
        if int(self.grad_accum) < 1 or int(self.batch_size) % int(self.grad_accum):
            raise ValueError(f"grad_accum must be >= 1 and divide batch_size ({self.batch_size}), got {self.grad_accum}")
        if self.params is not None and not isinstance(self.params, Coordinates):
            try:
                re.compile(self.params)
            except re.error as e:
                raise ValueError(f"params is not a regular expression ({e}): {self.params!r}") from None

    @property
    def state_dtype(self) -> torch.dtype:
        """The dtype of the model copy and the chains: float32 under bf16 autocast."""
        return torch.float32 if self.dtype == "bfloat16" else getattr(torch, self.dtype)

    @property
    def steps(self) -> int:
        return self.burnin + self.draws

    @property
    def mala_period(self) -> int:
        """k of the MALA step pairs; 0 when off (a period of 1 could pair no steps)."""
        return self.mala_every if self.mala_every >= 2 else 0

    def resolved(self, n: int) -> "SGLDConfig":
        """The config with nβ made explicit, as it is stored beside every result."""
        if self.nbeta is not None:
            return self
        if n < 2:
            raise ValueError("nbeta=None (n/log n) needs at least 2 samples")
        return replace(self, nbeta=n / math.log(n))

    def to_dict(self) -> dict:
        """Plain values, as stored beside results: Coordinates by their label."""
        d = asdict(replace(self, params=None))
        d["params"] = None if self.params is None else str(self.params)
        return d


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available")
    return dev


@dataclass
class ChainTrace:
    """Raw output of the sampler, on the CPU."""

    loss: torch.Tensor  # [chains, steps] minibatch loss at w_t, before the step-t update
    mala: torch.Tensor  # [chains, pairs] MALA acceptance probability of measured pairs
    mala_step: torch.Tensor  # [pairs] the step t of each measured pair (t -> t+1)
    method: str
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def select_params(names: list[str], pattern: str) -> list[bool]:
    """Which of the model's parameter names `pattern` selects (re.search); ValueError naming them when none."""
    keep = [re.search(pattern, name) is not None for name in names]
    if not any(keep):
        raise ValueError(f"params {pattern!r} matches none of the model's parameters ({', '.join(names[:8])}"
                         f"{', ...' if len(names) > 8 else ''})")
    return keep


def select(named: list[tuple[str, torch.Tensor]], params: Params) -> list:
    """What `params` samples of each parameter: None (held at w*), True (all of it) or a bool mask of its shape.
    ValueError when it selects nothing, or names a parameter the model lacks, or a mask has the wrong shape."""
    if params is None:
        return [True] * len(named)
    if isinstance(params, str):
        return [True if k else None for k in select_params([n for n, _ in named], params)]
    shapes = dict(named)
    for name, m in params.masks.items():
        if name not in shapes:
            raise ValueError(f"{params.label}: the model has no parameter {name!r}")
        if tuple(m.shape) != tuple(shapes[name].shape):
            raise ValueError(f"{params.label}: the mask of {name} has shape {tuple(m.shape)}, the parameter "
                             f"{tuple(shapes[name].shape)}")
    out = []
    for name, _ in named:
        m = params.masks.get(name)
        m = None if m is None or not m.any() else True if m.all() else m.bool()
        out.append(m)
    if all(m is None for m in out):
        raise ValueError(f"{params.label}: selects no coordinates")
    return out


def count_params(model: nn.Module, params: Params = None) -> int:
    """The number of coordinates sampled: every parameter, or what `params` selects (a refined LLC's d)."""
    named = list(model.named_parameters())
    return sum(p.numel() if m is True else int(m.sum()) for (_, p), m in zip(named, select(named, params))
               if m is not None)


class FlatModel:
    """The sampled parameters as one flat vector [D], and the loss as a function of that vector.

    `active`: which of the model's parameters are sampled (default all). The others stay the model's own tensors,
    which need no gradient: a refined LLC's backward pass skips their weight gradients (the unembedding's, say).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, active: Optional[list[bool]] = None):
        self.model, self.loss_fn = model, loss_fn
        named = list(model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters")
        active = active if active is not None else [True] * len(named)
        named = [(n, p) for (n, p), a in zip(named, active) if a]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.w0 = torch.cat([p.detach().reshape(-1) for _, p in named])  # [D]
        # Every place a sampled parameter is registered, as (module, attribute, index into names): a tied parameter
        # (one tensor under two names) has several, and all of them take the same slice of w, as functional_call's
        # ties do.
        index = {id(p): i for i, (_, p) in enumerate(named)}
        self.slots = []
        for n, p in model.named_parameters(remove_duplicate=False):
            if id(p) in index:
                prefix, _, attr = n.rpartition(".")
                self.slots.append((model.get_submodule(prefix), attr, index[id(p)]))

    def mask(self, selected: list) -> Optional[torch.Tensor]:
        """[D] 1.0 on the coordinates `selected` (select() over the active parameters) samples, else 0.0; None when
        it samples all of them."""
        if all(m is True for m in selected):
            return None
        return torch.cat([torch.full((n,), float(m is True), dtype=self.w0.dtype, device=self.w0.device)
                          if not isinstance(m, torch.Tensor) else m.reshape(-1).to(self.w0)
                          for n, m in zip(self.numels, selected)])

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        # w: [D] -> {name: view of shape p.shape}
        return {n: t.view(s) for n, t, s in zip(self.names, w.split(self.numels), self.shapes)}

    def loss(self, w: torch.Tensor, batch) -> torch.Tensor:
        """loss_fn(model, batch) with every sampled parameter replaced by its view of w [D] (under vmap, one chain's row).

        What torch.func.functional_call(model, unflatten(w), ...) does, by the same assignment into each module's
        _parameters, but with the slots found once: functional_call resolves the names and looks for tied weights on
        every call, which cost ~1% of a 270k-parameter transformer's step on the CPU (the loop path calls it once per
        chain and step). The model's own parameters are back in place when this returns or raises.
        """
        views = [t.view(s) for t, s in zip(w.split(self.numels), self.shapes)]
        saved = [mod._parameters[attr] for mod, attr, _ in self.slots]
        try:
            for mod, attr, i in self.slots:
                mod._parameters[attr] = views[i]
            return self.loss_fn(self.model, batch)
        finally:
            for (mod, attr, _), p in zip(self.slots, saved):
                mod._parameters[attr] = p


def autocast_loss(loss_fn: LossFn, config: SGLDConfig, device: torch.device) -> LossFn:
    """loss_fn under bf16 autocast when config.dtype is "bfloat16" (its value back in float32); else loss_fn. The
    backward pass runs under the casts the forward recorded."""
    if config.dtype != "bfloat16":
        return loss_fn

    def loss(model, batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            value = loss_fn(model, batch)
        return value.float()

    return loss


def _col(v):
    """A per-chain [C, 1] hyperparameter as [C] (to scale per-chain scalars); a float stays a float."""
    return v[:, 0] if isinstance(v, torch.Tensor) else v


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _GradientPaths:
    """The minibatch loss [C] of every chain, with its gradient written into `grad` [C, D], two ways.

    A minibatch comes as a list of k equal micro-batches (SGLDConfig.grad_accum): the loss and the gradient are the
    means of theirs, each freed before the next, which is the full minibatch's mean up to rounding.
    """

    def __init__(self, flat: FlatModel, w: torch.Tensor, grad: torch.Tensor):
        self.flat, self.w, self.grad = flat, w, grad
        # One vmapped forward for all chains, then one plain backward of the summed loss: the chains do not
        # interact, so d(sum_c L_c)/dw[c] = dL_c/dw[c]. Measured ~25% faster than vmap(grad(loss)) on CPU,
        # where torch.func's grad transform adds its own per-op overhead.
        self.vmapped = vmap(flat.loss, in_dims=(0, None))  # ([C, D], batch) -> [C]

    @staticmethod
    def _mean(loss_of: Callable, w: torch.Tensor, batches: list, out: torch.Tensor) -> torch.Tensor:
        """loss_of(w, batch) averaged over the micro-batches, its gradient with respect to w written into out."""
        k, total = len(batches), None
        for i, batch in enumerate(batches):
            loss = loss_of(w, batch)  # [C] or []
            loss = loss / k if k > 1 else loss
            (g,) = torch.autograd.grad(loss.sum(), w)
            if i == 0:
                out.copy_(g)
                total = loss.detach()
            else:
                out.add_(g)
                total = total + loss.detach()
        return total

    def vmap(self, batches: list) -> torch.Tensor:
        wl = self.w.detach().requires_grad_()  # [C, D], shares w's storage
        return self._mean(self.vmapped, wl, batches, self.grad)

    def loop(self, batches: list, same: bool = False) -> torch.Tensor:
        """same: every chain is at the same point (step 0, all at w*), so chain 0's loss and gradient serve all of
        them: the numbers each chain's own pass would give, one forward/backward instead of C."""
        losses = []
        for c in range(1 if same else self.w.shape[0]):
            # plain autograd on a leaf that shares w[c]'s storage: torch.func.grad costs ~0.1 ms more a call
            wc = self.w[c].detach().requires_grad_()  # [D]
            losses.append(self._mean(self.flat.loss, wc, batches, self.grad[c]))
        if same:
            self.grad[1:].copy_(self.grad[0])
            return losses[0].expand(self.w.shape[0]).clone()
        return torch.stack(losses)


# "auto" on the CPU: vmap for models of at most this many parameters, the loop above. Measured twice on a quiet
# machine (one thread, ms per step, benchmarks/auto_method.py, 30 cases: DLNs of 104-131k parameters and
# attention-only transformers of 3k-270k, at 2, 4 and 16 chains): it picks the faster path in 23 and 22 cases; the
# misses cost at most 1.20x and 1.51x (a 49k-parameter DLN, which vmaps faster), most are ties at 2 chains. A bound on
# chains × parameters as well cost up to 2.4x (a 12k-parameter DLN at 16 chains). A rule, not a timing: the same
# command picks the same path, hence the same numbers, whatever the machine's load.
VMAP_PARAMS_UP_TO = 1 << 14


def auto_method(num_params: int, chains: int, device: torch.device) -> str:
    """What "auto" runs: vmap on CUDA (per-step overhead dominates there); on the CPU, vmap for small models.
    `chains` is not used on the CPU: measured, the number of chains moved the better path only within noise."""
    if device.type == "cuda":
        return "vmap"
    return "vmap" if num_params <= VMAP_PARAMS_UP_TO else "loop"


def run_chains(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    config: SGLDConfig,
    schedule: torch.Tensor,
    progress: Optional[Callable[[int, int], None]] = None,
    per_chain: Optional[dict[str, torch.Tensor]] = None,
    groups: Optional[list[Params]] = None,
) -> ChainTrace:
    """Sample `config.chains` SGLD chains around the model's current parameters.

    `model` must already be on the sampling device and dtype, in eval mode; `data` on the same device;
    `config.nbeta` resolved; `schedule` [steps, batch] the minibatch indices of every step (data.batch_schedule).
    `progress(done_steps, total_steps)` is called now and then.
    `per_chain`: optional {"lr", "localization", "nbeta"} -> [chains] values overriding the config's, so that
    one run samples a grid of hyperparameters, a group of chains per grid point (calibrate.py).
    `groups`: components (each a `params`, in place of config.params) that sample the same parameters, each at its
    own coordinates: the chains split into len(groups) consecutive groups, one per component. Each group draws its
    noise from its own generator seeded as a run of that component alone would, so it reads as that run would.
    """
    device = next(model.parameters()).device
    named = list(model.named_parameters())
    selected = [select(named, p) for p in (groups or [config.params])]  # per group, per parameter: None/True/mask
    active = [m is not None for m in selected[0]]
    if any([m is not None for m in sel] != active for sel in selected[1:]):
        raise ValueError("components sampled in one run must select the same parameters (at any coordinates)")
    flat = FlatModel(model, autocast_loss(loss_fn, config, device), active)
    C, D, T = config.chains, flat.w0.numel(), config.steps
    G = len(selected)
    if C % G:
        raise ValueError(f"{C} chains do not split into {G} equal groups")
    lr, gamma, nbeta = config.lr, config.localization, float(config.nbeta)
    sqrt_lr = math.sqrt(lr)
    if per_chain:  # [C, 1] columns broadcast over the parameters; plain floats otherwise (cheaper)
        def column(name, default):
            v = torch.as_tensor(per_chain.get(name, default), dtype=flat.w0.dtype, device=device)
            return v.reshape(-1, 1).expand(C, 1).contiguous()

        lr, gamma, nbeta = column("lr", lr), column("localization", gamma), column("nbeta", nbeta)
        sqrt_lr = lr.sqrt()
    k = config.mala_period
    # The noise, like the minibatch schedule, depends on the seed alone (common random numbers), one generator a group.
    gens = [torch.Generator(device=device).manual_seed(config.seed + 1) for _ in range(G)]

    w0 = flat.w0  # [D]
    # refined LLC: the drift and the noise of the coordinates not sampled are zeroed, so they never leave w*
    masks = [flat.mask([m for m, a in zip(sel, active) if a]) for sel in selected]  # each [D] or None
    mask = None if all(m is None for m in masks) else torch.stack(
        [torch.ones_like(w0) if m is None else m for m in masks]).unsqueeze(1)  # [G, 1, D]
    w = w0.expand(C, D).clone()  # [C, D]
    grad = torch.empty_like(w)
    noise = torch.empty_like(w)
    loss_trace = torch.full((C, T), float("nan"), device=device, dtype=w.dtype)
    pair_steps = [t for t in range(T - 1) if k and t % k == 0]
    mala = torch.full((C, len(pair_steps)), float("nan"), device=device, dtype=w.dtype)
    prev_drift = torch.empty_like(w) if pair_steps else None
    prev_noise = torch.empty_like(w) if pair_steps else None
    prev_energy = torch.empty(C, device=device, dtype=w.dtype)
    pair_index = 0
    # RMSProp preconditioner (config.sampler "rmsprop"), per chain and parameter: V the running mean of the squared
    # minibatch gradient, G = 1/(eps + sqrt(V̂)) with V̂ bias-corrected as in Adam (Kingma & Ba 2015), so that a short
    # burn-in gives the scale, not a fraction of it. Adapted while t < burnin (at least on the first step), then
    # frozen: with a constant G the preconditioned Langevin step leaves the tempered posterior invariant (up to the
    # step's discretization bias) with no correction term, which an ever-adapting G would need (Li et al. 2016, Γ).
    rms = config.sampler == "rmsprop"
    square_avg = torch.zeros_like(w) if rms else None  # [C, D] V
    precond = torch.ones_like(w) if rms else None  # [C, D] G
    sqrt_precond = torch.ones_like(w) if rms else None  # [C, D] sqrt(G)
    step_drift, step_noise = (torch.empty_like(w), torch.empty_like(w)) if rms else (None, None)
    adapt_steps = max(config.burnin, 1) if config.rmsprop_freeze else T

    paths = _GradientPaths(flat, w, grad)
    notes: list[str] = []
    method = config.method
    if method == "auto":
        method = auto_method(D, C, device)
        notes.append(f"method auto: {method} ({C} chains × {D} parameters on {device.type})")

    offset = torch.empty_like(w)  # [C, D] w - w*, rewritten in place every step
    scratch = torch.empty_like(w) if pair_steps else None  # [C, D] the squares of the MALA energies

    start = time.perf_counter()
    for t in range(T):
        batch = [take(data, idx) for idx in schedule[t].chunk(config.grad_accum)]  # k micro-batches
        if method == "vmap":
            try:
                loss = paths.vmap(batch)
            except Exception as e:  # models that cannot be vmapped: data-dependent control flow, .item(), ...
                notes.append(f"vmap failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); used the loop")
                method = "loop"
                loss = paths.loop(batch, same=t == 0)
        else:  # at step 0 every chain is at w* on the same batch: one pass serves all (C - 1 of C T passes saved)
            loss = paths.loop(batch, same=t == 0)
        loss_trace[:, t] = loss.detach()

        if rms and t < adapt_steps:  # the raw minibatch gradient, before it becomes the drift below
            a = config.rmsprop_alpha
            square_avg.mul_(a).addcmul_(grad, grad, value=1 - a)
            torch.div(square_avg, 1 - a ** (t + 1), out=precond).sqrt_().add_(config.rmsprop_eps).reciprocal_()
            torch.sqrt(precond, out=sqrt_precond)

        # Lau et al. 2023 (arXiv 2308.12108) eq. 8: Δw = ε/2 (−nβ ∇L_m(w) − γ (w − w*)) + N(0, ε);
        # preconditioned (Li et al. 2016): Δw = ε/2 G (−nβ ∇L_m(w) − γ (w − w*)) + N(0, ε G)
        torch.sub(w, w0, out=offset)  # [C, D]
        mala_step = pair_index < len(pair_steps) and t - pair_steps[pair_index] in (0, 1)
        # |w - w*|² / 2, for the MALA energy
        half_sq = 0.5 * torch.square(offset, out=scratch).sum(1) if mala_step else None
        # ∇U(w), U = nβ L_m + γ/2 |w - w*|²; fused ops with scalar hyperparameters (each pass over [C, D] counts)
        if per_chain:
            drift = grad.mul_(nbeta).addcmul_(offset, gamma)
        else:
            drift = grad.mul_(nbeta).add_(offset, alpha=gamma)
        for g, part in enumerate(noise.view(G, C // G, D)):  # each group's rows: contiguous
            torch.randn(part.shape, generator=gens[g], device=device, dtype=w.dtype, out=part)
        if mask is not None:  # before the MALA bookkeeping: the chain lives in the sampled coordinates only
            drift.view(G, C // G, D).mul_(mask)
            noise.view(G, C // G, D).mul_(mask)

        if pair_index < len(pair_steps):
            if t == pair_steps[pair_index] + 1:
                # MALA (Roberts & Tweedie 1996): log α = −ΔU + log q(w_t | w_t+1) − log q(w_t+1 | w_t),
                # on one minibatch potential, since step t reused step t−1's batch.
                # In units of the proposal's sd sqrt(ε G): back = sqrt(ε G)/2 (∇U_t + ∇U_t+1) − ξ_t, fwd = ξ_t.
                energy = _col(nbeta) * loss.detach() + _col(gamma) * half_sq
                back = prev_drift.add_(drift).mul_(sqrt_lr / 2)
                if rms:
                    back.mul_(sqrt_precond)
                back.sub_(prev_noise)
                log_q_back = -0.5 * torch.square(back, out=scratch).sum(1)
                log_q_fwd = -0.5 * torch.square(prev_noise, out=scratch).sum(1)
                log_alpha = prev_energy - energy + log_q_back - log_q_fwd
                mala[:, pair_index] = torch.exp(torch.clamp(log_alpha, max=0.0))
                pair_index += 1
            if pair_index < len(pair_steps) and t == pair_steps[pair_index]:
                prev_energy = _col(nbeta) * loss.detach() + _col(gamma) * half_sq
                prev_drift.copy_(drift)
                prev_noise.copy_(noise)

        if rms:  # the MALA bookkeeping above keeps the unpreconditioned drift and the standard noise
            drift = torch.mul(drift, precond, out=step_drift)
            step = torch.mul(noise, sqrt_precond, out=step_noise)
        else:
            step = noise
        if per_chain:
            w.addcmul_(drift, lr, value=-0.5).addcmul_(step, sqrt_lr)
        else:
            w.add_(drift, alpha=-lr / 2).add_(step, alpha=sqrt_lr)

        # One host sync every 64 steps: stop early once every chain has diverged.
        if (t + 1) % 64 == 0 or t == T - 1:
            if progress is not None:
                progress(t + 1, T)
            if t < T - 1 and not torch.isfinite(loss_trace[:, t]).any():
                notes.append(f"every chain diverged; sampling stopped after step {t}")
                break
    _sync(device)
    seconds = time.perf_counter() - start
    return ChainTrace(
        loss=loss_trace.cpu(),
        mala=mala.cpu(),
        mala_step=torch.tensor(pair_steps[: mala.shape[1]], dtype=torch.long),
        method=method,
        notes=notes,
        seconds=seconds,
    )
