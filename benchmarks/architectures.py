"""Our attention-only model against the anchor's (Hoogland et al. 2024): does λ̂ turn over (a type-B stage) once the
blocks have LayerNorms, and does the turn come with a collapse of the LayerNorm gains or the embeddings?

    python benchmarks/architectures.py --out /tmp/arch --arch base,anchor --data plain,mix --seeds 0,1,2

Each (architecture, data, seed) is trained with the demo's trainer (slt_probe/demo/train.py), the same recipe for
all, then walked with the demo's probes plus the weight norms (probes.weight_norms), and its transitions detected.
A run folder that already holds its results is read, not redone, so the grid can be split across processes
(one per core: `--arch base` in one, `--arch anchor` in another). Prints, per run, λ̂ ± s.e., the loss and the norms
at each checkpoint, then the flagged stages and spurts.

Architectures: base = ours (no LayerNorm, positions in the residual stream); ln = a LayerNorm before each block's
attention and a final one; anchor = ln with shortformer positions (TransformerLens' normalization_type='LN',
positional_embedding_type='shortformer'). Data: plain = byte-level standard library text, mix = the demo's
copied-span mix (repeat_frac 0.55).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from slt_probe.demo.corpus import CorpusConfig
from slt_probe.demo.pipeline import DemoConfig, near_transition, onset_heads, probe_onsets, summarize, walk_run
from slt_probe.demo.train import ANCHOR, TrainConfig, train_demo
from slt_probe.engine.sampler import SGLDConfig
from slt_probe.inputs import heads
from slt_probe.runs.detect import detect_all
from slt_probe.store import Probes, Refined, load_results, read_transitions

ARCHS = {"base": dict(block_ln=False, final_ln=False, positions="residual"),
         "ln": dict(block_ln=True, final_ln=True, positions="residual"),
         "anchor": ANCHOR}
DATA = {"plain": 0.0, "mix": 0.55}


def run_one(out: Path, arch: str, data: str, seed: int, args) -> Path:
    corpus = CorpusConfig(context=args.context, repeat_frac=DATA[data], seed=seed)
    cfg = TrainConfig(lr=args.lr, weight_decay=args.weight_decay, steps=args.steps, seed=seed, corpus=corpus,
                      n_log=args.n_log, n_linear=args.n_linear, **ARCHS[arch])
    run = out / "run"
    if not (run / "train_log.json").exists():
        t = time.perf_counter()
        train_demo(cfg, run)
        print(f"# {out.name}: trained in {time.perf_counter() - t:.0f} s", flush=True)
    results = out / "results.h5"
    sgld = SGLDConfig(lr=args.sgld_lr, localization=300.0, nbeta=30.0, chains=4, draws=args.draws, burnin=args.burnin,
                      batch_size=32, method="loop", seed=0)
    t = time.perf_counter()
    # the demo's walk (its probes, and with --heads the heads they name), no layer refined; continued if begun
    named = walk_run(run, results, DemoConfig(train=cfg, sgld=sgld, refine={}, refine_heads=args.heads),
                     command="benchmarks/architectures.py")
    detect_all(results, refined=named)
    print(f"# {out.name}: walked in {time.perf_counter() - t:.0f} s", flush=True)
    return results


def report(name: str, results: Path) -> None:
    res = load_results(results)
    t = res.table
    probes = Probes.read(results).values
    norms = sorted(k for k in next(iter(probes.values())) if k.endswith("_norm"))
    print(f"\n## {name}\n")
    print("| step | λ̂ ± s.e. | L_n | prev-token | prefix-matching | " + " | ".join(norms) + " |")
    print("|---" * (5 + len(norms)) + "|")
    for row in t.itertuples():
        p = probes.get(int(row.step), {})
        print(f"| {row.step} | {row.llc_mean:.1f} ± {row.llc_se:.1f} | {row.init_loss:.3f} | "
              f"{p.get('prev_token', np.nan):.2f} | {p.get('prefix_matching', np.nan):.2f} | "
              + " | ".join(f"{p.get(k, np.nan):.2f}" for k in norms) + " |")
    tr = res.transitions
    if tr is not None:
        print("\nstages: " + ", ".join(f"{s.type}{' (hidden)' if s.hidden else ''} {s.start_step}-{s.end_step} "
                                       f"(Δλ̂ {s.dllc:+.1f}, ΔL {s.dloss:+.3f})" for s in tr.stages))
        print("boundaries: " + ", ".join(f"{b.step} {b.kind} ({b.confidence:.2f}{', tentative' if b.tentative else ''})"
                                         for b in tr.boundaries))
        print("spurts: " + ", ".join(f"{sp.step} {sp.type}{' hidden' if sp.hidden else ''} Δλ̂ {sp.dllc:+.1f} "
                                     f"({sp.confidence:.2f}{', tentative' if sp.tentative else ''})" for sp in tr.spurts))
    # each probe's onset against the λ̂ transitions within ±1 checkpoint (the demo's test), whole model and its head
    index = {int(s): i for i, s in enumerate(t.step)}
    named = onset_heads(probes)
    refined = Refined.read(results)
    for name, at in probe_onsets(probes).items():
        line = f"{name} onset {at}"
        if at is not None and tr is not None:
            line += f": whole λ̂ {_flag(near_transition(summarize(tr), at, index))}"
            head = heads.head_name(*named[name])
            if refined is not None and head in refined.values:
                curve = read_transitions(results, refined=head)
                line += f"; {head} {_flag(near_transition(summarize(curve), at, index)) if curve else 'not detected'}"
        print(line)


def _flag(match) -> str:
    if match is None:
        return "none within ±1 checkpoint"
    kind = f"{match['type']} spurt" if match["what"] == "spurt" else match["kind"]
    return f"{kind} at {match['step']} ({match['confidence']:.2f}{', tentative' if match['tentative'] else ''})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arch", default="base,anchor")
    ap.add_argument("--data", default="plain,mix")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=12_000)
    ap.add_argument("--n-log", type=int, default=22)
    ap.add_argument("--n-linear", type=int, default=12)
    ap.add_argument("--sgld-lr", type=float, default=3e-4, help="ε; the demo's 3e-4 at context 32")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--burnin", type=int, default=30)
    ap.add_argument("--heads", action="store_true", help="also the refined λ̂ of the heads the probes name")
    ap.add_argument("--report-only", action="store_true", help="print the runs already done, train and walk nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small model: one thread is fastest on a shared 2-core machine
    for seed in map(int, args.seeds.split(",")):
        for data in args.data.split(","):
            for arch in args.arch.split(","):
                name = f"{arch}_{data}_s{seed}"
                out = args.out / name
                results = out / "results.h5"
                if not args.report_only:
                    results = run_one(out, arch, data, seed, args)
                if results.exists():
                    report(name, results)


if __name__ == "__main__":
    main()
