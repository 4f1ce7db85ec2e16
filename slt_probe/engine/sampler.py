"""The SGLD engine: chains of localized SGLD around a checkpoint w*, in functional PyTorch.

Chains live in a flat matrix w [g, D] of the sampled parameters (all of them, or a component's tensors), g of them
at a time (SGLDConfig.chain_group: all at once, or fewer when memory is short). Each step evaluates the minibatch loss
and its gradient for every chain of the group, either with one vmapped forward/backward over the chain dimension
("vmap") or with one forward/backward per chain ("loop"), then applies one fused update, slice by slice of w. Every
chain draws its noise from its own generator and every chain sees the same minibatch, so the numbers depend neither on
the grouping nor on the path (up to floating-point rounding between the paths), which may be swapped freely.
Which is faster depends on the model and the device (vmap wins where per-step overhead dominates,
loses on CPU for mid-sized models and for transformers), so "auto" picks by a measured rule (auto_method).
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional, Union

import numpy as np
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
    # chains sampled at once (1: one after another, the least memory); None: as many as the free memory holds
    # (chain_group()). Each chain's noise is its own, so this changes the memory used, never the numbers.
    chain_group: Optional[int] = None
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
        if self.chain_group is not None and int(self.chain_group) < 1:
            raise ValueError(f"chain_group must be >= 1, got {self.chain_group}")
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
    `own`: the model is a private copy (estimate.sample's), whose modules may take new parameters: each sampled one is
    replaced by a view of w0, so that w* is held once. The copy may share its parameters with the caller's model
    (estimate.private_copy): those tensors are only read, never modified.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, active: Optional[list[bool]] = None, own: bool = False):
        self.model, self.loss_fn = model, loss_fn
        named = list(model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters")
        active = active if active is not None else [True] * len(named)
        named = [(n, p) for (n, p), a in zip(named, active) if a]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        first = named[0][1]
        self.w0 = torch.empty(sum(self.numels), dtype=first.dtype, device=first.device)  # [D]
        for view, (_, p) in zip(self.w0.split(self.numels), named):
            view.copy_(p.detach().reshape(-1))
        # Every place a sampled parameter is registered, as (module, attribute, index into names): a tied parameter
        # (one tensor under two names) has several, and all of them take the same slice of w, as functional_call's
        # ties do.
        index = {id(p): i for i, (_, p) in enumerate(named)}
        self.slots = []
        for n, p in model.named_parameters(remove_duplicate=False):
            if id(p) in index:
                prefix, _, attr = n.rpartition(".")
                self.slots.append((model.get_submodule(prefix), attr, index[id(p)]))
        if own:  # one Parameter per tensor, so ties stay ties
            views = [nn.Parameter(v, requires_grad=False) for v in self.views(self.w0)]
            for mod, attr, i in self.slots:
                mod._parameters[attr] = views[i]

    def mask(self, selected: list) -> Optional[torch.Tensor]:
        """[D] 1.0 on the coordinates `selected` (select() over the active parameters) samples, else 0.0; None when
        it samples all of them."""
        if all(m is True for m in selected):
            return None
        return torch.cat([torch.full((n,), float(m is True), dtype=self.w0.dtype, device=self.w0.device)
                          if not isinstance(m, torch.Tensor) else m.reshape(-1).to(self.w0)
                          for n, m in zip(self.numels, selected)])

    def views(self, w: torch.Tensor) -> list[torch.Tensor]:
        """w [..., D] as one view per sampled parameter, each [..., *shape]."""
        lead = w.shape[:-1]
        return [t.view(*lead, *s) for t, s in zip(w.split(self.numels, dim=-1), self.shapes)]

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        # w: [D] -> {name: view of shape p.shape}
        return dict(zip(self.names, self.views(w)))

    def loss(self, w: torch.Tensor | list[torch.Tensor], batch) -> torch.Tensor:
        """loss_fn(model, batch) with every sampled parameter replaced by its view of w [D] (or by the tensors of the
        list views() gives; under vmap, one chain's).

        What torch.func.functional_call(model, unflatten(w), ...) does, by the same assignment into each module's
        _parameters, but with the slots found once: functional_call resolves the names and looks for tied weights on
        every call, which cost ~1% of a 270k-parameter transformer's step on the CPU (the loop path calls it once per
        chain and step). The model's own parameters are back in place when this returns or raises.
        """
        views = self.views(w) if isinstance(w, torch.Tensor) else w
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
    """The minibatch loss [g] of every chain of a block, with its gradient written into `grad` [g, D], two ways.

    The gradient lands in `grad` itself: each parameter's view of w is a leaf whose .grad is its view of `grad`, which
    the backward pass accumulates into in place, one parameter's gradient at a time (no [g, D] gradient of the flat
    vector beside it, and no copy). The leaves are made once: they share w's storage, so they follow its updates. A
    minibatch comes as a list of k equal micro-batches (SGLDConfig.grad_accum): the loss and the gradient are the
    means of theirs, each freed before the next, the full minibatch's mean up to rounding.
    """

    def __init__(self, flat: FlatModel, w: torch.Tensor, grad: torch.Tensor):
        self.flat, self.w, self.grad = flat, w, grad

        def leaves(w_rows, grad_rows):  # views of w [..., D] per parameter, each accumulating into its view of grad
            out = [v.detach().requires_grad_() for v in flat.views(w_rows)]
            for leaf, g in zip(out, flat.views(grad_rows)):
                leaf.grad = g
            return out

        self.batched = leaves(w, grad)  # [g, *shape] each
        self.each = [leaves(w[c], grad[c]) for c in range(w.shape[0])]  # per chain, [*shape] each
        # One vmapped forward for all chains, then one plain backward of the summed loss: the chains do not
        # interact, so d(sum_c L_c)/dw[c] = dL_c/dw[c]. Measured ~25% faster than vmap(grad(loss)) on CPU,
        # where torch.func's grad transform adds its own per-op overhead.
        self.vmapped = vmap(flat.loss, in_dims=(0, None))  # ([g, *shape] per parameter, batch) -> [g]

    @staticmethod
    def _mean(loss_of: Callable, leaves: list[torch.Tensor], grad: torch.Tensor, batches: list) -> torch.Tensor:
        """loss_of(leaves, batch) averaged over the micro-batches; its gradient accumulated into grad [..., D]."""
        grad.zero_()
        k, total = len(batches), None
        with warnings.catch_warnings():  # a chain's view of a [g, D] buffer is not dense, hence "may impair
            # performance": it does not (the gradient accumulates in place either way), and the alternative is a copy
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            for batch in batches:
                loss = loss_of(leaves, batch)  # [g] or []
                loss = loss / k if k > 1 else loss
                loss.sum().backward(inputs=leaves)
                total = loss.detach() if total is None else total + loss.detach()
        return total

    def vmap(self, batches: list) -> torch.Tensor:
        return self._mean(self.vmapped, self.batched, self.grad, batches)

    def loop(self, batches: list, same: bool = False) -> torch.Tensor:
        """same: every chain is at the same point (step 0, all at w*), so chain 0's loss and gradient serve all of
        them: the numbers each chain's own pass would give, one forward/backward instead of g."""
        losses = [self._mean(self.flat.loss, self.each[c], self.grad[c], batches)
                  for c in range(1 if same else self.w.shape[0])]
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


# What a chain's noise is, stored with every result: a file whose rows drew other noise cannot be continued with this.
NOISE_STREAMS = "per chain: torch generator seeded by numpy SeedSequence([seed, chain]), drawn in slices of 2^20"


def chain_seed(seed: int, chain: int) -> int:
    """The seed of chain `chain`'s noise: an independent stream per chain (NumPy's SeedSequence hashing of the pair),
    so that a chain draws the same noise whatever runs beside it: any chain grouping, any number of processes."""
    return int(np.random.SeedSequence([seed, chain]).generate_state(1, np.uint64)[0])


def free_memory(device: torch.device) -> Optional[int]:
    """Bytes the device can still give: CUDA's free memory, or the RAM Linux calls available; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# "auto" chain groups take at most this share of the free memory for the chains' [g, D] state
CHAIN_MEMORY_SHARE = 0.5


def chain_group(config: SGLDConfig, num_params: int, device: torch.device) -> int:
    """How many chains run at once: config.chain_group, else as many as CHAIN_MEMORY_SHARE of the free memory holds
    (w, its gradient and, when on, MALA's pair vector and RMSProp's V and G: [D] each per chain). The numbers do not
    depend on it. Activations are not counted; on CUDA a group that runs out of memory is halved (run_chains)."""
    if config.chain_group is not None:
        return min(config.chains, config.chain_group)
    free = free_memory(device)
    if free is None:
        return config.chains
    copies = 2 + (config.mala_period > 0) + 2 * (config.sampler == "rmsprop")
    per_chain = copies * num_params * torch.tensor([], dtype=config.state_dtype).element_size()
    return max(1, min(config.chains, int(CHAIN_MEMORY_SHARE * free // per_chain)))


# The update runs over w in slices of this many coordinates per chain, so that its scratch ([g, CHUNK] each: w − w*,
# the noise, a product) stays small beside a 100M-parameter model's [g, D] state.
CHUNK = 1 << 20


def run_chains(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    config: SGLDConfig,
    schedule: torch.Tensor,
    progress: Optional[Callable[[int, int], None]] = None,
    per_chain: Optional[dict[str, torch.Tensor]] = None,
    groups: Optional[list[Params]] = None,
    own: bool = False,
) -> ChainTrace:
    """Sample `config.chains` SGLD chains around the model's current parameters.

    `model` must already be on the sampling device and dtype, in eval mode; `data` on the same device;
    `config.nbeta` resolved; `schedule` [steps, batch] the minibatch indices of every step (data.batch_schedule).
    `progress(done_steps, total_steps)` is called now and then.
    `per_chain`: optional {"lr", "localization", "nbeta"} -> [chains] values overriding the config's, so that
    one run samples a grid of hyperparameters, a group of chains per grid point (calibrate.py).
    `groups`: components (each a `params`, in place of config.params) that sample the same parameters, each at its
    own coordinates: the chains split into len(groups) consecutive groups, one per component, and chain i of a
    component draws the noise chain i of a run of that component alone draws, so each reads as that run would.
    `own`: the model is a private copy, whose parameters may become views of the chains' w* (FlatModel).
    The chains run config.chain_group at a time (chain_group()): each chain's noise is its own stream and every chain
    sees the same minibatches, so the grouping changes the memory used, not the numbers.
    """
    device = next(model.parameters()).device
    named = list(model.named_parameters())
    selected = [select(named, p) for p in (groups or [config.params])]  # per group, per parameter: None/True/mask
    active = [m is not None for m in selected[0]]
    if any([m is not None for m in sel] != active for sel in selected[1:]):
        raise ValueError("components sampled in one run must select the same parameters (at any coordinates)")
    flat = FlatModel(model, autocast_loss(loss_fn, config, device), active, own=own)
    del named  # with `own`, the tensors the model held are replaced: let them go
    C, D, T = config.chains, flat.w0.numel(), config.steps
    if C % len(selected):
        raise ValueError(f"{C} chains do not split into {len(selected)} equal groups")
    per_component = C // len(selected)
    # refined LLC: the drift and the noise of the coordinates not sampled are zeroed, so they never leave w*
    masks = [flat.mask([m for m, a in zip(sel, active) if a]) for sel in selected]  # each [D] or None
    hyper = {"lr": config.lr, "localization": config.localization, "nbeta": float(config.nbeta)}
    if per_chain:  # [C, 1] columns broadcast over the parameters; plain floats otherwise (cheaper)
        hyper = {name: torch.as_tensor(per_chain.get(name, v), dtype=flat.w0.dtype, device=device)
                 .reshape(-1, 1).expand(C, 1).contiguous() for name, v in hyper.items()}
    pair_steps = [t for t in range(T - 1) if config.mala_period and t % config.mala_period == 0]
    loss_trace = torch.full((C, T), float("nan"), device=device, dtype=flat.w0.dtype)
    mala = torch.full((C, len(pair_steps)), float("nan"), device=device, dtype=flat.w0.dtype)

    notes: list[str] = []
    method = config.method
    if method == "auto":
        method = auto_method(D, C, device)
        notes.append(f"method auto: {method} ({C} chains × {D} parameters on {device.type})")
    g = chain_group(config, D, device)
    if g < C:
        notes.append(f"chains run {g} at a time (chain_group)")

    start, first = time.perf_counter(), 0
    while first < C:
        ids = list(range(first, min(C, first + g)))

        def report(t: int, done: int = first, n: int = len(ids)) -> None:  # in steps of the whole run
            if progress is not None:
                progress((done * T + n * t) // C, T)

        # each component's mask [D] and the rows of the block it masks (chains are consecutive per component)
        parts = [(slice(max(first, i * per_component) - first, min(ids[-1] + 1, (i + 1) * per_component) - first),
                  masks[i]) for i in range(ids[0] // per_component, ids[-1] // per_component + 1)
                 if masks[i] is not None]
        block = _Block(flat, config, ids, [chain_seed(config.seed, c % per_component) for c in ids], parts,
                       {name: v[ids] if isinstance(v, torch.Tensor) else v for name, v in hyper.items()}, pair_steps)
        try:
            method = block.run(data, schedule, method, loss_trace, mala, notes, report)
        except torch.cuda.OutOfMemoryError:
            if config.chain_group is not None or g == 1:
                raise
            del block
            torch.cuda.empty_cache()
            g = max(1, g // 2)  # the chains of the block start again, as they would have run: same numbers
            notes.append(f"out of memory: chains run {g} at a time")
            continue
        first += len(ids)
    _sync(device)
    return ChainTrace(
        loss=loss_trace.cpu(),
        mala=mala.cpu(),
        mala_step=torch.tensor(pair_steps, dtype=torch.long),
        method=method,
        notes=notes,
        seconds=time.perf_counter() - start,
    )


class _Block:
    """The state of g chains sampled together ([g, D] each: w, its gradient; MALA's pair vector and RMSProp's V and G
    when on) and their T steps."""

    def __init__(self, flat: FlatModel, config: SGLDConfig, ids: list[int], seeds: list[int],
                 masks: list[tuple[slice, torch.Tensor]], hyper: dict, pair_steps: list[int]):
        w0, g = flat.w0, len(ids)  # [D]
        self.flat, self.config, self.ids, self.masks, self.pair_steps = flat, config, ids, masks, pair_steps
        self.lr, self.gamma, self.nbeta = hyper["lr"], hyper["localization"], hyper["nbeta"]  # floats or [g, 1]
        self.sqrt_lr = self.lr.sqrt() if isinstance(self.lr, torch.Tensor) else math.sqrt(self.lr)
        self.gens = [torch.Generator(device=w0.device).manual_seed(s) for s in seeds]
        self.w = w0.expand(g, -1).clone()  # [g, D]
        self.grad = torch.empty_like(self.w)  # [g, D]
        self.pair = torch.empty_like(self.w) if pair_steps else None  # [g, D] MALA's 2(u_t − ξ_t), see step()
        rms = config.sampler == "rmsprop"
        self.square_avg = torch.zeros_like(self.w) if rms else None  # [g, D] V
        self.precond = torch.ones_like(self.w) if rms else None  # [g, D] G
        n = min(w0.numel(), CHUNK)
        self.scratch = [torch.empty(g, n, dtype=w0.dtype, device=w0.device) for _ in range(3)]  # [g, n] each

    def run(self, data: Data, schedule: torch.Tensor, method: str, loss_trace: torch.Tensor, mala: torch.Tensor,
            notes: list[str], report: Callable[[int], None]) -> str:
        """All T steps of the block's chains into their rows of loss_trace [C, T] and mala [C, pairs]; returns the
        method used (the loop when vmap failed)."""
        config, T, rows = self.config, self.config.steps, slice(self.ids[0], self.ids[-1] + 1)
        paths = _GradientPaths(self.flat, self.w, self.grad)
        pair_index, energy = 0, None
        for t in range(T):
            batch = [take(data, idx) for idx in schedule[t].chunk(config.grad_accum)]  # k micro-batches
            if method == "vmap":
                try:
                    loss = paths.vmap(batch)
                except Exception as e:  # models that cannot be vmapped: data-dependent control flow, .item(), ...
                    notes.append(f"vmap failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); used the loop")
                    method = "loop"
                    loss = paths.loop(batch, same=t == 0)
            else:  # at step 0 every chain is at w* on the same batch: one pass serves all (g - 1 of g T passes saved)
                loss = paths.loop(batch, same=t == 0)
            loss_trace[rows, t] = loss.detach()

            pairs = self.pair_steps
            opens = pair_index < len(pairs) and t == pairs[pair_index]
            closes = pair_index < len(pairs) and t == pairs[pair_index] + 1
            sums = self.step(t, opens, closes)
            if opens or closes:  # MALA (Roberts & Tweedie 1996), on one minibatch potential: step t+1 reuses t's batch
                e = _col(self.nbeta) * loss.detach() + _col(self.gamma) * sums[0]  # U = nβ L_m + γ/2 |w − w*|²
                if opens:
                    energy, constant = e, sums[1]
                else:  # log α = −ΔU + log q(w_t | w_t+1) − log q(w_t+1 | w_t)
                    log_alpha = energy - e - 0.5 * (constant + sums[1])
                    mala[rows, pair_index] = torch.exp(torch.clamp(log_alpha, max=0.0)).to(mala.dtype)
                    pair_index += 1

            # One host sync every 64 steps: stop early once every chain has diverged.
            if (t + 1) % 64 == 0 or t == T - 1:
                report(t + 1)
                if t < T - 1 and not torch.isfinite(loss_trace[rows, t]).any():
                    notes.append(f"chains {self.ids[0]}-{self.ids[-1]} all diverged; their sampling stopped after "
                                 f"step {t}")
                    break
        return method

    def step(self, t: int, opens: bool, closes: bool) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """One SGLD update of the block, slice by slice of CHUNK coordinates, from the gradient in self.grad.

        Lau et al. 2023 (arXiv 2308.12108) eq. 8: Δw = ε/2 (−nβ ∇L_m(w) − γ (w − w*)) + N(0, ε);
        preconditioned (Li et al. 2016): Δw = ε/2 G (−nβ ∇L_m(w) − γ (w − w*)) + N(0, ε G).
        At a MALA pair's steps, returns (|w − w*|²/2, a sum over coordinates) [g] each, in float64: with
        u = sqrt(ε G)/2 ∇U the drift in units of the proposal's sd and ξ the step's noise, log q(w_t | w_t+1) −
        log q(w_t+1 | w_t) = −½ Σ (u_t + u_t+1)(u_t + u_t+1 − 2ξ_t) = −½ [Σ u_t(u_t − 2ξ_t) + Σ u_t+1 (2u_t − 2ξ_t +
        u_t+1)]: the step that opens the pair keeps 2(u_t − ξ_t) [g, D] and the first sum, the step that closes it
        adds the second. One [g, D] vector instead of the drift and the noise, and no difference of two O(D) numbers.
        """
        config, w0, w, grad = self.config, self.flat.w0, self.w, self.grad
        per_chain = isinstance(self.lr, torch.Tensor)
        adapt = self.square_avg is not None and t < (max(config.burnin, 1) if config.rmsprop_freeze else config.steps)
        half_sq = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if opens or closes else None
        pair_sum = torch.zeros_like(half_sq) if opens or closes else None
        for a in range(0, w0.numel(), CHUNK):
            b = min(a + CHUNK, w0.numel())
            n = b - a
            wc, gc = w[:, a:b], grad[:, a:b]  # [g, n]
            offset, noise, tmp = (s[:, :n] for s in self.scratch)
            torch.sub(wc, w0[a:b], out=offset)
            if half_sq is not None:
                half_sq += 0.5 * torch.square(offset, out=tmp).sum(1).double()
            if adapt:  # RMSProp's V from the raw minibatch gradient, G = 1/(eps + sqrt(V̂)), V̂ bias-corrected as in
                # Adam (Kingma & Ba 2015) so that a short burn-in gives the scale; adapted in burn-in, then frozen:
                # with a constant G the chain leaves the tempered posterior invariant with no correction term
                alpha = config.rmsprop_alpha
                self.square_avg[:, a:b].mul_(alpha).addcmul_(gc, gc, value=1 - alpha)
                torch.div(self.square_avg[:, a:b], 1 - alpha ** (t + 1), out=self.precond[:, a:b])
                self.precond[:, a:b].sqrt_().add_(config.rmsprop_eps).reciprocal_()
            # ∇U(w), U = nβ L_m + γ/2 |w − w*|², in place of the gradient; fused ops (each pass over [g, n] counts)
            drift = gc.mul_(self.nbeta).addcmul_(offset, self.gamma) if per_chain else \
                gc.mul_(self.nbeta).add_(offset, alpha=self.gamma)
            for row, gen in zip(noise, self.gens):  # each chain's own stream (normal_: randn's numbers, a third of
                row.normal_(generator=gen)  # its per-call cost, which 1024 chains of a 2-parameter model pay each step)
            for rows, mask in self.masks:  # a refined LLC's chain lives in its component's coordinates only
                drift[rows].mul_(mask[a:b])
                noise[rows].mul_(mask[a:b])
            sqrt_g = torch.sqrt(self.precond[:, a:b], out=tmp) if self.precond is not None else None
            if opens or closes:
                u = torch.mul(drift, self.sqrt_lr / 2, out=offset)  # offset is spent; u [g, n]
                if sqrt_g is not None:
                    u.mul_(sqrt_g)
                if opens:
                    pair = torch.sub(u, noise, out=self.pair[:, a:b]).mul_(2)
                    pair_sum += (u * (pair - u)).sum(1).double()  # u (u − 2ξ)
                else:
                    pair_sum += (u * (self.pair[:, a:b] + u)).sum(1).double()
            if sqrt_g is not None:
                drift.mul_(self.precond[:, a:b])
                noise.mul_(sqrt_g)
            if per_chain:
                wc.addcmul_(drift, self.lr, value=-0.5).addcmul_(noise, self.sqrt_lr)
            else:
                wc.add_(drift, alpha=-self.lr / 2).add_(noise, alpha=self.sqrt_lr)
        return (half_sq, pair_sum) if opens or closes else None
