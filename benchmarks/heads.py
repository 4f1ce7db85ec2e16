"""What per-head refined λ̂ costs on the demo model (2 layers × 4 heads), and what batching the heads saves.

    python benchmarks/heads.py                 # ~3 min on one CPU thread
    python benchmarks/heads.py --repeats 1 --draws 30

Per-head λ̂ multiplies the work by the number of heads. Three ways to get all eight, timed in the same process with
the demo walk's SGLD settings (4 chains, 30 + 100 steps, batch 32), alternating so that a busy machine slows them
alike:
  full LLC     one estimate of the whole model: the unit of cost
  one by one   estimate_llc at each head's coordinates, eight runs (the sampled vector is the head's layer's
               attention tensors only: the other weights need no gradient)
  batched      estimate_components: the heads of a layer share one run, a group of chains each (2 runs × 16 chains)
each at method loop and vmap. Ratios are paired: batched / one by one within a repeat, then the median.
The batched and one-by-one numbers are the same estimates (bit for bit on the loop path: tests/engine).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from slt_probe import estimate_llc
from slt_probe.demo.pipeline import DemoConfig
from slt_probe.demo.train import TrainConfig, build_model
from slt_probe.engine.estimate import estimate_components
from slt_probe.engine.sampler import count_params
from slt_probe.inputs.heads import components


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--draws", type=int, default=None, help="kept draws per chain (default: the demo's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train = TrainConfig()
    torch.manual_seed(0)
    model = build_model(train)
    vocab, context = train.model_kwargs()["vocab_size"], train.corpus.context
    data = torch.randint(0, vocab, (train.data_windows, context + 1), generator=torch.Generator().manual_seed(0))
    sgld = DemoConfig().sgld
    if args.draws is not None:
        sgld = replace(sgld, draws=args.draws)
    heads = {c.name: c.params for c in components(model, "heads")}
    print(f"demo model: {count_params(model)} parameters, {len(heads)} heads "
          f"({count_params(model, next(iter(heads.values())))} coordinates each); {sgld.chains} chains × "
          f"{sgld.burnin} + {sgld.draws} steps, batch {sgld.batch_size}, {args.threads} thread(s)")

    def full(method):
        estimate_llc(model, data, config=replace(sgld, method=method))

    def one_by_one(method):
        for p in heads.values():
            estimate_llc(model, data, config=replace(sgld, params=p, method=method))

    def batched(method):
        estimate_components(model, data, heads, config=replace(sgld, method=method))

    cases = {f"{name} {m}": (lambda f=f, m=m: f(m)) for m in ("loop", "vmap")
             for name, f in (("full LLC", full), ("one by one", one_by_one), ("batched", batched))}
    seconds = {k: [] for k in cases}
    for r in range(args.repeats):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()), flush=True)

    print("\n| way | method | seconds (median) | × full LLC (same method) |")
    print("|---|---|---|---|")
    for name in cases:
        m = name.split()[-1]
        ratio = statistics.median(a / b for a, b in zip(seconds[name], seconds[f"full LLC {m}"]))
        print(f"| {name.rsplit(' ', 1)[0]} | {m} | {statistics.median(seconds[name]):.2f} | {ratio:.2f} |")
    for m in ("loop", "vmap"):
        ratio = statistics.median(a / b for a, b in zip(seconds[f"batched {m}"], seconds[f"one by one {m}"]))
        print(f"batched / one by one, {m}: {ratio:.2f} (paired median)")
    best = min(("loop", "vmap"), key=lambda m: statistics.median(seconds[f"batched {m}"]))
    ratio = statistics.median(seconds[f"batched {best}"]) / statistics.median(seconds["one by one loop"])
    print(f"batched ({best}) / one by one (loop, the demo's method): {ratio:.2f}")


if __name__ == "__main__":
    main()
