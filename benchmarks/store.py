"""What the results file costs per checkpoint as a walk grows (issue 18 §4), before and after the parts folder.

    python benchmarks/store.py                   # K = 200, 2000; ~1 min
    python benchmarks/store.py --rows 200 1000 2000

Before: after every checkpoint the walk rewrote the whole file atomically (a new file renamed over the old), so that
kill -9 at any moment leaves the last complete version: a cost linear in the rows, quadratic over a walk. That
rewrite is timed here with K rows (store.write, the median of 3), and the whole walk's total if every checkpoint up
to K paid it.

After: each checkpoint is written as a part of the file (store/parts.py), and the parts are folded into it when they
outnumber its rows (amortized O(1)) and at the end. A walk of K checkpoints is replayed through ResultsFile (start,
add per checkpoint, finish): the store time per checkpoint over the walk and over its last 100 checkpoints (where K
rows stand), the slowest checkpoint (one that folded the parts in), the final fold, and what a reader
(load_results) pays while the parts are there, at most.

Rows hold 4 chains × 200 draws + 50 burn-in (random traces, the walk's own layout and compression).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from slt_probe import SGLDConfig, store


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


def before(path: Path, data: list[dict], attrs: dict, chains: int, draws: int, burnin: int) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        store.write(path, attrs, data, chains, draws, burnin)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def after(path: Path, data: list[dict], attrs: dict, config: SGLDConfig) -> dict[str, float]:
    """A walk of len(data) checkpoints through ResultsFile, timed per checkpoint."""
    file = store.ResultsFile(path, config, overwrite=True)
    file.attrs = dict(attrs)
    file.start()
    times, read = [], 0.0
    for row in data:
        start = time.perf_counter()
        file.add(store.parts.part_name(row["step"]), [row])
        times.append(time.perf_counter() - start)
        if len(store.parts.files(path)) == max(store.MIN_PARTS, file.main_rows):  # the most parts a reader meets
            start = time.perf_counter()
            store.load_results(path)
            read = max(read, time.perf_counter() - start)
    start = time.perf_counter()
    file.finish()
    final = time.perf_counter() - start
    file.close()
    return {"mean": statistics.mean(times), "last": statistics.mean(times[-100:]), "max": max(times),
            "final": final, "read": read, "total": sum(times) + final}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[200, 2000])
    args = ap.parse_args()
    chains, draws, burnin = 4, 200, 50
    config = SGLDConfig(chains=chains, draws=draws, burnin=burnin)
    attrs = {"schema": store.SCHEMA, "schema_version": store.SCHEMA_VERSION}
    print("| K rows | file MB | before: one rewrite (s) | before: a walk's rewrites (s) | after: per checkpoint, "
          "mean over the walk (s) | after: mean of the last 100 (s) | after: slowest (s) | after: final fold (s) | "
          "after: a walk's store time (s) | a reader, most parts (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.rows:
            data = rows(k, chains, draws, burnin)
            old = Path(tmp) / f"before{k}.h5"
            t = before(old, data, attrs, chains, draws, burnin)
            total = sum(t * j / k for j in range(1, k + 1))  # a cost linear in the rows
            a = after(Path(tmp) / f"after{k}.h5", data, attrs, config)
            print(f"| {k} | {old.stat().st_size / 1e6:.1f} | {t:.3f} | {total:.0f} | {a['mean']:.4f} | "
                  f"{a['last']:.4f} | {a['max']:.3f} | {a['final']:.3f} | {a['total']:.1f} | {a['read']:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
