"""What the results file costs per checkpoint as a walk grows (issue 18 §4: the figures before the store changes).

    python benchmarks/store.py                   # K = 200, 1000, 2000, 3000; ~1 min
    python benchmarks/store.py --rows 200 2000

After every checkpoint the walk rewrites the whole file atomically (store.ResultsFile.save: a new file renamed over
the old), so that kill -9 at any moment leaves the last complete version. This times that rewrite with K rows of
4 chains × 200 draws + 50 burn-in (random traces, the walk's own layout and compression), the median of 3, and the
whole walk's total store time if every checkpoint up to K paid it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from slt_probe import store


def rows(k: int, chains: int, draws: int, burnin: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        row = store.empty_row(chains, draws, burnin)
        row.update(step=i * 10, path=f"step_{i * 10}.pt", format="torch", sha256=f"{i:064x}", status="ok",
                   finished=store.utc_now(), seconds=1.0, init_loss=2.0, llc_mean=5.0, llc_std=0.5, llc_se=0.25,
                   llc_per_chain=rng.normal(5, 0.5, chains), loss_trace=rng.normal(2.1, 0.01, (chains, draws)),
                   burnin_trace=rng.normal(2.1, 0.01, (chains, burnin)), verdict="ok")
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[200, 1000, 2000, 3000])
    args = ap.parse_args()
    chains, draws, burnin = 4, 200, 50
    attrs = {"schema": store.SCHEMA, "schema_version": store.SCHEMA_VERSION}
    print("| K rows | one rewrite (s) | file MB | a whole walk's rewrites up to K (s, each linear in its rows) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.h5"
        for k in args.rows:
            data = rows(k, chains, draws, burnin)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                store.write(path, attrs, data, chains, draws, burnin)
                times.append(time.perf_counter() - start)
            t = statistics.median(times)
            total = sum(t * j / k for j in range(1, k + 1))  # a cost linear in the rows
            print(f"| {k} | {t:.3f} | {path.stat().st_size / 1e6:.1f} | {total:.0f} |", flush=True)


if __name__ == "__main__":
    main()
