"""The `slt-probe` command line: a thin layer over the library. The library never prints; this does."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import slt_probe

app = typer.Typer(help="Local learning coefficient (LLC) estimation for developmental interpretability.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


def sampling_progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet)


@app.command()
def version():
    """Print the versions of slt-probe and the libraries it runs on."""
    import torch
    from importlib.metadata import version as v

    typer.echo(f"slt-probe {slt_probe.__version__}  torch {torch.__version__}  devinterp {v('devinterp')}")


@app.command()
def reference(
    widths: str = typer.Option("8,6,4,8", help="DLN widths: input,hidden...,output"),
    draws: Optional[int] = typer.Option(None, help="kept draws per chain (default: the reference's)"),
    chains: Optional[int] = typer.Option(None, help="number of chains"),
    seed: int = typer.Option(0, help="seed of the sampler"),
    method: str = typer.Option("auto", help="auto | vmap | loop"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:i]"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    quiet: bool = typer.Option(False, help="no progress bar"),
):
    """Estimate λ̂ on a deep linear network whose learning coefficient is known in closed form."""
    from dataclasses import replace

    from slt_probe.reference import dln_reference, mse

    try:
        ws = [int(w) for w in widths.split(",")]
        ref = dln_reference(ws)
    except ValueError as e:
        console.print(f"[red]error:[/red] --widths {widths!r}: {e}")
        raise typer.Exit(2)
    overrides = {k: val for k, val in dict(draws=draws, chains=chains).items() if val is not None}
    config = replace(ref.config, seed=seed, method=method, device=device, **overrides)
    with sampling_progress(quiet or as_json) as bar:
        task = bar.add_task("SGLD", total=config.steps)
        result = slt_probe.estimate_llc(ref.model, ref.data, loss_fn=mse, config=config,
                                        progress=lambda done, total: bar.update(task, completed=done))
    d = result.diagnostics
    if as_json:
        typer.echo(json.dumps({"reference": ref.name, "llc_theory": ref.llc, "llc_mean": result.llc_mean,
                               "llc_se": result.llc_se, "llc_per_chain": result.llc_per_chain.tolist(),
                               "verdict": d.verdict, "reasons": d.reasons, "config": config.to_dict()}))
        return
    rel = (result.llc_mean - ref.llc) / ref.llc
    typer.echo(f"{ref.name}: {result.num_params} parameters")
    typer.echo(f"  λ (Aoyagi)   {ref.llc:.3f}")
    typer.echo(f"  λ̂ (SGLD)     {result.llc_mean:.3f} ± {result.llc_se:.3f} s.e.  ({100 * rel:+.1f}%)")
    typer.echo(f"  nβ {result.config.nbeta:.1f}  lr {config.lr:g}  γ {config.localization:g}  "
               f"{config.chains} chains × {config.draws} draws (+{config.burnin} burn-in), {d.method}, "
               f"{result.seconds:.1f} s")
    typer.echo(f"  R-hat {d.rhat:.3f}  ESS {d.ess_bulk:.0f}  MALA acceptance {d.acceptance:.3f}  verdict {d.verdict}")
    for reason in d.reasons:
        typer.echo(f"    - {reason}")


if __name__ == "__main__":
    app()
