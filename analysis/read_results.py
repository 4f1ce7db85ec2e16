"""Read a walk's results three ways: slt_probe.load_results, plain h5py, and xarray.

    python analysis/read_results.py results.h5 [--csv curve.csv]

The file is self-describing, so nothing here depends on slt-probe except the first, one-line way.
"""

import argparse
import json

import h5py
import numpy as np

import slt_probe


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="HDF5 file written by `slt-probe walk`")
    ap.add_argument("--csv", help="also write the per-checkpoint table to this CSV file")
    args = ap.parse_args()

    # 1. one line: a pandas DataFrame, one row per checkpoint
    res = slt_probe.load_results(args.results)
    curve = res.table[["step", "status", "init_loss", "llc_mean", "llc_se", "verdict"]]
    print(curve.to_string(index=False))
    if args.csv:
        res.table.to_csv(args.csv, index=False)

    # 2. plain h5py: datasets along the checkpoint axis, config as JSON in the root attributes
    with h5py.File(args.results, "r") as f:
        config = json.loads(f.attrs["config_resolved"])
        step, llc = f["step"][:], f["llc_mean"][:]
        traces = f["loss_trace"]  # [checkpoint, chain, draw], read lazily
        print(f"\nnβ = {config['nbeta']:.1f}, lr = {config['lr']:g}, γ = {config['localization']:g}; "
              f"loss traces {traces.shape} ({traces.attrs['description']})")
        ok = np.isfinite(llc)
        if ok.sum() >= 2:
            i = int(np.argmax(np.abs(np.diff(llc[ok]))))
            print(f"largest change in λ̂: step {step[ok][i]} → {step[ok][i + 1]} ({llc[ok][i]:.2f} → {llc[ok][i + 1]:.2f})")
        # refined λ̂ (walk --refine NAME=REGEX): one subgroup per component, keyed by its own step dataset
        for name, g in f.get("refined", {}).items():
            print(f"refined λ̂ of {name} ({g.attrs['params']}, {g.attrs['num_params']} parameters): "
                  + ", ".join(f"{s}: {v:.2f}" for s, v in zip(g["step"][:], g["llc_mean"][:])))

    # 3. xarray, labelled by step (xarray comes with devinterp)
    import xarray as xr

    ds = xr.Dataset(
        {"llc": (("step", "chain"), res.arrays["llc_per_chain"]),
         "loss_trace": (("step", "chain", "draw"), res.arrays["loss_trace"])},
        coords={"step": res.arrays["step"]},
    )
    print(f"\nper-chain λ̂ spread (std over chains), by step:\n{ds.llc.std('chain').to_series().round(3).to_string()}")


if __name__ == "__main__":
    main()
