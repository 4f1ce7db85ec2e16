"""Walk a folder of checkpoints: λ̂ at each one, with the same hyperparameters, into one HDF5 file.

Every checkpoint is estimated with the same config, the same seed and therefore the same minibatch
sequence and noise (common random numbers), so differences along the curve are the model's, not the
sampler's. The walk resumes: a checkpoint whose row is already in the file with the same weights hash is
skipped, and the file is rewritten atomically after each checkpoint (store), so an interrupted walk
loses at most the checkpoint it was working on and a rerun completes it with identical numbers.

walk() walks checkpoints it is given, with a model and data in memory; walk_folder() is what `slt-probe walk` runs:
it finds the checkpoints, builds model, data and loss from the command line's specs, walks, and detects the stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
from torch import nn

from slt_probe import store
from slt_probe.analysis.transitions import Transitions
from slt_probe.engine.data import Data, LossFn, num_samples, to_device
from slt_probe.engine.estimate import estimate_components, estimate_llc, sampling_method
from slt_probe.engine.sampler import Params, SGLDConfig, count_params, resolve_device
from slt_probe.errors import CheckpointError, InputError, first_line
from slt_probe.inputs.checkpoints import Checkpoint, checkpoint_sha256, discover, load_into, load_state_dict, select
from slt_probe.inputs.heads import Component, resolve
from slt_probe.inputs.specs import RunSpec, load_inputs
from slt_probe.inputs.tlens import adapt
from slt_probe.runs.detect import detect_all


@dataclass
class WalkSummary:
    out: Path
    total: int  # checkpoints in this walk
    computed: int = 0
    skipped: int = 0  # already in the file with the same weights
    failed: list[dict] = field(default_factory=list)  # {"step", "path", "message"}
    method: str = ""
    components: dict[str, str] = field(default_factory=dict)  # refined λ̂ components: name -> what it samples
    heads: list[str] = field(default_factory=list)  # those of them that are attention heads
    # walk_folder: the stages of each curve (None: the LLC; else a refined λ̂'s name), or why they were not found
    transitions: dict[Optional[str], Transitions | ValueError] = field(default_factory=dict)
    # step -> (verdict, reasons) of every walked checkpoint that has an estimate (computed now or before)
    verdicts: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def nothing_estimated(self) -> Optional[str]:
        """Why the walk measured nothing, when every checkpoint with an estimate got verdict fail (e.g. every chain
        diverged); else None."""
        if not self.verdicts or any(v != "fail" for v, _ in self.verdicts.values()):
            return None
        reasons = [r for r in next(iter(self.verdicts.values()))[1].split("; ") if r]
        why = f": {reasons[-1]}" if reasons else ""
        return f"every estimate failed: verdict fail at all {len(self.verdicts)} checkpoints estimated{why}"


Refine = dict[str, Params] | list  # see walk()
Event = Callable[..., None]  # on_event(kind, **info); kinds: "start", "skip", "steps", "done", "refine_failed"


class Probe(Protocol):
    """A behavioural measurement: probe(model) -> {name: number or array}; info[name] = (label, description)."""

    info: dict[str, tuple[str, str]]

    def __call__(self, model: nn.Module) -> dict[str, Any]: ...


def _measure(probe: Probe, model: nn.Module) -> dict[str, Any]:
    """The probe's values, or NaN where it fails: a broken probe must not cost the λ̂ estimate."""
    try:
        with torch.no_grad():
            return probe(model)
    except Exception:  # noqa: BLE001 - any failure of user or model code; the estimate goes on
        return {name: float("nan") for name in probe.info}


def _stamp(ckpt: Checkpoint) -> tuple:
    """(size, modification time) of each of the checkpoint's files: what changes when a trainer rewrites it."""
    try:
        return tuple((st.st_size, st.st_mtime_ns) for st in (f.stat() for f in ckpt.files))
    except OSError as e:
        raise CheckpointError(f"{ckpt.path}: cannot be read ({e.strerror or e})") from None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def walk(
    checkpoints: list[Checkpoint] | Path | str,
    out: Path | str,
    *,
    model: nn.Module,
    data: Data,
    loss_fn: Optional[LossFn] = None,
    config: Optional[SGLDConfig] = None,
    engine: str = "slt",
    root: Path | str = ".",
    meta: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
    on_event: Optional[Event] = None,
    probes: Optional[Probe] = None,
    refine: Optional[Refine] = None,
    wait: bool = False,
) -> WalkSummary:
    """Estimate λ̂ at every checkpoint (in step order) and write them to `out`.

    checkpoints: from checkpoints.discover/select, or a folder to walk whole.
    model: built by the factory; its weights are replaced by each checkpoint's in turn.
    root: the checkpoint folder (paths in the file are relative to it).
    meta: run description stored in the root attributes (command line, model spec, data spec, ...).
    probes: behavioural measurements at each checkpoint (probes.py), stored in the file's `probes` group.
    refine: components whose refined λ̂ (Wang et al. 2024) is also estimated at each checkpoint, same settings and
      seed, into the file's `refined` group: {name: params} (a regex over parameter names, or Coordinates), or a
      list of "heads" (one per attention head: inputs/heads.py), "layers", (name, regex) pairs and Components.
    wait: when another process is writing `out`, wait for it instead of refusing (InputError naming it).
    Raises InputError before any work when `out` cannot be written, is being written by another process, or holds a
    different walk (and overwrite is False); OutputError when it cannot be written later (a full disk: the file keeps
    the rows written before).
    """
    if isinstance(checkpoints, (str, Path)):  # a folder: every checkpoint in it
        root, checkpoints = checkpoints, discover(checkpoints)[0]
    w = _Walk(out, model, data, loss_fn, config or SGLDConfig(), engine, meta, overwrite, on_event, probes,
              refine, wait)
    try:
        summary = WalkSummary(out=Path(out), total=len(checkpoints), method=w.method,
                             components=w.labels, heads=w.heads)
        for i, ckpt in enumerate(checkpoints):
            w.checkpoint(i, ckpt, Path(root), summary)
    finally:
        w.file.close()
    return summary


class _Walk:
    """One walk's fixed settings (config, device, sampling method, components) and its results file."""

    def __init__(self, out, model, data, loss_fn, config, engine, meta, overwrite, on_event, probes, refine, wait):
        self.emit = on_event or (lambda kind, **info: None)
        self.config = config = config.resolved(num_samples(data))
        self.device = resolve_device(config.device)
        # a TransformerLens model as --model builds it (tlens.adapt), when a notebook built it itself
        self.model, self.data, self.loss_fn = adapt(model).to(self.device), to_device(data, self.device), loss_fn
        self.engine, self.probes = engine, probes
        items = list(refine.items()) if isinstance(refine, dict) else list(refine or [])
        parts: list[Component] = resolve(self.model, items)
        self.refine: dict[str, Params] = {c.name: c.params for c in parts}
        self.labels = {c.name: str(c.params) for c in parts}  # what each samples: its regex, or a head's label
        self.heads = [c.name for c in parts if c.head is not None]
        where = {c.name: {"layer": c.layer, "head": c.head} for c in parts}
        attrs = store.run_attrs(config, self.device, engine, self.model, self.data, meta)
        if (self.refine or config.params is not None) and engine != "slt":
            raise InputError("refined LLCs (refine, params) are computed by engine 'slt' only")
        if config.params is not None:
            self._count(config.params, "--params")
        num_params = {name: self._count(p, f"refine {name}") for name, p in self.refine.items()}

        self.file = store.ResultsFile(out, config, overwrite=overwrite, wait=wait)  # this walk's until it ends
        try:
            self.file.adopt(attrs)  # refuses, before any work, to continue a file that holds another computation
            self.probe_values = self.file.resumed_probes() if probes is not None else {}
            self.refined = self.file.resumed_refined(self.labels, num_params, where)
        except BaseException:
            self.file.close()
            raise
        method = self.file.previous.get("method") if self.file.previous is not None else None
        if engine == "devinterp":
            method = "devinterp"
        elif config.method != "auto" or method is None:  # "auto" as an earlier run resolved it, else timed once now
            method = sampling_method(self.model, config)
        self.method = attrs["method"] = method
        self.run_config = replace(config, method=method) if engine == "slt" else config

    def _count(self, pattern: Params, what: str) -> int:
        """The coordinates `pattern` selects: one that selects nothing fails now, not at every checkpoint."""
        try:
            return count_params(self.model, pattern)
        except ValueError as e:
            raise InputError(f"{what}: {e}") from None

    def save(self) -> None:
        """The whole file, atomically: rows so far, their probes and refined λ̂ (left as they were when not asked)."""
        self.file.save(probes=store.Probes(self.probes.info, self.probe_values) if self.probes is not None else None,
                       refined=self.refined if self.refine else None)

    def load(self, ckpt: Checkpoint) -> None:
        """The checkpoint's weights into the model; CheckpointError when it cannot be read, or changed (a trainer
        rewrote or rotated it) while it was read."""
        before = _stamp(ckpt)
        try:
            state = load_state_dict(ckpt, self.device)
        except OSError as e:  # vanished since it was found
            raise CheckpointError(f"{ckpt.path}: cannot be read ({e.strerror or e})") from None
        if _stamp(ckpt) != before:
            raise CheckpointError(f"{ckpt.path}: changed while it was read (size or modification time); "
                                  f"walk it again once it is written")
        load_into(self.model, state, source=str(ckpt.path))

    def estimate_refined(self, step: int, only_missing: bool = False) -> None:
        """The refined λ̂ of each component at the model's current weights (one row each; NaN where it fails).
        The heads of a layer share one run (estimate_components); the sampling method is the rule's for their size."""
        todo = {name: p for name, p in self.refine.items() if not (only_missing and step in self.refined.values[name])}
        if not todo:
            return
        try:
            results = estimate_components(self.model, self.data, todo, loss_fn=self.loss_fn,
                                          config=replace(self.run_config, method=self.config.method),
                                          progress=lambda done, total: self.emit("steps", done=done, total=total))
        except (ValueError, RuntimeError) as e:  # the forward pass failed on these weights: the rows say so
            results = {}
            for name in todo:
                self.emit("refine_failed", step=step, component=name, message=first_line(e))
        for name in todo:
            r = results.get(name)
            self.refined.values[name][step] = {
                "llc_mean": r.llc_mean, "llc_se": r.llc_se, "verdict": r.verdict,
                "llc_per_chain": np.asarray(r.llc_per_chain, dtype=np.float64)} if r is not None else {
                "llc_mean": float("nan"), "llc_se": float("nan"), "verdict": "fail",
                "llc_per_chain": np.full(self.config.chains, np.nan)}

    def checkpoint(self, i: int, ckpt: Checkpoint, root: Path, summary: WalkSummary) -> None:
        """Estimate one checkpoint into its row, or skip it when the file has it with the same weights."""
        start = time.perf_counter()
        try:
            sha, error = checkpoint_sha256(ckpt), None
        except CheckpointError as e:  # vanished or unreadable since it was found
            sha, error = "", str(e)
        old = self.file.rows.get(ckpt.step)
        if old is not None and old["status"] == "ok" and (old["sha256"] == sha or error is not None):
            # done with the same weights; or done before and gone now (a trainer rotated it): its row is kept
            if error is None:
                self.complete(ckpt, summary)
            summary.skipped += 1
            summary.verdicts[ckpt.step] = (old["verdict"], old["reasons"])
            self.emit("skip", index=i, checkpoint=ckpt, row=old)
            return

        self.emit("start", index=i, checkpoint=ckpt)
        row = self.file.new_row(ckpt.step)
        row.update(path=_relative(ckpt.path, root), format=ckpt.format, sha256=sha)
        if error is None:
            try:
                self.load(ckpt)
                if self.probes is not None:
                    self.probe_values[ckpt.step] = _measure(self.probes, self.model)
                result = estimate_llc(self.model, self.data, loss_fn=self.loss_fn, config=self.run_config,
                                      engine=self.engine,
                                      progress=lambda done, total: self.emit("steps", done=done, total=total))
                store.fill_row(row, result)
                self.estimate_refined(ckpt.step)
            except CheckpointError as e:
                error = str(e)
            except (ValueError, RuntimeError, TypeError, IndexError, AssertionError) as e:  # the forward pass failed
                error = f"{ckpt.path}: {type(e).__name__}: {first_line(e)}"
        if error is not None:
            store.fail_row(row, error)
            summary.failed.append({"step": ckpt.step, "path": str(ckpt.path), "message": error})
        else:
            summary.computed += 1
            summary.verdicts[ckpt.step] = (row["verdict"], row["reasons"])
        row["seconds"] = time.perf_counter() - start
        row["finished"] = store.utc_now()
        self.file.rows[ckpt.step] = row
        self.save()
        self.emit("done", index=i, checkpoint=ckpt, row=row)

    def complete(self, ckpt: Checkpoint, summary: WalkSummary) -> None:
        """A checkpoint done before without the probes or components asked for now: add them."""
        missing_probes = self.probes is not None and ckpt.step not in self.probe_values
        missing_refined = any(ckpt.step not in self.refined.values[name] for name in self.refine)
        if missing_probes or missing_refined:
            try:
                self.load(ckpt)
            except CheckpointError as e:  # its row stands; what could not be added is said
                summary.failed.append({"step": ckpt.step, "path": str(ckpt.path), "message": str(e)})
                return
            if missing_probes:
                self.probe_values[ckpt.step] = _measure(self.probes, self.model)
            self.estimate_refined(ckpt.step, only_missing=True)
            self.save()


def plan(ckpt_dir: Path | str, *, steps: Optional[list[int]] = None, every: Optional[int] = None,
         max_checkpoints: Optional[int] = None) -> tuple[list[Checkpoint], list[Checkpoint], list[tuple[Path, str]]]:
    """(the checkpoints a walk of the folder would estimate, every checkpoint found, [(path, why skipped)])."""
    found, skipped = discover(ckpt_dir)
    return select(found, steps=steps, every=every, max_checkpoints=max_checkpoints), found, skipped


def walk_folder(
    ckpt_dir: Path | str,
    out: Path | str,
    spec: RunSpec,
    config: SGLDConfig,
    *,
    engine: str = "slt",
    steps: Optional[list[int]] = None,
    every: Optional[int] = None,
    max_checkpoints: Optional[int] = None,
    refine: Optional[Refine] = None,
    overwrite: bool = False,
    detect: bool = True,
    command: str = "",
    on_event: Optional[Event] = None,
    wait: bool = False,
) -> WalkSummary:
    """`slt-probe walk`: the checkpoints of a folder (steps / every / max_checkpoints select some), with model, data
    and loss built from `spec`, walked into `out`; then, with detect, the stages of the LLC and of each refined λ̂.

    Raises InputError, before any checkpoint is estimated, for anything the command line got wrong.
    """
    if engine not in ("slt", "devinterp"):
        raise InputError(f"--engine must be slt or devinterp, got {engine!r}")
    store.check_output(Path(out))  # before anything is loaded
    todo, _, _ = plan(ckpt_dir, steps=steps, every=every, max_checkpoints=max_checkpoints)
    inputs = load_inputs(spec, todo[0], engine=engine)
    if config.batch_size > num_samples(inputs.data):
        raise InputError(f"{spec.data}: {num_samples(inputs.data)} samples, fewer than --batch-size {config.batch_size}")
    try:
        resolve_device(config.device)
    except ValueError as e:
        raise InputError(str(e)) from None
    meta = {"command": command, "config": config.to_dict(), "model": inputs.model_desc, "data": inputs.data_desc,
            "loss": spec.loss or "next-token cross-entropy", "checkpoint_dir": str(Path(ckpt_dir).resolve())}
    summary = walk(todo, out, model=inputs.model, data=inputs.data, loss_fn=inputs.loss_fn, config=config,
                   engine=engine, root=ckpt_dir, meta=meta, overwrite=overwrite, on_event=on_event, refine=refine,
                   wait=wait)
    if detect:
        summary.transitions = detect_all(out, refined=list(summary.components))
    return summary
