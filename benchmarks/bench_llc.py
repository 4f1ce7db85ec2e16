"""Wall time of one LLC estimate in one process: a bare sequential SGLD loop, slt-probe, devinterp, and the
peer canonical-interp (optional); then the DLN accuracy of slt-probe and canonical-interp at the same settings.

    python benchmarks/bench_llc.py                 # workloads (a), (b) and (c), then the DLN accuracy
    python benchmarks/bench_llc.py --device cuda   # the same on a GPU
    python benchmarks/bench_llc.py --only a c --threads 2 1 --repeats 3 --no-peers   # slt-probe against the floor
    python benchmarks/bench_llc.py --only b --dln-batch 32   # (b) with another batch size
    python benchmarks/bench_llc.py --only dln --dln-seeds 4  # the accuracy alone, over more sampler seeds

(a) the 2-layer attention-only transformer (d_model 128, 4 heads, ctx 64, vocab 512; 270k params),
    4 chains x 100 draws, batch 32, on 1024 random sequences of 64 tokens (--lm-samples) -- per-step work dominates.
(b) a small deep linear network (9k params), 16 chains x 500 draws, batch 100 -- per-step overhead
    dominates. devinterp's llc() takes language-model token datasets only, so it is absent here.
(c) a GPT-style transformer (gpt_sdpa: 3 pre-LayerNorm blocks of F.scaled_dot_product_attention and a 4x GELU MLP,
    biases everywhere, d_model 128, 4 heads, ctx 64, vocab 256; 669k params), the same settings and data size as (a). SDPA has no
    vmap batching rule on the CPU, so its vmap path falls back to a per-sample loop inside the op.
--threads runs the timed workloads at each torch thread count in turn (default: torch's own, the cores).
Each way runs --repeats times, interleaved (each round in a rotated order), and the fastest run counts: the machines
are shared and noisy. "paired" is the median over rounds of the ratio to the bare loop within a round.
"1st run" is the first of them: for canonical-interp it includes torch.compile's compilation (its default,
mode "reduce-overhead"; its SGLD update is compiled even with compile=False). Every way runs the same number of
chain-steps (chains x (burn-in + draws)), so "x bare loop" is also the ratio of time per chain-step.
(dln) λ̂ against Aoyagi's λ on slt_probe.engine.dln.dln_problem(widths) at the problem's own settings
(ε 5e-7, γ 1, nβ n/log n, 4 chains x 1000 draws after 200 burn-in, batch 500), slt-probe and canonical-interp
alike, over --dln-seeds sampler seeds (devinterp's llc() takes language-model token datasets only).

canonical-interp (https://github.com/sbaumohl/canonical-interp, "a lean, efficient LLC estimator; rewrite of
devinterp") is optional: `pip install canonical-interp==0.2.7` (the `bench` extra). 0.2.x declares
Requires-Python >= 3.12 because it imports itertools.batched (3.12+, used only to split chains across several
devices); on Python 3.11 install it with `--no-deps --ignore-requires-python` and this script supplies
itertools.batched before importing it. Without it the script prints a note and carries on.
Mapping (canonical-interp LLCEstimator <- SGLDConfig): learning_rate <- lr (ε), localization <- localization (γ),
nbeta <- nbeta (nβ), chains, draws, burnin_steps <- burnin, steps_bw_draws 1; its update is the same
Δw = -ε/2 (nβ ∇L_m + γ (w - w*)) + N(0, ε) and its λ̂ = nβ (mean draw loss - L_n(w*)), L_n over the whole loader.
Its data is a shuffled DataLoader with the same batch size, cycled (itertools.cycle replays the first epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import logging
import math
import sys
import tempfile
import time
import warnings
from importlib import metadata

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slt_probe import SGLDConfig, estimate_llc
from slt_probe.demo.model import attn_only
from slt_probe.engine.data import lm_cross_entropy, take
from slt_probe.engine.dln import deep_linear_network, dln_problem, mse

PEER, PEER_VERSION = "canonical-interp", "0.2.7"


def load_attn_only():
    """The demo's attention-only transformer factory (models/attn_only.py points at the same code)."""
    return attn_only


class _GPTBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv, self.proj = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.fc, self.fc_out = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        B, T, C = x.shape  # batch, seq, d_model
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in self.qkv(self.ln1(x)).split(C, dim=-1))  # each (B, nh, T, dh)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class GPTSdpa(nn.Module):
    """Workload (c): token + position embeddings, pre-LayerNorm blocks with SDPA and an MLP, a final LayerNorm."""

    def __init__(self, vocab_size=256, n_ctx=64, d_model=128, n_heads=4, n_layers=3):
        super().__init__()
        self.embed, self.pos_embed = nn.Embedding(vocab_size, d_model), nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList([_GPTBlock(d_model, n_heads) for _ in range(n_layers)])
        self.ln_f, self.unembed = nn.LayerNorm(d_model), nn.Linear(d_model, vocab_size)
        self.register_buffer("pos", torch.arange(n_ctx), persistent=False)

    def forward(self, tokens):  # (B, T) -> (B, T, vocab)
        x = self.embed(tokens) + self.pos_embed(self.pos[: tokens.shape[-1]])
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_f(x))


def gpt_sdpa(**kwargs) -> GPTSdpa:
    return GPTSdpa(**kwargs)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model, data, loss_fn, cfg: SGLDConfig, device):
    """The floor: one chain after another, autograd forward+backward and an in-place SGLD update, nothing else."""
    n = data.shape[0] if isinstance(data, torch.Tensor) else data[0].shape[0]
    gen = torch.Generator(device=device).manual_seed(0)
    for _ in range(cfg.chains):
        m = copy.deepcopy(model)
        params = list(m.parameters())
        init = [p.detach().clone() for p in params]
        losses = []
        for _ in range(cfg.draws):
            idx = torch.randint(0, n, (cfg.batch_size,), device=device, generator=gen)
            loss = loss_fn(m, take(data, idx))
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g, p0 in zip(params, grads, init):
                    drift = g.mul(cfg.nbeta).add_(p - p0, alpha=cfg.localization)
                    p.add_(drift, alpha=-cfg.lr / 2).add_(torch.randn(p.shape, device=device, generator=gen),
                                                          alpha=math.sqrt(cfg.lr))
            losses.append(loss.detach())
        torch.stack(losses).cpu()


def devinterp_llc(model, data, cfg: SGLDConfig, device):
    from datasets import Dataset
    from devinterp.slt.llc import llc

    dataset = Dataset.from_dict({"input_ids": data.cpu().numpy()}).with_format("torch")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llc(model, dataset, observables={}, lr=cfg.lr, n_beta=cfg.nbeta, localization=cfg.localization,
            num_chains=cfg.chains, num_draws=cfg.draws, batch_size=cfg.batch_size, init_seed=cfg.seed,
            device=str(device), output_path=f"{tmp}/s.zarr")


def load_peer():
    """(version, LLCEstimator) of canonical-interp, or None after a one-line note."""
    try:
        version = metadata.version(PEER)
    except metadata.PackageNotFoundError:
        print(f"note: {PEER} is not installed, so it is left out: pip install {PEER}=={PEER_VERSION} "
              f"(Python >= 3.12; on 3.11 add --no-deps --ignore-requires-python)")
        return None
    if not hasattr(itertools, "batched"):  # Python < 3.12: the one 3.12 name canonical-interp imports
        def batched(iterable, n):
            it = iter(iterable)
            while chunk := tuple(itertools.islice(it, n)):
                yield chunk

        itertools.batched = batched
    try:
        from canonical_interp import LLCEstimator
    except Exception as e:
        print(f"note: {PEER} {version} is installed but does not import ({type(e).__name__}: {e}), so it is left out")
        return None
    logging.getLogger("canonical_interp").setLevel(logging.ERROR)  # its advice on burn-in, γ and DataLoaders
    if version != PEER_VERSION:
        print(f"note: {PEER} {version} is installed, not {PEER_VERSION}: its figures are labelled {version}")
    return version, LLCEstimator


def peer_llc(LLCEstimator, model, data, cfg: SGLDConfig, device, *, criterion, unpack, compile):
    """canonical-interp's estimate at cfg's settings: (mean λ̂, s.e. across chains)."""
    tensors = data if isinstance(data, tuple) else (data,)
    loader = DataLoader(TensorDataset(*(t.cpu() for t in tensors)), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=True, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))
    est = LLCEstimator(draws=cfg.draws, chains=cfg.chains, burnin_steps=cfg.burnin, steps_bw_draws=1,
                       learning_rate=cfg.lr, localization=cfg.localization, nbeta=cfg.nbeta)
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar for L_n(w*) cannot be turned off
        est.estimate_llc(model, loader, criterion_fn=criterion, unpack_fn=unpack, devices=device, seed=cfg.seed,
                         compile=compile, show_progress=False)
    llcs = est.get_metrics()["llcs"].double()
    se = float(llcs.std() / math.sqrt(len(llcs))) if len(llcs) > 1 else 0.0
    return float(llcs.mean()), se


def peer_ways(peer, model, data, cfg, device, *, criterion, unpack=None):
    """The peer's ways for run(): its default (torch.compile, mode "reduce-overhead") and compile=False."""
    if peer is None:
        return {}
    version, LLCEstimator = peer

    def way(compile):
        def fn():
            peer_llc(LLCEstimator, model, data, cfg, device, criterion=criterion, unpack=unpack, compile=compile)
        return fn

    return {f"{PEER} {version}": way("reduce-overhead"), f"{PEER} {version} (compile=False)": way(False)}


def lm_criterion(logits, targets):
    """lm_cross_entropy's loss in canonical-interp's form (logits, targets); unpack_lm splits the tokens."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def unpack_lm(batch):
    tokens = batch[0]
    return tokens[:, :-1], tokens[:, 1:]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(name, ways, repeats, device, chain_steps):
    """Each way `repeats` times; round r runs the ways in an order rotated by r, so that none always runs first (on
    a shared machine the load drifts within a round). Prints the fastest run of each way over the bare loop's, and
    the median over rounds of the ratio within a round (drift between rounds cancels in it)."""
    best, first, extra, failed = {}, {}, {}, {}
    rounds = []  # {way: seconds} per round
    names = list(ways)
    for r in range(repeats):
        times = {}
        for way in names[r % len(names):] + names[: r % len(names)]:
            if way in failed:
                continue
            sync(device)
            try:
                seconds, out = timed(ways[way])
            except Exception as e:  # a peer that cannot run this workload: say so, keep the others
                failed[way] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                continue
            sync(device)
            times[way] = seconds
            first.setdefault(way, seconds)
            if seconds < best.get(way, float("inf")):
                best[way] = seconds
                if out is not None:
                    extra[way] = out
        rounds.append(times)
    floor = best["bare loop"]
    print(f"\n{name}")
    print(f"  {'way':<40}{'wall s':>9}{'ms/chain-step':>15}{'x bare loop':>13}{'paired':>9}{'1st run s':>11}")
    for way in (w for w in names if w in best):
        seconds = best[way]
        paired = float(np.median([t[way] / t["bare loop"] for t in rounds if way in t and "bare loop" in t]))
        print(f"  {way:<40}{seconds:>9.2f}{1e3 * seconds / chain_steps:>15.3f}{seconds / floor:>13.3f}{paired:>9.3f}"
              f"{first[way]:>11.2f}")
    for way, why in failed.items():
        print(f"  {way}: failed ({why})")
    for way, r in extra.items():
        print(f"  {way}: sampler alone {r.seconds:.2f} s ({r.seconds / floor:.3f}x), the rest (copy, L_n(w*), "
              f"diagnostics) {best[way] - r.seconds:.2f} s ({(best[way] - r.seconds) / floor:.3f}x), method "
              f"{r.diagnostics.method}, λ̂ {r.llc_mean:.3f} ± {r.llc_se:.3f}; {'; '.join(r.diagnostics.notes)}")
    return best


def dln_accuracy(widths_list, seeds, peer, device):
    """λ̂ of slt-probe and the peer beside Aoyagi's λ, at each problem's own settings, per sampler seed."""
    print(f"\n(dln) λ̂ against Aoyagi's λ, dln_problem(widths) at its own settings, sampler seeds 0..{seeds - 1}")
    if peer is not None:
        print(f"  ({PEER} with compile=False: torch.compile changes its time, not its λ̂)")
    ways = ["slt-probe"] + ([f"{PEER} {peer[0]}"] if peer is not None else [])
    rel = {way: [] for way in ways}
    for widths in widths_list:
        problem = dln_problem(widths)
        cfg = SGLDConfig(**{**problem.config.resolved(problem.data[0].shape[0]).to_dict(), "device": str(device)})
        print(f"  {problem.name}: λ {problem.llc:g}; ε {cfg.lr:g}, γ {cfg.localization:g}, nβ {cfg.nbeta:.1f}, "
              f"{cfg.chains} chains x {cfg.draws} draws after {cfg.burnin}, batch {cfg.batch_size}")
        for seed in range(seeds):
            c = SGLDConfig(**{**cfg.to_dict(), "seed": seed})
            row = {}
            r = estimate_llc(problem.model, problem.data, loss_fn=mse, config=c)
            row["slt-probe"] = (r.llc_mean, r.llc_se)
            if peer is not None:
                row[ways[1]] = peer_llc(peer[1], problem.model, problem.data, c, device, criterion=F.mse_loss,
                                        unpack=None, compile=False)
            cells = []
            for way, (mean, se) in row.items():
                rel[way].append((mean - problem.llc) / problem.llc)
                cells.append(f"{way} {mean:.3f} ± {se:.3f} ({100 * rel[way][-1]:+.1f}%)")
            print(f"    seed {seed}: " + ";  ".join(cells))
    for way, errs in rel.items():
        errs = np.array(errs)
        print(f"  {way}: mean relative error {100 * errs.mean():+.1f}%, max |relative error| "
              f"{100 * np.abs(errs).max():.1f}% over {len(errs)} estimates")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", nargs="+", choices=["a", "b", "c", "dln"], default=None,
                    help="the workloads to run (default: all)")
    ap.add_argument("--threads", nargs="+", type=int, default=None,
                    help="torch thread counts to time (a), (b) and (c) at, in turn (default: torch's own)")
    ap.add_argument("--no-peers", action="store_true", help="time the bare loop and slt-probe only")
    ap.add_argument("--lm-samples", type=int, default=1024,
                    help="sequences in the data of (a) and (c): L_n(w*) covers the distinct ones the draws see, "
                         "all 1024 by default; with many more, about 0.9 x draws x batch")
    ap.add_argument("--dln-batch", type=int, default=100, help="batch size of workload (b)")
    ap.add_argument("--dln-widths", nargs="+", default=["8,6,4,8", "10,12,6,10"],
                    help="DLN widths of the accuracy check, each comma-separated")
    ap.add_argument("--dln-seeds", type=int, default=2, help="sampler seeds of the accuracy check")
    args = ap.parse_args()
    only = set(args.only or ["a", "b", "c", "dln"])
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"Python {sys.version.split()[0]}")
    peer = None if args.no_peers else load_peer()
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        timings(only, device, peer, args, threads)
    if "dln" in only:
        dln_accuracy([[int(w) for w in ws.split(",")] for ws in args.dln_widths], args.dln_seeds, peer, device)


def lm_workload(label, model, data, args, device, peer, threads):
    """(a) and (c): a language model on token ids [N, 64], 4 chains x 100 draws, batch 32."""
    cfg = SGLDConfig(lr=1e-4, localization=100.0, nbeta=30.0, chains=4, draws=100, burnin=0, batch_size=32,
                     device=str(device))
    for p in model.parameters():
        p.requires_grad_(True)
    ways = {
        "bare loop": lambda: bare_loop(model, data, lm_cross_entropy, cfg, device),
        "slt-probe (auto)": lambda: estimate_llc(model, data, config=cfg),
        "slt-probe (vmap)": lambda: estimate_llc(model, data, config=SGLDConfig(**{**cfg.to_dict(), "method": "vmap"})),
    }
    if not args.no_peers:
        ways["devinterp 2.0.1"] = lambda: devinterp_llc(model, data, cfg, device)
        ways.update(peer_ways(peer, model, data, cfg, device, criterion=lm_criterion, unpack=unpack_lm))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's "performance drop" warning, once per op per step
        run(f"{label}, {sum(p.numel() for p in model.parameters())} params, {cfg.chains} chains x {cfg.draws} draws, "
            f"batch {cfg.batch_size}, {data.shape[0]} sequences, {threads} threads", ways, args.repeats, device, cfg.chains * cfg.steps)


def timings(only, device, peer, args, threads):
    if "a" in only:
        torch.manual_seed(0)
        model = load_attn_only()(vocab_size=512, n_ctx=64, d_model=128, n_heads=4).to(device)
        # [N, 64]: devinterp feeds all 64 tokens to the model (n_ctx 64) and scores 63 of them, as we do
        data = torch.randint(0, 512, (args.lm_samples, 64), device=device)
        lm_workload("(a) attention-only transformer", model, data, args, device, peer, threads)

    if "b" in only:
        torch.manual_seed(0)
        widths = [40, 50, 50, 50, 40]
        model = deep_linear_network(widths).to(device)
        x = torch.randn(10_000, widths[0], device=device)
        with torch.no_grad():
            data = (x, model(x))
        cfg = SGLDConfig(lr=1e-5, localization=1.0, nbeta=100.0, chains=16, draws=500, burnin=0,
                         batch_size=args.dln_batch, device=str(device))
        ways = {
            "bare loop": lambda: bare_loop(model, data, mse, cfg, device),
            "slt-probe (auto)": lambda: estimate_llc(model, data, loss_fn=mse, config=cfg),
            "slt-probe (loop)": lambda: estimate_llc(model, data, loss_fn=mse,
                                                     config=SGLDConfig(**{**cfg.to_dict(), "method": "loop"})),
            **peer_ways(peer, model, data, cfg, device, criterion=F.mse_loss),
        }
        run(f"(b) deep linear network {widths}, {sum(p.numel() for p in model.parameters())} params, "
            f"{cfg.chains} chains x {cfg.draws} draws, batch {cfg.batch_size}, {threads} threads", ways, args.repeats,
            device, cfg.chains * cfg.steps)

    if "c" in only:
        torch.manual_seed(0)
        model = gpt_sdpa(vocab_size=256, n_ctx=64, d_model=128, n_heads=4, n_layers=3).to(device)
        data = torch.randint(0, 256, (args.lm_samples, 64), device=device)
        lm_workload("(c) GPT-style transformer (SDPA, biases, LayerNorm)", model, data, args, device, peer, threads)



if __name__ == "__main__":
    main()
