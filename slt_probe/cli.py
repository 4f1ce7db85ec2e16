"""The `slt-probe` command line: each command parses its options, calls one library function, prints what it returns.

The library never prints; this does. Bad input (an InputError, or a ValueError from a config) is one red line and
exit code 2, the traceback only with --debug. Everything is printed literally: paths, specs and messages may hold
[brackets] and :colons:, so no console here reads Rich markup or emoji codes (plain_console).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from slt_probe.analysis.plot import plot_results
from slt_probe.analysis.transitions import TransitionConfig, Transitions
from slt_probe.demo import DemoConfig, TrainConfig, run_demo, train_demo
from slt_probe.engine.dln import check_dln, dln_problem
from slt_probe.engine.sampler import SGLDConfig
from slt_probe.errors import InputError, OutputError
from slt_probe.inputs.checkpoints import revision_steps
from slt_probe.inputs.curves import is_table
from slt_probe.inputs.specs import RunSpec, sgld_config
from slt_probe.runs.calibrate import RUNS, CalibrationGrid, calibrate_folder
from slt_probe.runs import distributed
from slt_probe.runs.detect import detect_and_store, detect_in_csv
from slt_probe.runs.walker import plan, walk_folder
from slt_probe.store import EXTERNAL_ENGINE, load_results, versions

app = typer.Typer(help="Local learning coefficient (LLC) estimation for developmental interpretability.",
                  no_args_is_help=True, add_completion=False)


def plain_console(**kwargs) -> Console:
    """A Rich console that prints text as given: no markup ([lr=1e-3] stays, [/z] cannot crash it), no emoji codes
    (:factory: stays), no highlighting. Styling is asked for explicitly, with style=."""
    return Console(markup=False, emoji=False, highlight=False, **kwargs)


console = plain_console(stderr=True)

# options shared by the commands that build a model and data from the command line (walk, calibrate)
Model = Annotated[Optional[str], typer.Option(help="path/to/file.py:factory or package.module:factory, or a "
                                                   "TransformerLens config.json")]
ModelConfig = Annotated[Optional[str], typer.Option(help="JSON/TOML file of keyword arguments for the factory")]
DataSpec = Annotated[Optional[str], typer.Option("--data", help=".npy | .bin | .pt | .npz | file.h5:dataset | text file")]
Context = Annotated[Optional[int], typer.Option(help="window length for 1-D token streams and text")]
Tokenizer = Annotated[Optional[str], typer.Option(help="text files: 'byte', a tokenizer.json, or a tokenizer folder")]
Loss = Annotated[Optional[str], typer.Option(help="file.py:fn, loss_fn(model, batch) -> mean loss; or targets: the "
                                                  "model's own, model(x, targets=y) -> (logits, loss), as nanoGPT's "
                                                  "(default: next-token cross-entropy)")]
Quiet = Annotated[bool, typer.Option(help="no progress bar")]
Debug = Annotated[bool, typer.Option(help="show Python tracebacks")]
AsJson = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
ResultsArg = Annotated[str, typer.Argument(help="HDF5 file written by slt-probe walk")]


# ----------------------------------------------------------------------------------------------------------
# printing


def fail(message: str, debug: bool) -> None:
    """Bad input: one line, exit code 2; the traceback only with --debug."""
    if debug:
        raise
    console.print(f"error: {message}", style="red", soft_wrap=True)
    raise typer.Exit(2)


def say(text: str) -> None:
    """A line on stderr, beside the progress bars, read literally (paths may hold [brackets])."""
    console.print(text, soft_wrap=True)


def stdout_console() -> Console:
    """Tables for people: no folding at 80 columns when piped or captured."""
    out = plain_console(soft_wrap=True)
    return out if out.is_terminal else plain_console(soft_wrap=True, width=200)


def table(rows: list, columns: list[tuple[str, Callable[[Any], str], bool]], title: Optional[str] = None) -> Table:
    """A Rich table of `rows`: columns are (header, cell text of a row, right-aligned). Cells are Text, read
    literally on any console (a failed row's message holds a path)."""
    t = Table(show_edge=False, title=None if title is None else Text(title), title_justify="left")
    for header, _, right in columns:
        t.add_column(Text(header), justify="right" if right else "left")
    for row in rows:
        t.add_row(*[Text(cell(row)) for _, cell, _ in columns])
    return t


def progress_bar(quiet: bool, unit: str = "") -> Progress:
    """Descriptions are read literally (markup=False), like everything else printed here."""
    return Progress(TextColumn("{task.description:>14}", markup=False), BarColumn(),
                    TextColumn("{task.completed}/{task.total}" + unit, markup=False), TimeElapsedColumn(),
                    TextColumn("ETA", markup=False), TimeRemainingColumn(), console=console, disable=quiet)


def tracked(bar: Progress, description: str) -> Callable[[int, int], None]:
    """progress(done, total) callbacks drawn as one task of `bar`."""
    task = bar.add_task(description, total=None)
    return lambda done, total: bar.update(task, completed=done, total=total)


def checkpoint_line(row: dict, skipped: bool = False) -> str:
    if row["status"] != "ok":
        return f"step {row['step']:>8}  FAILED  {row['message']}"
    tag = "  (already done)" if skipped else f"  {row['seconds']:.1f} s"
    return (f"step {row['step']:>8}  loss {row['init_loss']:.4f}  λ̂ {row['llc_mean']:.3f} ± {row['llc_se']:.3f}  "
            f"{row['verdict']}{tag}")


def _confidence(confidence: float, tentative: bool) -> str:
    return f"{confidence:.2f}" + (" (tentative)" if tentative else "")


STAGE_COLUMNS = [
    ("stage (steps)", lambda r: f"{r['start_step']} → {r['end_step']}", False),
    ("type", lambda r: r["type"], False),
    ("Δλ̂ ± s.e.", lambda r: f"{r['dllc']:+.3g} ± {r['dllc_se']:.2g}", True),
    ("Δloss", lambda r: f"{r['dloss']:+.3g}", True),
    ("hidden", lambda r: "hidden" if r["hidden"] else "", False),
    ("ends at boundary", lambda r: "" if r["boundary_step"] is None else str(r["boundary_step"]), True),
    ("kind", lambda r: r["boundary_kind"] or "", False),
    ("confidence", lambda r: "" if r["boundary_step"] is None else
     _confidence(r["boundary_confidence"], r["boundary_tentative"]), True),
]
SPURT_COLUMNS = [
    ("step", lambda sp: str(sp.step), True),
    ("type", lambda sp: sp.type, False),
    ("dλ̂/dlog₁₀ t", lambda sp: f"{sp.rate:+.3g}", True),
    ("window (steps)", lambda sp: f"{sp.start_step} → {sp.end_step}", False),
    ("Δλ̂ ± s.e.", lambda sp: f"{sp.dllc:+.3g} ± {sp.dllc_se:.2g}", True),
    ("Δloss", lambda sp: f"{sp.dloss:+.3g}", True),
    ("hidden", lambda sp: "hidden" if sp.hidden else "", False),
    ("confidence", lambda sp: _confidence(sp.confidence, sp.tentative), True),
]


HEAD_COLUMNS = [  # one row per (head, spurt): many heads, one table
    ("head", lambda r: r[0], False),
    ("stages", lambda r: r[1], True),
    ("spurt at step", lambda r: "" if r[2] is None else str(r[2].step), True),
    ("type", lambda r: "" if r[2] is None else r[2].type + (" (hidden)" if r[2].hidden else ""), False),
    ("Δλ̂ ± s.e.", lambda r: "" if r[2] is None else f"{r[2].dllc:+.3g} ± {r[2].dllc_se:.2g}", True),
    ("confidence", lambda r: "" if r[2] is None else _confidence(r[2].confidence, r[2].tentative), True),
]


def print_head_transitions(found: dict[str, Transitions | ValueError], out: Console) -> None:
    """The heads' stages and spurts in one table: a row per spurt, a head without one on a row of its own."""
    rows = []
    for name, t in found.items():
        if isinstance(t, ValueError):
            rows.append((name, "–", None))
            continue
        stages = str(len(t.stages))
        rows += [(name, stages, sp) for sp in t.spurts] or [(name, stages, None)]
    out.print(table(rows, HEAD_COLUMNS, "refined λ̂ of each head: stages and spurts"))


def print_transitions(t: Transitions, out: Console) -> None:
    out.print(table(t.table(), STAGE_COLUMNS, "developmental stages"))
    if t.spurts:
        out.print(table(t.spurts, SPURT_COLUMNS, "spurts (where λ̂ changes fastest)"))
    if t.noise.get("agrees"):  # otherwise a note says where the noise scale came from
        what = "the stated s.e." if t.noise["source"] == "stated" else "the chains' s.e."
        out.print(f"noise: {what}, which the curve's own scatter confirms (scatter / s.e. "
                  f"{t.noise['scatter_ratio']:.2f}, within ×{t.noise['se_factor']:g})")
    for note in t.notes:
        out.print(f"note: {note}")


def command_line(ctx: typer.Context) -> str:
    """The invoked command, rebuilt from its parsed parameters (sys.argv is not it inside notebooks or tests): a
    shell command that, run again, parses to the same parameters.

    Only what was given appears (not the defaults); a repeatable option once per value; a flag in the form given
    (--no-transitions); values shell-quoted. An argument that starts with '-' follows the options after '--'.
    """
    arguments, options = [], []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        source = ctx.get_parameter_source(param.name)  # a ParameterSource of Click, or of Typer's copy of it
        given = source.name not in ("DEFAULT", "DEFAULT_MAP") if source is not None else value != param.default
        if not given:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [] if value is None else [value]
        if not values:  # None, or a repeatable option given no value
            continue
        if param.param_type_name == "argument":
            arguments += [str(v) for v in values]
        elif getattr(param, "is_flag", False) and isinstance(value, bool):
            if value or param.secondary_opts:  # True: the first form (--overwrite), False: the second (--no-...)
                options.append(param.opts[0] if value else param.secondary_opts[0])
        elif getattr(param, "multiple", False) or param.nargs == 1:
            for v in values:  # --refine a=x --refine b=y
                options += [param.opts[0], str(v)]
        else:  # an option of several values at once
            options += [param.opts[0], *map(str, values)]
    if any(a.startswith("-") for a in arguments):
        parts = [*options, "--", *arguments]
    else:
        parts = [*arguments, *options]
    return shlex.join(["slt-probe", ctx.info_name or "walk", *parts])


def parse_list(text: Optional[str], option: str, kind: type) -> Optional[list]:
    """--steps 100,200 / --lr 1e-4,3e-4: comma-separated values of `kind`; None stays None."""
    if text is None:
        return None
    try:
        return [kind(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise InputError(f"{option} expects comma-separated {what}, got {text!r}") from None


def parse_refine(items: Optional[list[str]]) -> list:
    """--refine heads | layers | NAME=REGEX, repeated -> ["heads", ("NAME", "REGEX"), ...] (walk's refine)."""
    out = []
    for item in items or []:
        if item.strip() in ("heads", "layers"):
            out.append(item.strip())
            continue
        name, sep, pattern = item.partition("=")
        if not sep or not name.strip() or not pattern or "/" in name:
            raise InputError(f"--refine {item!r}: expected heads, layers or NAME=REGEX, e.g. layer0='^blocks\\.0\\.'")
        out.append((name.strip(), pattern))
    return out


# ----------------------------------------------------------------------------------------------------------
# the commands


@app.command()
def version():
    """Print the versions of slt-probe and the libraries it runs on."""
    v = versions()
    typer.echo(f"slt-probe {v['slt-probe']}  torch {v['torch']}  devinterp {v['devinterp']}")


@app.command()
def validate(
    widths: Annotated[str, typer.Option(help="DLN widths: input,hidden...,output")] = "8,6,4,8",
    draws: Annotated[Optional[int], typer.Option(help="kept draws per chain (default: the problem's)")] = None,
    chains: Annotated[Optional[int], typer.Option(help="number of chains")] = None,
    seed: Annotated[int, typer.Option(help="seed of the sampler")] = 0,
    method: Annotated[str, typer.Option(help="auto | vmap | loop")] = "auto",
    sampler: Annotated[str, typer.Option(help="sgld | rmsprop (RMSProp-preconditioned SGLD)")] = "sgld",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:i]")] = "auto",
    as_json: AsJson = False,
    quiet: Quiet = False,
):
    """Estimate λ̂ on a deep linear network whose learning coefficient is known in closed form (Aoyagi)."""
    overrides = {k: v for k, v in dict(draws=draws, chains=chains).items() if v is not None}
    try:
        problem = dln_problem([int(w) for w in widths.split(",")], sampler=sampler)
    except ValueError as e:
        fail(f"--widths {widths!r}: {e}", False)
    try:
        with progress_bar(quiet or as_json, " steps") as bar:
            check = check_dln(problem, progress=tracked(bar, "SGLD"), seed=seed, method=method, device=device,
                              **overrides)
    except ValueError as e:
        fail(str(e), False)
    problem, r = check.problem, check.result
    d = r.diagnostics
    if as_json:
        typer.echo(json.dumps({"reference": problem.name, "llc_theory": problem.llc, "llc_mean": r.llc_mean,
                               "llc_se": r.llc_se, "llc_per_chain": r.llc_per_chain.tolist(), "verdict": d.verdict,
                               "reasons": d.reasons, "config": r.config.to_dict()}))
        return
    cfg = r.config
    typer.echo(f"{problem.name}: {r.num_params} parameters")
    typer.echo(f"  {'λ (Aoyagi)':<13}{problem.llc:.3f}")
    label = "λ̂ (SGLD)" if cfg.sampler == "sgld" else "λ̂ (RMSProp)"  # 14: λ̂ is two code points, one column
    typer.echo(f"  {label:<14}{r.llc_mean:.3f} ± {r.llc_se:.3f} s.e.  ({100 * check.relative_error:+.1f}%)")
    typer.echo(f"  nβ {cfg.nbeta:.1f}  lr {cfg.lr:g}  γ {cfg.localization:g}  {cfg.chains} chains × {cfg.draws} draws "
               f"(+{cfg.burnin} burn-in), {d.method}, {r.seconds:.1f} s")
    typer.echo(f"  R-hat {d.rhat:.3f}  ESS {d.ess_bulk:.0f}  MALA acceptance {d.acceptance:.3f}  verdict {d.verdict}")
    for reason in d.reasons:
        typer.echo(f"    - {reason}")


# the command's earlier name: the closed form is the reference
app.command("reference", hidden=True, help="The old name of `validate`.")(validate)


@app.command()
def walk(
    ctx: typer.Context,
    ckpt_dir: Annotated[str, typer.Argument(help="folder of checkpoints (files or Hugging Face checkpoint folders)")],
    out: Annotated[str, typer.Option("--out", "-o", help="HDF5 results file (resumed when it exists)")] = "results.h5",
    model: Model = None,
    model_config: ModelConfig = None,
    data: DataSpec = None,
    context: Context = None,
    tokenizer: Tokenizer = None,
    loss: Loss = None,
    config: Annotated[Optional[str], typer.Option(help="TOML/JSON file of SGLD settings; command-line options win")] = None,
    lr: Annotated[Optional[float], typer.Option(help="ε, SGLD step size [1e-4]")] = None,
    localization: Annotated[Optional[float], typer.Option(help="γ, pull back to the checkpoint [100]")] = None,
    nbeta: Annotated[Optional[float], typer.Option(help="nβ, inverse temperature × n (default: n / log n)")] = None,
    chains: Annotated[Optional[int], typer.Option(help="number of chains [4]")] = None,
    draws: Annotated[Optional[int], typer.Option(help="kept draws per chain [200]")] = None,
    burnin: Annotated[Optional[int], typer.Option(help="burn-in steps discarded per chain [50]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="minibatch size [32]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of minibatches and noise, shared by all checkpoints [0]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda[:i] [auto]")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="sampling precision: float32 | float64 | bfloat16 (forward and "
                                                      "backward under bf16 autocast, chains in float32) [float32]")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="split each minibatch into K micro-batches, one "
                                                           "forward/backward each, for batches that do not fit [1]")] = None,
    chain_group: Annotated[Optional[int], typer.Option(help="chains sampled at once; 1: one after another, the least "
                                                            "memory; the numbers do not change (default: as many as "
                                                            "half the free memory holds)")] = None,
    method: Annotated[Optional[str], typer.Option(help="auto | vmap | loop [auto]")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="sgld | rmsprop (RMSProp-preconditioned SGLD) [sgld]")] = None,
    mala_every: Annotated[Optional[int], typer.Option(help="measure MALA acceptance every k steps, 0 = off [10]")] = None,
    params: Annotated[Optional[str], typer.Option(help="sample only the parameters whose names match this regex: "
                                                       "the refined λ̂ of a component [all]")] = None,
    refine: Annotated[Optional[list[str]], typer.Option(help="also a refined λ̂ at each checkpoint (repeatable): heads "
                                                             "(one per attention head), layers, or NAME=REGEX (the "
                                                             "parameters matching REGEX)")] = None,
    engine: Annotated[str, typer.Option(help="slt | devinterp")] = "slt",
    steps: Annotated[Optional[str], typer.Option(help="only these steps, e.g. 100,200,400")] = None,
    revisions: Annotated[Optional[str], typer.Option(help="hub cache: only the snapshots these refs name, e.g. "
                                                          "step1000,step3000")] = None,
    every: Annotated[Optional[int], typer.Option(help="every K-th checkpoint (and the last)")] = None,
    max_checkpoints: Annotated[Optional[int], typer.Option(help="at most N checkpoints, log-spaced in step")] = None,
    dry_run: Annotated[bool, typer.Option(help="list what would be walked and stop")] = False,
    overwrite: Annotated[bool, typer.Option(help="start again when --out holds a different walk")] = False,
    wait: Annotated[bool, typer.Option(help="when another process is writing --out, wait for it instead of "
                                            "stopping")] = False,
    find_transitions: Annotated[bool, typer.Option("--transitions/--no-transitions", help="detect developmental "
                                                   "stages at the end (slt-probe transitions)")] = True,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (1 is often fastest for small models "
                                                        "on a busy machine)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar or per-checkpoint lines")] = False,
    debug: Debug = False,
):
    """Estimate λ̂ at every checkpoint in CKPT_DIR, with the same settings, into one HDF5 file.

    Under torchrun (`torchrun --nproc_per_node N -m slt_probe walk ...`) the ranks share the work; rank 0 shows one
    progress bar for the whole walk and prints the summary, the others print only their errors."""
    if threads:
        torch.set_num_threads(threads)
    torchrun = distributed.launched()
    rank = int(os.environ.get("RANK", "0")) if torchrun else 0
    bar = progress_bar(quiet or rank != 0)  # started by the first event: a refused resume prints only its error
    outer = bar.add_task("checkpoints", total=None)
    inner = bar.add_task("SGLD", total=None, visible=False)

    def on_event(kind, **info):
        bar.start()
        if kind == "start":
            bar.update(inner, completed=0, visible=True, description=f"step {info['checkpoint'].step}")
        elif kind == "steps":
            bar.update(inner, completed=info["done"], total=info["total"])
        elif kind == "units":  # torchrun: every rank's finished units, counted in the job's store
            bar.update(outer, completed=info["done"], total=info["total"], description="units")
        elif kind in ("done", "skip"):
            bar.update(inner, visible=False)
            if torchrun:  # a line for each of rank 0's own checkpoints only would say less than the bar
                return
            bar.update(outer, completed=info["index"] + 1)
            if not quiet:
                bar.console.print(checkpoint_line(info["row"], skipped=kind == "skip"), soft_wrap=True)

    try:
        cfg = sgld_config(config, dict(lr=lr, localization=localization, nbeta=nbeta, chains=chains, draws=draws,
                                       burnin=burnin, batch_size=batch_size, seed=seed, device=device, dtype=dtype,
                                       grad_accum=grad_accum, chain_group=chain_group, method=method, sampler=sampler, mala_every=mala_every,
                                       params=params))
        components = parse_refine(refine)
        selection = dict(steps=parse_list(steps, "--steps", int), every=every, max_checkpoints=max_checkpoints)
        named = {}  # step -> the revisions naming it
        if revisions is not None:
            if steps is not None:
                raise InputError("--steps and --revisions both say which checkpoints to walk: give one of them")
            for rev, step in revision_steps(ckpt_dir, parse_list(revisions, "--revisions", str)).items():
                named.setdefault(step, []).append(rev)
            selection["steps"] = sorted(named)
        todo, found, skipped = plan(ckpt_dir, **selection)
        if dry_run:
            if rank != 0:
                return
            for path, why in skipped:
                typer.echo(f"skip  {path}  ({why})")
            for c in todo:
                typer.echo(f"{c.step:>10}  {c.format:<12} {c.path}" + (f"  ({', '.join(named[c.step])})"
                                                                       if c.step in named else ""))
            typer.echo(f"{len(todo)} of {len(found)} checkpoints would be walked")
            return
        bar.update(outer, total=len(todo))
        spec = RunSpec(model, model_config, data, context, tokenizer, loss)
        with contextlib.ExitStack() as job:
            ranks = None
            if torchrun:  # this rank's device: its own GPU (cuda:LOCAL_RANK), or the CPU with gloo
                ranks, rank_device = job.enter_context(distributed.process_group(cfg.device))
                cfg = replace(cfg, device=rank_device)
            summary = walk_folder(ckpt_dir, out, spec, cfg, engine=engine, refine=components, overwrite=overwrite,
                                  detect=find_transitions, command=command_line(ctx), on_event=on_event, wait=wait,
                                  ranks=ranks, **selection)
    except (InputError, OutputError, ValueError) as e:
        fail(str(e) if rank == 0 else f"rank {rank}: {e}", debug)
    finally:
        bar.stop()
    if rank != 0:  # rank 0 reports the whole walk
        return
    if not quiet:
        say(f"{summary.computed} estimated, {summary.skipped} already done → {out}")
    heads = {name: t for name, t in summary.transitions.items() if name in summary.heads}
    for name, t in summary.transitions.items():  # the LLC, then each refined λ̂ (the heads in one table, below)
        if name in heads:
            continue
        label = "λ̂" if name is None else f"refined λ̂ of {name}"
        if isinstance(t, ValueError):  # too few checkpoints, one chain: the walk itself is fine
            say(f"transitions in {label}: not detected ({t})")
        elif not quiet:
            if name is not None:
                say(f"{label} ({summary.components[name]}):")
            print_transitions(t, console)
    if heads and not quiet:
        print_head_transitions(heads, console)
    if summary.failed:
        console.print(f"{len(summary.failed)} of {summary.total} checkpoints failed:", style="red")
        for f in summary.failed:
            say(f"  {f['message']}")
    nothing = summary.nothing_estimated
    if nothing:
        console.print(nothing, style="red", soft_wrap=True)
    if summary.failed or nothing:
        raise typer.Exit(1)


@app.command()
def inspect(results: ResultsArg, as_json: AsJson = False, debug: Debug = False):
    """Print a results file's configuration and its per-checkpoint table."""
    try:
        res = load_results(results)
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
    model, data, source = a.get("model", {}), a.get("data", {}), a.get("source")
    if a.get("engine") == EXTERNAL_ENGINE and isinstance(source, dict):  # a curve read from a table: nothing sampled
        columns = source.get("columns") or {}
        lines = (f"{results}  {len(t)} checkpoints, engine external (a λ̂ curve read from a table), "
                 f"created {a.get('created')}",
                 f"  command: {a.get('command', '')}",
                 f"  source:  {source.get('csv', '')}  sha256 {str(source.get('sha256', ''))[:12]}",
                 "  columns: " + "  ".join(f"{role} {name!r}" for role, name in columns.items() if name))
    else:
        lines = (f"{results}  {len(t)} checkpoints, engine {a.get('engine')} ({a.get('method')}), "
                 f"device {a.get('device')}, created {a.get('created')}",
                 f"  command: {a.get('command', '')}",
                 "  config:  " + "  ".join(f"{k} {v}" for k, v in a.get("config_resolved", {}).items()),
                 f"  model:   {model.get('spec', model.get('class', ''))}  ({a.get('num_params')} parameters)",
                 f"  data:    {data.get('path', '')}  {a.get('num_samples')} samples  "
                 f"sha256 {str(data.get('sha256', ''))[:12]}")
    for line in lines:
        out.print(line)

    def ok(r, cell):
        return cell(r) if r.status == "ok" else ""

    def short(reasons: str) -> str:
        return "; ".join(re.split(r":| \(", reason)[0] for reason in reasons.split("; ") if reason)

    out.print(table(list(t.itertuples()), [
        ("step", lambda r: str(r.step), True), ("status", lambda r: r.status, False),
        ("loss", lambda r: ok(r, lambda r: f"{r.init_loss:.4f}"), True),
        ("λ̂", lambda r: ok(r, lambda r: f"{r.llc_mean:.3f}"), True),
        ("± s.e.", lambda r: ok(r, lambda r: f"{r.llc_se:.3f}"), True),
        ("verdict", lambda r: ok(r, lambda r: r.verdict), False),
        ("reasons", lambda r: short(r.reasons) if r.status == "ok" else r.message, False),
    ]), soft_wrap=False, crop=False)
    if (t.verdict != "ok").any():
        out.print("  (full reasons: --json, or the `reasons` dataset)")


@app.command()
def transitions(
    ctx: typer.Context,
    results: Annotated[str, typer.Argument(help="HDF5 file written by slt-probe walk, or a CSV/TSV of a λ̂ curve "
                                                "(.csv, .tsv, .txt, or any file that is not HDF5)")],
    step: Annotated[Optional[str], typer.Option(help="CSV/TSV input: the step column (default: the one named "
                                                     "step, _step, Step, global_step or trainer/global_step)")] = None,
    llc: Annotated[Optional[str], typer.Option(help="CSV/TSV input: the λ̂ column (default: the one named llc, "
                                                    "llc_mean or lambda_hat)")] = None,
    se: Annotated[Optional[str], typer.Option(help="CSV/TSV input: the column of λ̂'s standard error (none: the "
                                                   "noise is estimated from the curve's scatter)")] = None,
    loss: Annotated[Optional[str], typer.Option(help="CSV/TSV input: the loss column (types the stages A / B "
                                                     "and finds hidden ones)")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="CSV/TSV input: the results file the curve is "
                                                                   "written to [<name>.h5 here]")] = None,
    plot_file: Annotated[Optional[str], typer.Option("--plot", help="also draw the curve and its stages to this "
                                                                    "image (.png, .pdf, .svg)")] = None,
    trust_se: Annotated[bool, typer.Option("--trust-se", help="use the stated s.e. as given, even where the "
                                                              "curve's own scatter disagrees")] = False,
    k_se: Annotated[Optional[float], typer.Option(help="a stage's |Δλ̂| must exceed this many s.e. [3]")] = None,
    hidden_loss_frac: Annotated[Optional[float], typer.Option(help="hidden: |Δloss| below this fraction of the "
                                                                   "run's loss drop [0.05]")] = None,
    plateau_tol: Annotated[Optional[float], typer.Option(help="plateau: |dλ̂/dlog t| below this fraction of the "
                                                              "neighbouring slopes [0.2]")] = None,
    spurt_drop: Annotated[Optional[float], typer.Option(help="spurt: |dλ̂/dlog t| falls below this fraction of its "
                                                             "peak on both sides [0.5]")] = None,
    spurt_k_se: Annotated[Optional[float], typer.Option(help="spurt: its peak stands this many s.e. above its "
                                                             "base [4]")] = None,
    resamples: Annotated[Optional[int], typer.Option(help="bootstrap resamples for the confidence [200]")] = None,
    min_confidence: Annotated[Optional[float], typer.Option(help="boundaries reproduced less often are tentative "
                                                                 "[0.8]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of the bootstrap [0]")] = None,
    refined: Annotated[Optional[str], typer.Option(help="detect them in this refined λ̂ curve (walk --refine "
                                                        "NAME=...) instead of the whole model's")] = None,
    as_json: AsJson = False,
    debug: Debug = False,
):
    """Find stage boundaries in the λ̂ curve, type the stages (A / B), and store them in the results file.

    A λ̂ curve from elsewhere (a published one, a wandb export) is read from a CSV/TSV table and first written as a
    results file (--out), e.g. slt-probe transitions curve.csv --step _step --llc llc/mean --se llc/se --loss loss
    """
    options = dict(k_se=k_se, hidden_loss_frac=hidden_loss_frac, plateau_tol=plateau_tol, spurt_drop=spurt_drop,
                   spurt_k_se=spurt_k_se, resamples=resamples, min_confidence=min_confidence, seed=seed,
                   trust_se=trust_se or None)
    columns = dict(step=step, llc=llc, se=se, loss=loss)
    table = is_table(results)
    try:
        given = [f"--{k}" for k, v in {**columns, "out": out}.items() if v is not None]
        if not table and given:
            raise InputError(f"{results}: is a results file (HDF5), not a CSV/TSV curve: leave out {', '.join(given)}")
        if table and refined is not None:
            raise InputError(f"{results}: --refined is only for a results file; a CSV/TSV curve has no refined λ̂")
        cfg = replace(TransitionConfig(), **{k: v for k, v in options.items() if v is not None})
        if table:
            t, path = detect_in_csv(results, out or f"{Path(results).stem}.h5", **columns, config=cfg,
                                    command=command_line(ctx))
        else:
            t, path = detect_and_store(results, cfg, refined=refined), results
        image = plot_results(path, plot_file) if plot_file else None
    except (OSError, ValueError) as e:
        # errors of the input and the output name their file; the rest are about `results`
        fail(str(e) if isinstance(e, (InputError, OutputError)) else f"{results}: {e}", debug)
    if table:
        say(f"wrote {path}")
    if image is not None:
        say(f"wrote {image}")
    if as_json:
        typer.echo(json.dumps({"boundaries": [asdict(b) for b in t.boundaries], "stages": [asdict(s) for s in t.stages],
                               "spurts": [asdict(sp) for sp in t.spurts], "params": asdict(t.config),
                               "smoothing": t.smoothing, "notes": t.notes, "noise": t.noise, "results": str(path)}))
        return
    print_transitions(t, stdout_console())


@app.command()
def plot(
    results: ResultsArg,
    out: Annotated[str, typer.Option("--out", "-o", help="image file (.png, .pdf, .svg)")] = "curves.png",
    title: Annotated[Optional[str], typer.Option(help="figure title")] = None,
    debug: Debug = False,
):
    """Draw λ̂ ± s.e. and the loss against step, with the stages and any behavioural probes."""
    try:
        path = plot_results(results, out, title=title)
    except (OSError, ValueError) as e:
        fail(f"{results}: {e}", debug)
    typer.echo(f"wrote {path}")


@app.command()
def calibrate(
    ckpt_dir: Annotated[str, typer.Argument(help="folder of checkpoints")],
    model: Model = None,
    model_config: ModelConfig = None,
    data: DataSpec = None,
    context: Context = None,
    tokenizer: Tokenizer = None,
    loss: Loss = None,
    at: Annotated[str, typer.Option(help="which checkpoints: first (past 1% of the run), middle, last")] = \
        "first,middle,last",
    steps: Annotated[Optional[str], typer.Option(help="calibrate at these steps instead, e.g. 100,1000")] = None,
    lr_grid: Annotated[Optional[str], typer.Option("--lr", help="step sizes ε to try (default: sgld 1e-5,3e-5,1e-4,3e-4,1e-3; "
                                                   "rmsprop ten times smaller)")] = None,
    localization_grid: Annotated[str, typer.Option("--localization", help="localizations γ to try")] = "30,100,300",
    nbeta_grid: Annotated[Optional[str], typer.Option("--nbeta", help="nβ values to try (default: n / log n)")] = None,
    chains: Annotated[int, typer.Option(help="chains per grid point")] = 4,
    draws: Annotated[int, typer.Option(help="kept draws per chain")] = 200,
    burnin: Annotated[int, typer.Option(help="burn-in steps")] = 50,
    batch_size: Annotated[int, typer.Option(help="minibatch size")] = 32,
    seed: Annotated[int, typer.Option(help="seed of minibatches and noise")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:i]")] = "auto",
    sampler: Annotated[str, typer.Option(help="sgld | rmsprop (RMSProp-preconditioned SGLD)")] = "sgld",
    sequential: Annotated[bool, typer.Option(help="one grid point at a time instead of one batched run")] = False,
    out: Annotated[str, typer.Option("--out", "-o", help="the full sweep (HDF5)")] = "calibration.h5",
    toml: Annotated[str, typer.Option(help="the recommendation, for walk --config")] = "calibration.toml",
    png: Annotated[str, typer.Option(help="λ̂ against lr, and the loss traces")] = "calibration.png",
    quiet: Quiet = False,
    debug: Debug = False,
):
    """Sweep lr × localization (× nbeta) at a few checkpoints and recommend SGLD settings, with the evidence."""
    try:
        grid = CalibrationGrid(lr=parse_list(lr_grid, "--lr", float),
                               localization=parse_list(localization_grid, "--localization", float),
                               nbeta=parse_list(nbeta_grid, "--nbeta", float))
        cfg = SGLDConfig(chains=chains, draws=draws, burnin=burnin, batch_size=batch_size, seed=seed, device=device,
                         sampler=sampler)
        with progress_bar(quiet) as bar:
            cal = calibrate_folder(ckpt_dir, RunSpec(model, model_config, data, context, tokenizer, loss), grid=grid,
                                   config=cfg, at=at, steps=parse_list(steps, "--steps", int),
                                   vectorize=not sequential, out=out, toml=toml, png=png,
                                   progress=tracked(bar, "calibrate"))
    except (InputError, ValueError) as e:
        fail(str(e), debug)
    stdout_console().print(table(cal.table(), [
        ("lr", lambda r: f"{r['lr']:g}", True), ("γ", lambda r: f"{r['localization']:g}", True),
        ("nβ", lambda r: f"{r['nbeta']:.4g}", True),
        *[(f"λ̂ @ {s}", lambda r, j=j: f"{r['llc'][j]:.3g} ± {r['llc_se'][j]:.2g}", True) for j, s in enumerate(cal.steps)],
        ("ESS/s", lambda r: f"{r['ess_per_second']:.0f}", True),
        ("result", lambda r: r["result"].replace("recommended", "RECOMMENDED"), False),
    ]))
    if cal.bias_checks:
        typer.echo("bias checks (λ̂ at the candidate, at lr/2 and at γ/10, twice the draws):")
        stdout_console().print(table(cal.checks_table(), [
            ("lr", lambda r: f"{r['lr']:g}", True), ("γ", lambda r: f"{r['localization']:g}", True),
            *[(f"{run} @ {s}", lambda r, run=run, j=j: f"{r[run][j][0]:.3g} ± {r[run][j][1]:.2g}", True)
              for run in RUNS for j, s in enumerate(cal.steps)],
            ("result", lambda r: "passed" if r["passed"] else "failed: " + ", ".join(
                k for k, v in r["checks"].items() if v.startswith("failed")), False),
        ]))
    for line in cal.advice:
        typer.echo(f"note: {line}")
    typer.echo(f"wrote {out}, {png}")
    rec = cal.recommendation
    if rec is None:
        typer.echo("no configuration passed: nothing recommended (see the notes above)")
        raise typer.Exit(1)
    best = rec.point
    typer.echo(f"recommended: lr {best['lr']:g}, localization {best['localization']:g}, nbeta {best['nbeta']:.4g} "
               f"→ {toml} (slt-probe walk ... --config {toml})")
    for check, outcome in rec.checks.items():
        typer.echo(f"  {check}: {outcome}")


@app.command()
def train(
    out_dir: Annotated[str, typer.Argument(help="run folder: step_N.pt, model.json, data.npy, train_log.json")] = \
        "checkpoints/run",
    config: Annotated[Optional[str], typer.Option(help="TOML/JSON of TrainConfig fields ([corpus] table for the "
                                                       "corpus)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="training steps")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of initialisation, data order and corpus mix")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
):
    """Train the demo's 2-layer attention-only transformer on CPython's standard library (byte level)."""
    try:
        cfg = TrainConfig.from_file(config, steps=steps, seed=seed)
    except InputError as e:
        fail(str(e), debug)
    with progress_bar(quiet, " steps") as bar:
        step = tracked(bar, "training")
        result = train_demo(cfg, out_dir, progress=lambda done, total, row: step(done, total))
    last = result.log[-1] if result.log else {}
    typer.echo(f"{len(result.checkpoints)} checkpoints in {out_dir} ({result.seconds:.0f} s); last log: {last}")


def _flagged(match: Optional[dict], curve: str) -> str:
    if match is None:
        return f"{curve}: no transition within ±1 checkpoint"
    kind = f"type {match['type']}" if match["what"] == "spurt" else match["kind"]
    return (f"{curve}: a {match['what']} ({kind}) at step {match['step']}, confidence "
            f"{match['confidence']:.2f}{' (tentative)' if match['tentative'] else ''}, within ±1 checkpoint")


def _boundary(b: dict) -> str:
    return (f"  boundary at step {b['step']} ({b['kind']}, confidence {b['confidence']:.2f}"
            f"{', tentative' if b['tentative'] else ''}{', hidden' if b.get('hidden') else ''})")


def _spurt(sp: dict) -> str:
    loss = f", Δloss {sp['dloss']:+.3f}" if "dloss" in sp else ""
    return (f"  spurt at step {sp['step']} (type {sp['type']}, Δλ̂ {sp['dllc']:+.2f} over {sp['start_step']} → "
            f"{sp['end_step']}{loss}, confidence {sp['confidence']:.2f}{', tentative' if sp['tentative'] else ''}"
            f"{', hidden' if sp.get('hidden') else ''})")


@app.command()
def demo(
    out_dir: Annotated[str, typer.Argument(help="where the run, results.h5 and curves.png go")] = "checkpoints/demo",
    quick: Annotated[bool, typer.Option(help="a small version of the same pipeline (about a minute)")] = False,
    anchor: Annotated[bool, typer.Option(help="the anchor's architecture (Hoogland et al. 2024): a LayerNorm before "
                                              "each block's attention, a final one, shortformer positions")] = False,
    heads: Annotated[bool, typer.Option(help="the refined λ̂ of the heads the probes name (each probe's best head "
                                             "at its onset), in a second walk, instead of each layer's")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
):
    """Train a small transformer, walk its checkpoints with probes, find its developmental stages, and plot."""
    bar = progress_bar(quiet)
    tasks = {}

    def progress(phase, done, total):
        bar.start()
        if phase not in tasks:
            tasks[phase] = tracked(bar, phase)
        tasks[phase](done, total)

    try:
        report = run_demo(out_dir, DemoConfig.make(quick, anchor, heads), progress=progress)
    finally:
        bar.stop()
    typer.echo(f"trained in {report.seconds['train']:.0f} s, walked {len(report.steps)} checkpoints in "
               f"{report.seconds['walk']:.0f} s → {report.results}, {report.plot}")
    for name, label in (("prev_token", "previous-token heads"), ("prefix_matching", "induction heads")):
        at = report.onsets[name]
        typer.echo(f"{label}: onset at step {at if at is not None else '— (no onset)'} "
                   f"(half-way from the start: {report.onsets_halfway[name]})")
        typer.echo(f"  {_flagged(report.aligned[name], 'λ̂ of the whole model')}")
        if name in report.aligned_refined:
            r = report.aligned_refined[name]
            typer.echo(f"  {_flagged(r['transition'], 'refined λ̂ of ' + r['component'] + ' (its best head at the onset)')}")
    for s in report.stages:
        typer.echo(f"  stage {s['start_step']:>6} → {s['end_step']:<6} type {s['type']:<5}"
                   f" Δλ̂ {s['dllc']:+.2f}  Δloss {s['dloss']:+.3f}{'  hidden' if s['hidden'] else ''}")
    for b in report.boundaries:
        typer.echo(_boundary(b))
    for sp in report.spurts:
        typer.echo(_spurt(sp))
    for component, r in report.refined.items():
        typer.echo(f"refined λ̂ of {component} ({r['params']}):")
        for b in r["boundaries"]:
            typer.echo(_boundary({**b, "hidden": False}))
        for sp in r["spurts"]:
            typer.echo(_spurt({k: v for k, v in sp.items() if k not in ("dloss", "hidden")}))


if __name__ == "__main__":
    app()
