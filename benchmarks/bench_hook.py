"""What LLCHook costs a training run: wall time and memory, the same training without and with it, in one process.

    python benchmarks/bench_hook.py                                  # the demo: 2000 steps, ~30 measurements
    python benchmarks/bench_hook.py --steps 500 --draws 20 --burnin 10    # a quicker look

The demo model: the 2-layer attention-only transformer of slt_probe/demo/model.py (d_model 64, 4 heads, ctx 128,
vocab 256; 74k parameters), AdamW (lr 3e-3), batch 32, on random tokens where half the sequences repeat
their first half (something for induction heads to learn). The hook measures λ̂ at ~30 log-spaced steps
(log_schedule) on 2048 held-out sequences, with SGLDConfig's defaults but chains 4 x draws 100. What either
costs depends on the shapes alone, not on the tokens: random ones serve as well as real text here.

Time: the training runs twice with the same seed, without the hook and with it (the final weights must be
identical, and are checked). The hook's share is the time spent inside hook calls over the hooked run's
total. An SGLD step is one forward and backward pass of one chain on one minibatch, as a training step is,
so a measurement costs about chains x (burnin + draws) training steps, plus the forward passes of L_n(w*):
the share follows from the printed per-measurement and per-step times for any other schedule.

Memory: peak resident set size (VmHWM of /proc/self/status), its peak reset between phases through
/proc/self/clear_refs (Linux). RSS counts what the process holds in RAM: Python objects, torch's CPU tensors
(torch's CPU allocator is malloc, which tracemalloc does not see), the model copy, the chains' parameter
matrix [chains, D], one SGLD step's activations, h5py's buffers, and the shared libraries the first
measurement loads. It does not count GPU memory (torch.cuda.max_memory_allocated would).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from slt_probe import SGLDConfig
from slt_probe.engine.data import lm_cross_entropy
from bench_llc import load_attn_only  # benchmarks/ is on sys.path when a script there runs
from slt_probe.runs.hook import LLCHook, log_schedule

ROOT = Path(__file__).resolve().parents[1]
DEMO = dict(vocab_size=256, n_ctx=128, d_model=64, n_heads=4, n_layers=2)


def tokens(n: int, ctx: int, vocab: int, seed: int) -> torch.Tensor:
    """[n, ctx + 1] random ids; half the rows repeat their first ctx // 2 tokens right after them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, ctx + 1), generator=g)
    half = ctx // 2
    repeat = torch.rand(n, generator=g) < 0.5
    x[repeat, half : 2 * half] = x[repeat, :half]
    return x


# ----------------------------------------------------------------------------------------------------------
# memory: the kernel's peak RSS, resettable


def status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


class Peak:
    """The highest VmHWM seen across resets: a phase's peak, while single calls get their own."""

    def __init__(self):
        self.value = 0
        reset_peak()

    def take(self) -> int:
        self.value = max(self.value, status_kib("VmHWM"))
        reset_peak()
        return self.value


# ----------------------------------------------------------------------------------------------------------


def train(args, model_fn, data, hook=None):
    """The training loop; with a hook, the time and the RSS it adds at each measurement."""
    torch.manual_seed(args.seed)
    model = model_fn(**DEMO)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    peak = Peak()
    calls, transient, hook_seconds = [], [], 0.0
    start = time.perf_counter()
    for step in range(args.steps + 1):
        if hook is not None:
            peak.take()  # what training reached so far; from here, this call's own peak
            before = status_kib("VmRSS")
            t0 = time.perf_counter()
            row = hook(model, step)
            dt = time.perf_counter() - t0
            hook_seconds += dt
            if row is not None:
                calls.append((step, dt, row))
                transient.append(status_kib("VmHWM") - before)
        if step == args.steps:
            break
        batch = data[torch.randint(0, len(data), (args.batch_size,))]
        loss = lm_cross_entropy(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    total = time.perf_counter() - start
    return dict(model=model, loss=float(loss.detach()), total=total, hook_seconds=hook_seconds, calls=calls,
                transient=transient, peak=peak.take(), rss=status_kib("VmRSS"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--measurements", type=int, default=30, help="about this many log-spaced measurements")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--burnin", type=int, default=SGLDConfig.burnin)
    p.add_argument("--method", default="auto", help="auto | loop | vmap")
    p.add_argument("--samples", type=int, default=2048, help="held-out sequences λ̂ is measured on")
    p.add_argument("--batch-size", type=int, default=32, help="training and SGLD minibatch")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # The diagnostics import arviz_stats at their first use: a one-time cost of any first estimate, loaded
    # here so that the hook's memory below is its own.
    rss = status_kib("VmRSS")
    importlib.import_module("arviz_stats.base")
    libraries = status_kib("VmRSS") - rss

    model_fn = load_attn_only()
    train_data = tokens(8192, DEMO["n_ctx"], DEMO["vocab_size"], seed=1)
    held_out = tokens(args.samples, DEMO["n_ctx"], DEMO["vocab_size"], seed=2)
    schedule = log_schedule(args.steps, n=args.measurements)
    config = SGLDConfig(chains=args.chains, draws=args.draws, burnin=args.burnin, batch_size=args.batch_size,
                        method=args.method)
    print(f"demo model {DEMO}, {args.steps} steps, batch {args.batch_size}, {torch.get_num_threads()} threads; "
          f"{len(schedule)} measurements, {args.chains} chains x ({args.burnin} + {args.draws}) SGLD steps")

    plain = train(args, model_fn, train_data)
    with tempfile.TemporaryDirectory() as tmp:
        hook = LLCHook(held_out, config=config, schedule=schedule, out=Path(tmp) / "run.h5")
        hooked = train(args, model_fn, train_data, hook)
        method = hook.method

    same = all(torch.equal(a, b) for a, b in zip(plain["model"].state_dict().values(),
                                                 hooked["model"].state_dict().values()))
    per = [dt for _, dt, _ in hooked["calls"]]
    rows = [row for _, _, row in hooked["calls"]]
    step_s = plain["total"] / args.steps
    share = hooked["hook_seconds"] / hooked["total"]
    print(f"final training loss {plain['loss']:.4f}; weights with and without the hook identical: {same}")
    print(f"training without hook    {plain['total']:.1f} s  ({1e3 * step_s:.1f} ms/step)")
    print(f"training with hook       {hooked['total']:.1f} s")
    print(f"  inside the hook        {hooked['hook_seconds']:.1f} s = {100 * share:.1f}% of the hooked run "
          f"(+{100 * (hooked['total'] / plain['total'] - 1):.0f}% over training alone)")
    print(f"  per measurement        median {statistics.median(per):.2f} s, min {min(per):.2f}, max {max(per):.2f} "
          f"(first {per[0]:.2f} s, with method auto -> {method}); "
          f"= {statistics.median(per) / step_s:.0f} training steps")
    verdicts = ", ".join(f"{v} {sum(r['verdict'] == v for r in rows)}" for v in ("ok", "warn", "fail"))
    print(f"  estimates              {sum(r['status'] == 'ok' for r in rows)}/{len(rows)} ok; verdicts {verdicts}")
    print(f"peak RSS without hook    {plain['peak'] / 1024:.1f} MiB")
    added = (hooked["peak"] - plain["peak"]) / 1024
    print(f"peak RSS with hook       {hooked['peak'] / 1024:.1f} MiB  ({added:+.1f} MiB)")
    print(f"  per measurement        +{statistics.median(hooked['transient']) / 1024:.1f} MiB median, "
          f"+{max(hooked['transient']) / 1024:.1f} MiB max, above the RSS just before the call "
          f"(first: +{hooked['transient'][0] / 1024:.1f} MiB)")
    print(f"  RSS after the run      {plain['rss'] / 1024:.1f} MiB without hook, {hooked['rss'] / 1024:.1f} MiB with")
    print(f"  not counted above      arviz_stats, imported by any process's first estimate: {libraries / 1024:.1f} MiB")
    if args.steps != 2000 or len(schedule) != 30:
        m, n = statistics.median(per), 30
        print(f"projected: {n} measurements of {m:.2f} s over 2000 steps of {1e3 * step_s:.1f} ms: hook share "
              f"{100 * n * m / (n * m + 2000 * step_s):.1f}%")


if __name__ == "__main__":
    main()
