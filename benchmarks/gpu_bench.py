"""The GPU check's figures (benchmarks/gpu_check.sh runs this after the CUDA tests).

    python benchmarks/gpu_bench.py                  # on a CUDA machine: ~3 min
    python benchmarks/gpu_bench.py --device cpu --small   # a dry run of the script itself, ~1 min on one thread

1. CUDA against the CPU on the demo model (random init, the demo's SGLD settings, 1024 random windows): λ̂ ± s.e. on
   each device and their difference in units of the combined s.e. Both take the same seed, hence the same
   minibatches; the noise comes from each device's own generator, so the two are independent estimates.
2. A GPT-2-sized model (transformers' GPT2Config() defaults: 124M parameters, random init; --small: 2 layers of
   width 64, vocabulary 512) on random tokens, 4 chains × (burn-in + draws), batch 8 × 128 tokens: chain-steps/s,
   tokens/s and peak CUDA memory for the bare loop (one chain after another, autograd and an in-place update: the
   floor), slt-probe's loop and vmap paths and its loop one chain at a time (--chain-group 1), and devinterp 2.0.1,
   in float32 and (bare loop and slt-probe) bf16 autocast.
   "× bare" is the time per chain-step over the bare loop's in the same precision.
3. Per-head refined λ̂ on the demo model (8 heads): one run per head against the heads of a layer batched in one
   run (estimate_components), each timed after a warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llc import bare_loop, devinterp_llc  # noqa: E402  (a sibling script, not a package)

from slt_probe import SGLDConfig, estimate_components, estimate_llc  # noqa: E402
from slt_probe.demo.pipeline import DemoConfig  # noqa: E402
from slt_probe.demo.train import TrainConfig, build_model  # noqa: E402
from slt_probe.engine.data import lm_cross_entropy  # noqa: E402
from slt_probe.inputs.heads import components  # noqa: E402


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> str:
    if device.type != "cuda":
        return "–"
    torch.cuda.synchronize(device)
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}"


def parity(device: torch.device) -> None:
    train = TrainConfig()
    torch.manual_seed(0)
    model = build_model(train)
    context = train.corpus.context
    data = torch.randint(0, train.model_kwargs()["vocab_size"], (1024, context + 1),
                         generator=torch.Generator().manual_seed(0))
    cfg = replace(DemoConfig().sgld, method="auto")
    out = {}
    for dev in ("cpu", device.type):
        start = time.perf_counter()
        out[dev] = (estimate_llc(model, data, config=replace(cfg, device=dev)), time.perf_counter() - start)
    (a, ta), (b, tb) = out["cpu"], out[device.type]
    z = (b.llc_mean - a.llc_mean) / math.hypot(a.llc_se, b.llc_se)
    print(f"demo model (random init), {cfg.chains} chains × {cfg.draws} draws: cpu λ̂ {a.llc_mean:.4f} ± {a.llc_se:.3f} "
          f"({ta:.1f} s), {device.type} λ̂ {b.llc_mean:.4f} ± {b.llc_se:.3f} ({tb:.1f} s, method {b.diagnostics.method}): "
          f"difference {z:+.2f} combined s.e.", flush=True)


def heads(device: torch.device) -> None:
    """Per-head refined λ̂ on the demo model: the 8 heads one by one against batched (a layer's heads in one run)."""
    train = TrainConfig()
    torch.manual_seed(0)
    model = build_model(train)
    data = torch.randint(0, train.model_kwargs()["vocab_size"], (1024, train.corpus.context + 1),
                         generator=torch.Generator().manual_seed(0))
    cfg = replace(DemoConfig().sgld, method="auto", device=device.type)
    parts = {c.name: c.params for c in components(model, "heads")}
    times = {}
    for name, fn in (("full LLC", lambda: estimate_llc(model, data, config=cfg)),
                     ("one by one", lambda: [estimate_llc(model, data, config=replace(cfg, params=p))
                                             for p in parts.values()]),
                     ("batched", lambda: estimate_components(model, data, parts, config=cfg))):
        fn()  # warm-up: CUDA context, kernels
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times[name] = time.perf_counter() - start
    print(f"\ndemo model, 8 heads on {device.type}: full LLC {times['full LLC']:.2f} s, heads one by one "
          f"{times['one by one']:.2f} s, batched {times['batched']:.2f} s: batched / one by one "
          f"{times['batched'] / times['one by one']:.2f}", flush=True)


def gpt2_model(small: bool):
    import transformers
    config = (transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=256) if small
              else transformers.GPT2Config())
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def throughput(device: torch.device, small: bool, draws: int, burnin: int) -> None:
    model = gpt2_model(small)
    n_params = sum(p.numel() for p in model.parameters())
    ctx, batch = 128, 8
    data = torch.randint(0, model.config.vocab_size, (512, ctx + 1), generator=torch.Generator().manual_seed(0))
    cfg = SGLDConfig(lr=1e-5, localization=100.0, nbeta=30.0, chains=4, draws=draws, burnin=burnin, batch_size=batch,
                     device=device.type, mala_every=10)
    chain_steps = cfg.chains * cfg.steps
    print(f"\nGPT-2-sized model: {n_params / 1e6:.1f}M parameters, {cfg.chains} chains × {cfg.steps} steps, batch "
          f"{batch} × {ctx} tokens, on {device}", flush=True)
    print("| way | precision | seconds | chain-steps/s | tokens/s | peak CUDA GB | × bare |")
    print("|---|---|---|---|---|---|---|")
    on_device = model.to(device)
    bare = {}

    def way(name, dtype, fn):
        peak_reset(device)
        start = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a peer that cannot run this model: say so, go on
            print(f"| {name} | {dtype} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | | |")
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        s = time.perf_counter() - start
        ratio = f"{s / bare[dtype]:.2f}" if dtype in bare and not name.startswith("bare") else "1.00"
        if name.startswith("bare"):
            bare[dtype] = s
        print(f"| {name} | {dtype} | {s:.1f} | {chain_steps / s:.1f} | {chain_steps * batch * ctx / s:.0f} | "
              f"{peak_gb(device)} | {ratio} |", flush=True)

    gpu_data = data.to(device)
    for dtype in ("float32", "bfloat16"):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()

        def bare_run(autocast=autocast):
            with autocast:  # the update stays float32: autocast casts only the forward's ops
                bare_loop(on_device, gpu_data, lm_cross_entropy, replace(cfg, draws=cfg.steps), device)

        way("bare loop", dtype, bare_run)
        for method in ("loop", "vmap"):
            way(f"slt-probe {method}", dtype,
                lambda m=method, d=dtype: estimate_llc(on_device, gpu_data, config=replace(cfg, method=m, dtype=d)))
        way("slt-probe loop, --chain-group 1", dtype,  # one chain at a time: the least memory, the same numbers
            lambda d=dtype: estimate_llc(on_device, gpu_data, config=replace(cfg, method="loop", dtype=d, chain_group=1)))
        if dtype == "float32":
            way("devinterp 2.0.1", dtype, lambda: devinterp_llc(on_device, gpu_data, replace(cfg, draws=cfg.steps),
                                                                  device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a 2-layer GPT-2 of width 64 instead of 124M (dry runs)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--burnin", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --small for a dry run")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    parity(device)
    heads(device)
    throughput(device, args.small, args.draws, args.burnin)


if __name__ == "__main__":
    main()
