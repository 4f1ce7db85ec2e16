"""Peak memory and time per chain-step of one LLC estimate on a GPT-2-sized model, against devinterp and a bare loop.

    python benchmarks/memory.py            # 124M parameters on the CPU: ~6 min on one thread
    python benchmarks/memory.py --small    # a 2-layer GPT-2 of width 64: a dry run of the script, ~30 s

The model is transformers' GPT2Config() (124M parameters, random init), saved as a Hugging Face folder and loaded
from it, as a walk would. Each way runs in its own process, so that its peak resident memory (ru_maxrss) is its own;
"extra" is that peak minus the resident memory once the model and the data are loaded. Settings are the same for all:
4 chains × (burn-in + draws) steps, batch 2 × 64 tokens (a CPU-sized pass; activations are small beside the
parameters, which is what the chain state is about). Ways:
  bare loop        one chain after another: a model copy, its w*, autograd.grad and an in-place update (the floor)
  devinterp 2.0.1  devinterp.slt.llc.llc, which samples the chains one after another
  slt-probe g=4    the four chains together ([4, D] state)
  slt-probe g=1    --chain-group 1: one chain at a time ([1, D] state)
  slt-probe walk g=1  the same as a walk runs it, on its own model (estimate_llc(inplace=True): no copy of the model)
Times are per chain-step, as × the bare loop's in the same run (the machine is shared: read the ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llc import bare_loop, devinterp_llc  # noqa: E402  (a sibling script, not a package)

from slt_probe import SGLDConfig, estimate_llc  # noqa: E402
from slt_probe.engine.data import lm_cross_entropy  # noqa: E402

CTX, BATCH = 64, 2
WAYS = ("bare loop", "devinterp 2.0.1", "slt-probe g=4", "slt-probe g=1", "slt-probe walk g=1")


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def config(draws: int, burnin: int, mala_every: int) -> SGLDConfig:
    return SGLDConfig(lr=1e-5, localization=100.0, nbeta=30.0, chains=4, draws=draws, burnin=burnin,
                      batch_size=BATCH, device="cpu", mala_every=mala_every, method="loop")


def one_way(way: str, folder: str, draws: int, burnin: int, mala_every: int) -> None:
    """In a child process: load, run `way`, print {"base", "peak", "seconds"} as JSON."""
    import transformers

    torch.set_num_threads(1)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    for p in model.parameters():  # in memory of its own, as a walk's model is (load_into copies each checkpoint into
        p.data = p.data.clone()  # it), not pages of the safetensors file mapped in as they are first read
    data = torch.randint(0, model.config.vocab_size, (256, CTX + 1), generator=torch.Generator().manual_seed(0))
    cfg = config(draws, burnin, mala_every)
    base = rss_gb()
    start = time.perf_counter()
    if way == "bare loop":
        bare_loop(model, data, lm_cross_entropy, replace(cfg, draws=cfg.steps), torch.device("cpu"))
    elif way.startswith("devinterp"):
        devinterp_llc(model, data, replace(cfg, draws=cfg.steps), torch.device("cpu"))
    else:  # a walk samples its own model in place (inplace=True): no copy of it
        estimate_llc(model, data, config=replace(cfg, chain_group=int(way.split("=")[1])), inplace="walk" in way)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps({"base": base, "peak": peak, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="a 2-layer GPT-2 of width 64 instead of 124M (dry runs)")
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--burnin", type=int, default=1)
    ap.add_argument("--mala-every", type=int, default=10, help="slt-probe's MALA check (0: off; devinterp has none)")
    ap.add_argument("--ways", default=",".join(WAYS), help="which ways, comma-separated (the bare loop is the time unit)")
    ap.add_argument("--way", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.way:
        return one_way(args.way, args.folder, args.draws, args.burnin, args.mala_every)

    import transformers

    gpt2 = (transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=256) if args.small
            else transformers.GPT2Config())
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(gpt2)
    n = sum(p.numel() for p in model.parameters())
    cfg = config(args.draws, args.burnin, args.mala_every)
    print(f"GPT-2-sized model, {n / 1e6:.1f}M parameters ({n * 4 / 2**30:.2f} GB in float32), random init, HF folder; "
          f"{cfg.chains} chains × {cfg.steps} steps, batch {BATCH} × {CTX} tokens, one thread, MALA every "
          f"{args.mala_every or 'never'}", flush=True)
    print("| way | peak RSS GB | extra over the loaded model GB | extra / model size | s per chain-step | × bare |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # safetensors
        del model
        bare = None
        for way in args.ways.split(","):
            out = subprocess.run([sys.executable, __file__, "--way", way, "--folder", tmp, "--draws", str(args.draws),
                                  "--burnin", str(args.burnin), "--mala-every", str(args.mala_every)],
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode:
                print(f"| {way} | failed: {(out.stderr.strip().splitlines() or ['?'])[-1][:150]} | | | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            per_step = r["seconds"] / (cfg.chains * cfg.steps)
            bare = per_step if way == "bare loop" else bare
            extra = r["peak"] - r["base"]
            ratio = f"{per_step / bare:.2f}" if bare else "–"
            print(f"| {way} | {r['peak']:.2f} | {extra:.2f} | {extra / (n * 4 / 2**30):.2f} | {per_step:.2f} | {ratio} |",
                  flush=True)


if __name__ == "__main__":
    main()
