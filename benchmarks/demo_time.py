"""The demo's time end to end (train, walk with probes and refined λ̂, transitions and plot), per variant.

    python benchmarks/demo_time.py --out /tmp/demo_time --variants ours,anchor+heads

Variants: ours (`slt-probe demo`), ours+heads (`--heads`), anchor (`--anchor`), anchor+heads (`--anchor --heads`).
Each runs the whole pipeline once, one after the other, so that they share the machine's state; the budget is
10 minutes on 2 CPU cores (the demo uses one torch thread: on a busy 2-core machine more were slower).
"""

import argparse
import time
from pathlib import Path

from slt_probe.demo.pipeline import DemoConfig, run_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", default="ours,anchor+heads")
    ap.add_argument("--quick", action="store_true", help="the quick demo (a check that the script runs)")
    args = ap.parse_args()
    print("| variant | train s | walk s | transitions + plot s | total s | induction onset | its transition |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        parts = set(variant.split("+"))
        unknown = parts - {"ours", "anchor", "heads"}
        if unknown:
            raise SystemExit(f"unknown variant part(s) {sorted(unknown)}: use ours, anchor, and +heads")
        start = time.perf_counter()
        r = run_demo(args.out / variant, DemoConfig.make(args.quick, anchor="anchor" in parts, heads="heads" in parts))
        total = time.perf_counter() - start
        match = r.aligned["prefix_matching"]
        flagged = f"{match['what']} at {match['step']} ({match['confidence']:.2f})" if match else "none within ±1"
        print(f"| {variant} | {r.seconds['train']:.0f} | {r.seconds['walk']:.0f} | "
              f"{r.seconds['transitions_and_plot']:.0f} | {total:.0f} | {r.onsets['prefix_matching']} | {flagged} |",
              flush=True)


if __name__ == "__main__":
    main()
