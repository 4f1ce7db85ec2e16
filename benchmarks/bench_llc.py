"""Wall time of one LLC estimate three ways, in one process: a bare sequential SGLD loop, slt-probe, devinterp.

    python benchmarks/bench_llc.py                 # CPU workloads (a) and (b)
    python benchmarks/bench_llc.py --device cuda   # workload (c): the same on a GPU
    python benchmarks/bench_llc.py --only b --dln-batch 32   # (b) with another batch size

(a) the 2-layer attention-only transformer (d_model 128, 4 heads, ctx 64, vocab 512; 270k params),
    4 chains x 100 draws, batch 32 -- per-step work dominates.
(b) a small deep linear network (9k params), 16 chains x 500 draws, batch 100 -- per-step overhead
    dominates. devinterp's llc() takes language-model token datasets only, so it is absent here.
Each way runs --repeats times, interleaved, and the fastest run counts: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
import warnings

import torch

from slt_probe import SGLDConfig, estimate_llc
from slt_probe.demo.model import attn_only
from slt_probe.engine.data import lm_cross_entropy, take
from slt_probe.engine.dln import deep_linear_network, mse



def load_attn_only():
    """The demo's attention-only transformer factory (models/attn_only.py points at the same code)."""
    return attn_only


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


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(name, ways, repeats, device):
    best, extra = {}, {}
    for _ in range(repeats):
        for way, fn in ways.items():
            sync(device)
            seconds, out = timed(fn)
            sync(device)
            if seconds < best.get(way, float("inf")):
                best[way] = seconds
                if out is not None:
                    extra[way] = out
    floor = best["bare loop"]
    print(f"\n{name}")
    print(f"  {'way':<28}{'wall s':>9}{'x bare loop':>13}")
    for way, seconds in best.items():
        print(f"  {way:<28}{seconds:>9.2f}{seconds / floor:>13.3f}")
    for way, r in extra.items():
        print(f"  {way}: sampler alone {r.seconds:.2f} s ({r.seconds / floor:.3f}x), method {r.diagnostics.method}, "
              f"λ̂ {r.llc_mean:.3f} ± {r.llc_se:.3f}; {'; '.join(r.diagnostics.notes)}")
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", choices=["a", "b"], default=None)
    ap.add_argument("--dln-batch", type=int, default=100, help="batch size of workload (b)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")

    if args.only in (None, "a"):
        model = load_attn_only()(vocab_size=512, n_ctx=64, d_model=128, n_heads=4).to(device)
        # [N, 64]: devinterp feeds all 64 tokens to the model (n_ctx 64) and scores 63 of them, as we do
        data = torch.randint(0, 512, (1024, 64), device=device)
        cfg = SGLDConfig(lr=1e-4, localization=100.0, nbeta=30.0, chains=4, draws=100, burnin=0, batch_size=32,
                         device=str(device))
        for p in model.parameters():
            p.requires_grad_(True)
        ways = {
            "bare loop": lambda: bare_loop(model, data, lm_cross_entropy, cfg, device),
            "slt-probe (auto)": lambda: estimate_llc(model, data, config=cfg),
            "slt-probe (vmap)": lambda: estimate_llc(model, data, config=SGLDConfig(**{**cfg.to_dict(), "method": "vmap"})),
            "devinterp 2.0.1": lambda: devinterp_llc(model, data, cfg, device),
        }
        run(f"(a) attention-only transformer, {sum(p.numel() for p in model.parameters())} params, "
            f"{cfg.chains} chains x {cfg.draws} draws, batch {cfg.batch_size}", ways, args.repeats, device)

    if args.only in (None, "b"):
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
        }
        run(f"(b) deep linear network {widths}, {sum(p.numel() for p in model.parameters())} params, "
            f"{cfg.chains} chains x {cfg.draws} draws, batch {cfg.batch_size}", ways, args.repeats, device)


if __name__ == "__main__":
    main()
