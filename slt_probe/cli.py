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


def stdout_console() -> Console:
    """Tables for people: no folding at 80 columns when piped or captured."""
    out = Console(soft_wrap=True)
    return out if out.is_terminal else Console(soft_wrap=True, width=200)


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



# ----------------------------------------------------------------------------------------------------------
# walk and inspect


def fail(message: str, debug: bool) -> None:
    """Bad input: one line, exit code 2; the traceback only with --debug."""
    if debug:
        raise
    console.print(f"error: {message}", style="red", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(2)


def sgld_config(config_file: Optional[str], options: dict):
    """SGLDConfig from --config (TOML/JSON, keys = SGLDConfig fields) overridden by the command line."""
    from dataclasses import fields

    from slt_probe.errors import InputError
    from slt_probe.inputs import read_kwargs

    values = read_kwargs(config_file) if config_file else {}
    values = values.get("sgld", values)  # [sgld] table or top-level keys
    known = {f.name for f in fields(slt_probe.SGLDConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{config_file}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values.update({k: v for k, v in options.items() if v is not None})
    try:
        return slt_probe.SGLDConfig(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f"{config_file or 'config'}: {e}") from None


def parse_refine(items: Optional[list[str]]) -> dict[str, str]:
    """--refine NAME=REGEX, repeated -> {NAME: REGEX}."""
    from slt_probe.errors import InputError

    out = {}
    for item in items or []:
        name, sep, pattern = item.partition("=")
        if not sep or not name.strip() or not pattern or "/" in name:
            raise InputError(f"--refine {item!r}: expected NAME=REGEX, e.g. layer0='^blocks\\.0\\.'")
        out[name.strip()] = pattern
    return out


def parse_steps(steps: Optional[str]) -> Optional[list[int]]:
    from slt_probe.errors import InputError

    if steps is None:
        return None
    try:
        return [int(s) for s in steps.replace(" ", "").split(",") if s]
    except ValueError:
        raise InputError(f"--steps expects comma-separated integers, got {steps!r}") from None


@app.command()
def walk(
    ctx: typer.Context,
    ckpt_dir: str = typer.Argument(..., help="folder of checkpoints (files or Hugging Face checkpoint folders)"),
    out: str = typer.Option("results.h5", "--out", "-o", help="HDF5 results file (resumed when it exists)"),
    model: Optional[str] = typer.Option(None, help="path/to/file.py:factory or package.module:factory"),
    model_config: Optional[str] = typer.Option(None, help="JSON/TOML file of keyword arguments for the factory"),
    data: Optional[str] = typer.Option(None, help=".npy | .bin | .pt | .npz | file.h5:dataset | text file"),
    context: Optional[int] = typer.Option(None, help="window length for 1-D token streams and text"),
    tokenizer: Optional[str] = typer.Option(None, help="'byte' for text files"),
    loss: Optional[str] = typer.Option(None, help="file.py:fn, loss_fn(model, batch) -> mean loss (default: next-token CE)"),
    config: Optional[str] = typer.Option(None, help="TOML/JSON file of SGLD settings; command-line options win"),
    lr: Optional[float] = typer.Option(None, help="ε, SGLD step size [1e-4]"),
    localization: Optional[float] = typer.Option(None, help="γ, pull back to the checkpoint [100]"),
    nbeta: Optional[float] = typer.Option(None, help="nβ, inverse temperature × n [n / log n]"),
    chains: Optional[int] = typer.Option(None, help="number of chains [4]"),
    draws: Optional[int] = typer.Option(None, help="kept draws per chain [200]"),
    burnin: Optional[int] = typer.Option(None, help="burn-in steps discarded per chain [50]"),
    batch_size: Optional[int] = typer.Option(None, help="minibatch size [32]"),
    seed: Optional[int] = typer.Option(None, help="seed of minibatches and noise, shared by all checkpoints [0]"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:i] [auto]"),
    dtype: Optional[str] = typer.Option(None, help="sampling precision: float32 | float64 [float32]"),
    method: Optional[str] = typer.Option(None, help="auto | vmap | loop [auto]"),
    mala_every: Optional[int] = typer.Option(None, help="measure MALA acceptance every k steps, 0 = off [10]"),
    params: Optional[str] = typer.Option(None, help="sample only the parameters whose names match this regex: "
                                                    "the refined λ̂ of a component [all]"),
    refine: Optional[list[str]] = typer.Option(None, help="NAME=REGEX: also the refined λ̂ of the parameters "
                                                          "matching REGEX at each checkpoint (repeatable)"),
    engine: str = typer.Option("slt", help="slt | devinterp"),
    steps: Optional[str] = typer.Option(None, help="only these steps, e.g. 100,200,400"),
    every: Optional[int] = typer.Option(None, help="every K-th checkpoint (and the last)"),
    max_checkpoints: Optional[int] = typer.Option(None, help="at most N checkpoints, log-spaced in step"),
    dry_run: bool = typer.Option(False, help="list what would be walked and stop"),
    overwrite: bool = typer.Option(False, help="start again when --out holds a different walk"),
    find_transitions: bool = typer.Option(True, "--transitions/--no-transitions",
                                          help="detect developmental stages at the end (slt-probe transitions)"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (1 is often fastest for small models "
                                                    "on a busy machine)"),
    quiet: bool = typer.Option(False, help="no progress bar or per-checkpoint lines"),
    debug: bool = typer.Option(False, help="show Python tracebacks"),
):
    """Estimate λ̂ at every checkpoint in CKPT_DIR, with the same settings, into one HDF5 file."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from slt_probe import checkpoints as ck
    from slt_probe.data import num_samples
    from slt_probe.errors import InputError
    from slt_probe.sampler import resolve_device
    from slt_probe.walker import walk as walk_checkpoints

    try:
        cfg = sgld_config(config, dict(lr=lr, localization=localization, nbeta=nbeta, chains=chains, draws=draws,
                                       burnin=burnin, batch_size=batch_size, seed=seed, device=device, dtype=dtype,
                                       method=method, mala_every=mala_every, params=params))
        components = parse_refine(refine)
        if engine not in ("slt", "devinterp"):
            raise InputError(f"--engine must be slt or devinterp, got {engine!r}")
        found, skipped = ck.discover(ckpt_dir)
        todo = ck.select(found, steps=parse_steps(steps), every=every, max_checkpoints=max_checkpoints)
        if dry_run:
            for path, why in skipped:
                typer.echo(f"skip  {path}  ({why})")
            for c in todo:
                typer.echo(f"{c.step:>10}  {c.format:<12} {c.path}")
            typer.echo(f"{len(todo)} of {len(found)} checkpoints would be walked")
            return
        net, model_desc, dataset, data_desc, loss_fn = model_and_data(
            todo[0], model, model_config, data, context, tokenizer, loss, engine)
        if cfg.batch_size > num_samples(dataset):
            raise InputError(f"{data}: {num_samples(dataset)} samples, fewer than --batch-size {cfg.batch_size}")
        resolve_device(cfg.device)
    except (InputError, ValueError) as e:
        fail(str(e), debug)

    meta = {"command": command_line(ctx), "config": cfg.to_dict(),
            "model": model_desc, "data": data_desc, "loss": loss or "next-token cross-entropy",
            "checkpoint_dir": str(ck_dir_abs(ckpt_dir))}
    bar = walk_progress(quiet)  # started by the first event: a refused resume prints only its error
    outer = bar.add_task("checkpoints", total=len(todo))
    inner = bar.add_task("SGLD", total=cfg.steps, visible=False)

    def on_event(kind, **info):
        bar.start()
        if kind == "start":
            bar.update(inner, completed=0, visible=True, description=f"step {info['checkpoint'].step}")
        elif kind == "steps":
            bar.update(inner, completed=info["done"], total=info["total"])
        elif kind in ("done", "skip"):
            bar.advance(outer)
            bar.update(inner, visible=False)
            if not quiet:
                bar.console.print(checkpoint_line(info["row"], skipped=kind == "skip"), highlight=False,
                                  markup=False, soft_wrap=True)

    try:
        summary = walk_checkpoints(todo, out, model=net, data=dataset, loss_fn=loss_fn, config=cfg, engine=engine,
                                   root=ckpt_dir, meta=meta, overwrite=overwrite, on_event=on_event,
                                   refine=components)
    except InputError as e:
        fail(str(e), debug)
    finally:
        bar.stop()
    if not quiet:
        console.print(f"{summary.computed} estimated, {summary.skipped} already done → {out}", highlight=False)
    if find_transitions:
        from slt_probe.store import write_transitions
        from slt_probe.transitions import transitions_from_results

        for name in [None, *components]:  # the LLC, then each refined λ̂
            label = "λ̂" if name is None else f"refined λ̂ of {name}"
            try:
                t = transitions_from_results(out, refined=name)
                write_transitions(out, t, refined=name)
            except ValueError as e:  # too few checkpoints, one chain: the walk itself is fine
                console.print(f"transitions in {label}: not detected ({e})", highlight=False, markup=False)
                continue
            if not quiet:
                if name is not None:
                    console.print(f"{label} ({components[name]}):", highlight=False, markup=False)
                console.print(transitions_table(t))
                if t.spurts:
                    console.print(spurts_table(t))
                for note in t.notes:
                    console.print(f"note: {note}", highlight=False, markup=False)
    if summary.failed:
        console.print(f"{len(summary.failed)} of {summary.total} checkpoints failed:", style="red", highlight=False)
        for f in summary.failed:
            console.print(f"  {f['message']}", highlight=False, markup=False)
        raise typer.Exit(1)


def model_and_data(first, model, model_config, data, context, tokenizer, loss, engine="slt"):
    """(model, its description, data, its description, loss_fn or None) from the command line; InputError if bad."""
    from slt_probe import checkpoints as ck
    from slt_probe import inputs
    from slt_probe.data import check_lm_tokens
    from slt_probe.errors import InputError

    if model is not None:
        net, model_desc = inputs.build_model(model, model_config)
    else:
        hf = ck.hf_config_path(first)
        if hf is None:
            raise InputError(f"{first.path}: not a Hugging Face folder with config.json; pass --model")
        net, model_desc = inputs.build_hf_model(hf)
    if data is None:
        raise InputError("--data is required: the samples λ̂ is measured on")
    dataset, data_desc = inputs.load_data(data, context=context, tokenizer=tokenizer)
    loss_fn = inputs.load_loss(loss)
    if loss_fn is None:
        try:
            check_lm_tokens(dataset)
        except ValueError as e:
            raise InputError(f"{data}: {e}") from None
        inputs.check_tokens_fit(dataset, net, data_path=data)
    return net, model_desc, dataset, data_desc, loss_fn


def command_line(ctx) -> str:
    """The invoked command, rebuilt from its parsed parameters (sys.argv is not it inside notebooks or tests)."""
    import shlex

    parts = ["slt-probe", ctx.info_name or "walk"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default:
            continue
        if param.param_type_name == "argument":
            parts.append(str(value))
        elif value is True and param.is_flag:
            parts.append(param.opts[0])
        else:
            parts += [param.opts[0], str(value)]
    return shlex.join(parts)


def ck_dir_abs(path: str) -> str:
    from pathlib import Path

    return str(Path(path).resolve())


def walk_progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description:>14}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=quiet)


def checkpoint_line(row: dict, skipped: bool = False) -> str:
    if row["status"] != "ok":
        return f"step {row['step']:>8}  FAILED  {row['message']}"
    tag = "  (already done)" if skipped else f"  {row['seconds']:.1f} s"
    return (f"step {row['step']:>8}  loss {row['init_loss']:.4f}  λ̂ {row['llc_mean']:.3f} ± {row['llc_se']:.3f}  "
            f"{row['verdict']}{tag}")


@app.command()
def inspect(
    results: str = typer.Argument(..., help="HDF5 file written by slt-probe walk"),
    as_json: bool = typer.Option(False, "--json", help="print configuration and table as JSON"),
    debug: bool = typer.Option(False, help="show Python tracebacks"),
):
    """Print a results file's configuration and its per-checkpoint table."""
    import math
    import re

    from rich.table import Table

    try:
        res = slt_probe.load_results(results)
    except (OSError, ValueError) as e:
        fail(f"{results}: {e}", debug)
    t = res.table
    if as_json:
        rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                for r in t.drop(columns=["sha256"]).to_dict(orient="records")]
        typer.echo(json.dumps({"path": results, "attrs": res.attrs, "checkpoints": rows}, default=str))
        return
    out = stdout_console()
    a = res.attrs
    out.print(f"[bold]{results}[/bold]  {len(t)} checkpoints, engine {a.get('engine')} ({a.get('method')}), "
              f"device {a.get('device')}, created {a.get('created')}", highlight=False)
    out.print(f"  command: {a.get('command', '')}", highlight=False, markup=False)
    cfg = a.get("config_resolved", {})
    out.print("  config:  " + "  ".join(f"{k} {v}" for k, v in cfg.items()), highlight=False, markup=False)
    model, data = a.get("model", {}), a.get("data", {})
    out.print(f"  model:   {model.get('spec', model.get('class', ''))}  ({a.get('num_params')} parameters)",
              highlight=False, markup=False)
    out.print(f"  data:    {data.get('path', '')}  {a.get('num_samples')} samples  sha256 {str(data.get('sha256', ''))[:12]}",
              highlight=False, markup=False)
    table = Table(show_edge=False)
    for col in ("step", "status", "loss", "λ̂", "± s.e.", "verdict", "reasons"):
        table.add_column(col, justify="right" if col in ("step", "loss", "λ̂", "± s.e.") else "left")
    for r in t.itertuples():
        if r.status == "ok":
            short = "; ".join(re.split(r":| \(", reason)[0] for reason in r.reasons.split("; ") if reason)
            table.add_row(str(r.step), r.status, f"{r.init_loss:.4f}", f"{r.llc_mean:.3f}", f"{r.llc_se:.3f}",
                          r.verdict, short)
        else:
            table.add_row(str(r.step), r.status, "", "", "", "", r.message)
    out.print(table, soft_wrap=False, crop=False)
    if (t.verdict != "ok").any():
        out.print("  (full reasons: --json, or the `reasons` dataset)", highlight=False, markup=False)



# ----------------------------------------------------------------------------------------------------------
# transitions and plot


def transition_config(**options):
    from dataclasses import replace

    from slt_probe.transitions import TransitionConfig

    return replace(TransitionConfig(), **{k: v for k, v in options.items() if v is not None})


def transitions_table(t):
    from rich.table import Table

    table = Table(show_edge=False, title="developmental stages", title_justify="left")
    for col, right in (("stage (steps)", False), ("type", False), ("Δλ̂ ± s.e.", True), ("Δloss", True),
                       ("hidden", False), ("ends at boundary", True), ("kind", False), ("confidence", True)):
        table.add_column(col, justify="right" if right else "left")
    for i, s in enumerate(t.stages):
        b = t.boundaries[i] if i < len(t.boundaries) else None
        conf = "" if b is None else f"{b.confidence:.2f}" + (" (tentative)" if b.tentative else "")
        table.add_row(f"{s.start_step} → {s.end_step}", s.type, f"{s.dllc:+.3g} ± {s.dllc_se:.2g}",
                      f"{s.dloss:+.3g}", "hidden" if s.hidden else "", "" if b is None else str(b.step),
                      "" if b is None else b.kind, conf)
    return table


def spurts_table(t):
    from rich.table import Table

    table = Table(show_edge=False, title="spurts (where λ̂ changes fastest)", title_justify="left")
    for col, right in (("step", True), ("type", False), ("dλ̂/dlog₁₀ t", True), ("window (steps)", False),
                       ("Δλ̂ ± s.e.", True), ("Δloss", True), ("hidden", False), ("confidence", True)):
        table.add_column(col, justify="right" if right else "left")
    for sp in t.spurts:
        table.add_row(str(sp.step), sp.type, f"{sp.rate:+.3g}", f"{sp.start_step} → {sp.end_step}",
                      f"{sp.dllc:+.3g} ± {sp.dllc_se:.2g}", f"{sp.dloss:+.3g}", "hidden" if sp.hidden else "",
                      f"{sp.confidence:.2f}" + (" (tentative)" if sp.tentative else ""))
    return table


def transitions_json(t) -> dict:
    from dataclasses import asdict

    return {"boundaries": [asdict(b) for b in t.boundaries], "stages": [asdict(s) for s in t.stages],
            "spurts": [asdict(sp) for sp in t.spurts],
            "params": asdict(t.config), "smoothing": t.smoothing, "notes": t.notes}


@app.command()
def transitions(
    results: str = typer.Argument(..., help="HDF5 file written by slt-probe walk"),
    k_se: Optional[float] = typer.Option(None, help="a stage's |Δλ̂| must exceed this many s.e. [3]"),
    hidden_loss_frac: Optional[float] = typer.Option(None, help="hidden: |Δloss| below this fraction of the run's loss drop [0.05]"),
    plateau_tol: Optional[float] = typer.Option(None, help="plateau: |dλ̂/dlog t| below this fraction of the neighbouring slopes [0.2]"),
    spurt_drop: Optional[float] = typer.Option(None, help="spurt: |dλ̂/dlog t| falls below this fraction of its peak on both sides [0.5]"),
    spurt_k_se: Optional[float] = typer.Option(None, help="spurt: its peak stands this many s.e. above its base [4]"),
    resamples: Optional[int] = typer.Option(None, help="bootstrap resamples for the confidence [200]"),
    min_confidence: Optional[float] = typer.Option(None, help="boundaries reproduced less often are tentative [0.8]"),
    seed: Optional[int] = typer.Option(None, help="seed of the bootstrap [0]"),
    refined: Optional[str] = typer.Option(None, help="detect them in this refined λ̂ curve (walk --refine NAME=...) "
                                                     "instead of the whole model's"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    debug: bool = typer.Option(False, help="show Python tracebacks"),
):
    """Find stage boundaries in the λ̂ curve, type the stages (A / B), and store them in the results file."""
    from slt_probe.store import write_transitions
    from slt_probe.transitions import transitions_from_results

    try:
        cfg = transition_config(k_se=k_se, hidden_loss_frac=hidden_loss_frac, plateau_tol=plateau_tol,
                                spurt_drop=spurt_drop, spurt_k_se=spurt_k_se,
                                resamples=resamples, min_confidence=min_confidence, seed=seed)
        t = transitions_from_results(results, cfg, refined=refined)
        write_transitions(results, t, refined=refined)
    except (OSError, ValueError) as e:
        fail(f"{results}: {e}", debug)
    if as_json:
        typer.echo(json.dumps(transitions_json(t)))
        return
    stdout_console().print(transitions_table(t))
    if t.spurts:
        stdout_console().print(spurts_table(t))
    for note in t.notes:
        typer.echo(f"note: {note}")


@app.command()
def plot(
    results: str = typer.Argument(..., help="HDF5 file written by slt-probe walk"),
    out: str = typer.Option("curves.png", "--out", "-o", help="image file (.png, .pdf, .svg)"),
    title: Optional[str] = typer.Option(None, help="figure title"),
    debug: bool = typer.Option(False, help="show Python tracebacks"),
):
    """Draw λ̂ ± s.e. and the loss against step, with the stages and any behavioural probes."""
    from slt_probe.plot import plot_results

    try:
        path = plot_results(results, out, title=title)
    except (OSError, ValueError) as e:
        fail(f"{results}: {e}", debug)
    typer.echo(f"wrote {path}")



# ----------------------------------------------------------------------------------------------------------
# calibrate


def parse_floats(text: Optional[str], option: str) -> Optional[list[float]]:
    from slt_probe.errors import InputError

    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"{option} expects comma-separated numbers, got {text!r}") from None


def probe_points(found, at: str, steps: Optional[str]):
    """The checkpoints to calibrate at: --steps, or --at first, middle, last.

    "first" is meant to be early but past warm-up: the first checkpoint at or beyond 1% of the last step
    (step 0 is the random initialisation, not a model the walk's settings must suit).
    """
    from slt_probe import checkpoints as ck
    from slt_probe.errors import InputError

    if steps:
        return ck.select(found, steps=parse_steps(steps))
    trained = [c for c in found if c.step > 0 and c.step >= found[-1].step / 100] or found
    where = {"first": trained[0], "middle": trained[len(trained) // 2], "last": trained[-1]}
    chosen = []
    for name in at.replace(" ", "").split(","):
        if name not in where:
            raise InputError(f"--at expects first, middle and/or last, got {name!r}")
        if where[name] not in chosen:
            chosen.append(where[name])
    return sorted(chosen, key=lambda c: c.step)


@app.command()
def calibrate(
    ckpt_dir: str = typer.Argument(..., help="folder of checkpoints"),
    model: Optional[str] = typer.Option(None, help="path/to/file.py:factory or package.module:factory"),
    model_config: Optional[str] = typer.Option(None, help="JSON/TOML file of keyword arguments for the factory"),
    data: Optional[str] = typer.Option(None, help=".npy | .bin | .pt | .npz | file.h5:dataset | text file"),
    context: Optional[int] = typer.Option(None, help="window length for 1-D token streams and text"),
    tokenizer: Optional[str] = typer.Option(None, help="'byte' for text files"),
    loss: Optional[str] = typer.Option(None, help="file.py:fn (default: next-token cross-entropy)"),
    at: str = typer.Option("first,middle,last", help="which checkpoints: first (past 1% of the run), middle, last"),
    steps: Optional[str] = typer.Option(None, help="calibrate at these steps instead, e.g. 100,1000"),
    lr_grid: str = typer.Option("1e-5,3e-5,1e-4,3e-4,1e-3", "--lr", help="step sizes ε to try"),
    localization_grid: str = typer.Option("30,100,300", "--localization", help="localizations γ to try"),
    nbeta_grid: Optional[str] = typer.Option(None, "--nbeta", help="nβ values to try [n / log n]"),
    chains: int = typer.Option(4, help="chains per grid point"),
    draws: int = typer.Option(200, help="kept draws per chain"),
    burnin: int = typer.Option(50, help="burn-in steps"),
    batch_size: int = typer.Option(32, help="minibatch size"),
    seed: int = typer.Option(0, help="seed of minibatches and noise"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:i]"),
    sequential: bool = typer.Option(False, help="one grid point at a time instead of one batched run"),
    out: str = typer.Option("calibration.h5", "--out", "-o", help="the full sweep (HDF5)"),
    toml: str = typer.Option("calibration.toml", help="the recommendation, for walk --config"),
    png: str = typer.Option("calibration.png", help="λ̂ against lr, and the loss traces"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    debug: bool = typer.Option(False, help="show Python tracebacks"),
):
    """Sweep lr × localization (× nbeta) at a few checkpoints and recommend SGLD settings, with the evidence."""
    import copy

    from slt_probe import checkpoints as ck
    from slt_probe.calibrate import CalibrationGrid, failed_checks
    from slt_probe.calibrate import calibrate as run_calibration
    from slt_probe.errors import CheckpointError, InputError
    from slt_probe.plot import plot_calibration
    from slt_probe.sampler import resolve_device
    from slt_probe.store import write_calibration

    try:
        grid = CalibrationGrid(lr=parse_floats(lr_grid, "--lr"), localization=parse_floats(localization_grid,
                               "--localization"), nbeta=parse_floats(nbeta_grid, "--nbeta"))
        cfg = slt_probe.SGLDConfig(chains=chains, draws=draws, burnin=burnin, batch_size=batch_size, seed=seed,
                                   device=device)
        dev = resolve_device(device)
        found, _ = ck.discover(ckpt_dir)
        points = probe_points(found, at, steps)
        net, model_desc, dataset, data_desc, loss_fn = model_and_data(points[0], model, model_config, data, context,
                                                                       tokenizer, loss)
        models = []
        for c in points:
            m = copy.deepcopy(net).to(dev)
            try:
                ck.load_into(m, ck.load_state_dict(c, dev), source=str(c.path))
            except CheckpointError as e:
                raise InputError(str(e)) from None
            models.append((c.step, m))
    except (InputError, ValueError) as e:
        fail(str(e), debug)

    with sampling_progress(quiet) as bar:
        task = bar.add_task("calibrate", total=len(points) * (1 if not sequential else len(grid.points(1.0))))
        cal = run_calibration(models, dataset, loss_fn=loss_fn, grid=grid, config=cfg, vectorize=not sequential,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    write_calibration(out, cal, {"model": model_desc, "data": data_desc, "checkpoint_dir": ck_dir_abs(ckpt_dir)})
    plot_calibration(cal, png)

    from rich.table import Table

    table = Table(show_edge=False)
    for col in ("lr", "γ", "nβ", *[f"λ̂ @ {s}" for s in cal.steps], "ESS/s", "result"):
        table.add_column(col, justify="left" if col == "result" else "right")
    for g, p in enumerate(cal.points):
        cells = [f"{r.llc_mean:.3g} ± {r.llc_se:.2g}" for r in cal.results[g]]
        failed = sorted({k for r in cal.results[g] for k in failed_checks(r)})
        result = ("RECOMMENDED" if g == cal.recommended else "pass" + (", plateau" if cal.on_plateau[g] else "")) \
            if cal.passed[g] else "fail: " + ", ".join(failed)
        table.add_row(f"{p['lr']:g}", f"{p['localization']:g}", f"{p['nbeta']:.4g}", *cells,
                      f"{cal.ess_per_second[g]:.0f}", result)
    stdout_console().print(table)
    for line in cal.advice:
        typer.echo(f"note: {line}")
    typer.echo(f"wrote {out}, {png}")
    if cal.recommended is None:
        typer.echo("no configuration passed: nothing recommended (see the notes above)")
        raise typer.Exit(1)
    cal.write_toml(toml)
    best = cal.points[cal.recommended]
    typer.echo(f"recommended: lr {best['lr']:g}, localization {best['localization']:g}, nbeta {best['nbeta']:.4g} "
               f"→ {toml} (slt-probe walk ... --config {toml})")



# ----------------------------------------------------------------------------------------------------------
# train and demo


@app.command()
def train(
    out_dir: str = typer.Argument("checkpoints/run", help="run folder: step_N.pt, model.json, data.npy, train_log.json"),
    config: Optional[str] = typer.Option(None, help="TOML/JSON of TrainConfig fields ([corpus] table for the corpus)"),
    steps: Optional[int] = typer.Option(None, help="training steps"),
    seed: Optional[int] = typer.Option(None, help="seed of initialisation, data order and corpus mix"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    debug: bool = typer.Option(False, help="show Python tracebacks"),
):
    """Train the demo's 2-layer attention-only transformer on CPython's standard library (byte level)."""
    from dataclasses import replace

    from slt_probe.errors import InputError
    from slt_probe.inputs import read_kwargs
    from slt_probe.train import TrainConfig, train_demo

    try:
        cfg = TrainConfig.from_dict(read_kwargs(config)) if config else TrainConfig()
        cfg = replace(cfg, **{k: v for k, v in dict(steps=steps, seed=seed).items() if v is not None})
    except (InputError, TypeError, ValueError) as e:
        fail(f"{config or 'config'}: {e}", debug)
    with sampling_progress(quiet) as bar:
        task = bar.add_task("training", total=cfg.steps)
        result = train_demo(cfg, out_dir, progress=lambda step, total, row: bar.update(task, completed=step))
    last = result.log[-1] if result.log else {}
    typer.echo(f"{len(result.checkpoints)} checkpoints in {out_dir} ({result.seconds:.0f} s); last log: {last}")


@app.command()
def demo(
    out_dir: str = typer.Argument("checkpoints/demo", help="where the run, results.h5 and curves.png go"),
    quick: bool = typer.Option(False, help="a small version of the same pipeline (about a minute)"),
    quiet: bool = typer.Option(False, help="no progress bars"),
):
    """Train a small transformer, walk its checkpoints with probes, find its developmental stages, and plot."""
    from slt_probe.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if quick else DemoConfig()
    bar = walk_progress(quiet)
    tasks = {}

    def progress(phase, done, total):
        bar.start()
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    try:
        report = run_demo(out_dir, cfg, progress=progress)
    finally:
        bar.stop()
    typer.echo(f"trained in {report.seconds['train']:.0f} s, walked {len(report.steps)} checkpoints in "
               f"{report.seconds['walk']:.0f} s → {report.results}, {report.plot}")
    def flagged(match, curve):
        if match is None:
            return f"{curve}: no transition within ±1 checkpoint"
        kind = f"type {match['type']}" if match["what"] == "spurt" else match["kind"]
        return (f"{curve}: a {match['what']} ({kind}) at step {match['step']}, confidence "
                f"{match['confidence']:.2f}{' (tentative)' if match['tentative'] else ''}, within ±1 checkpoint")

    for name, label in (("prev_token", "previous-token heads"), ("prefix_matching", "induction heads")):
        at = report.onsets[name]
        typer.echo(f"{label}: onset at step {at if at is not None else '— (no onset)'} "
                   f"(half-way from the start: {report.onsets_halfway[name]})")
        typer.echo(f"  {flagged(report.aligned[name], 'λ̂ of the whole model')}")
        if name in report.aligned_refined:
            r = report.aligned_refined[name]
            typer.echo(f"  {flagged(r['transition'], 'refined λ̂ of ' + r['component'] + ' (its best head at the onset)')}")
    for s in report.stages:
        typer.echo(f"  stage {s['start_step']:>6} → {s['end_step']:<6} type {s['type']:<5}"
                   f" Δλ̂ {s['dllc']:+.2f}  Δloss {s['dloss']:+.3f}{'  hidden' if s['hidden'] else ''}")
    for b in report.boundaries:
        typer.echo(f"  boundary at step {b['step']} ({b['kind']}, confidence {b['confidence']:.2f}"
                   f"{', tentative' if b['tentative'] else ''}{', hidden' if b['hidden'] else ''})")
    for sp in report.spurts:
        typer.echo(f"  spurt at step {sp['step']} (type {sp['type']}, Δλ̂ {sp['dllc']:+.2f} over {sp['start_step']} → "
                   f"{sp['end_step']}, Δloss {sp['dloss']:+.3f}, confidence {sp['confidence']:.2f}"
                   f"{', tentative' if sp['tentative'] else ''}{', hidden' if sp['hidden'] else ''})")
    for component, r in report.refined.items():
        typer.echo(f"refined λ̂ of {component} ({r['params']}):")
        for b in r["boundaries"]:
            typer.echo(f"  boundary at step {b['step']} ({b['kind']}, confidence {b['confidence']:.2f}"
                       f"{', tentative' if b['tentative'] else ''})")
        for sp in r["spurts"]:
            typer.echo(f"  spurt at step {sp['step']} (type {sp['type']}, Δλ̂ {sp['dllc']:+.2f} over {sp['start_step']}"
                       f" → {sp['end_step']}, confidence {sp['confidence']:.2f}{', tentative' if sp['tentative'] else ''})")


if __name__ == "__main__":
    app()
