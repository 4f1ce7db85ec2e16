"""Walk a folder of checkpoints: λ̂ at each one, with the same hyperparameters, into one HDF5 file.

Every checkpoint is estimated with the same config, the same seed and therefore the same minibatch
sequence and noise (common random numbers), so differences along the curve are the model's, not the
sampler's. The walk resumes: a checkpoint whose row is already in the file with the same weights hash is
skipped, and each checkpoint's results are written atomically as soon as they are done (a part of the file:
store/parts.py), so an interrupted walk loses at most the checkpoint it was working on and a rerun completes it
with identical numbers.

The work is a list of units: each checkpoint's row (λ̂ and probes), and each group of its refined components that
one run samples together (estimate_components: the heads of a layer). A unit's numbers depend only on the seed, the
config and the checkpoint, so under torchrun (distributed.py) the units are dealt out to the ranks, round-robin, and
the file reads bit for bit as a one-process walk's.

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
from slt_probe.engine.sampler import select as sampled_tensors
from slt_probe.errors import CheckpointError, InputError, OutputError, first_line
from slt_probe.inputs.checkpoints import Checkpoint, checkpoint_sha256, discover, load_into, load_state_dict, select
from slt_probe.inputs.heads import Component, resolve
from slt_probe.inputs.specs import RunSpec, load_inputs
from slt_probe.inputs.tlens import adapt
from slt_probe.runs.detect import detect_all
from slt_probe.runs.distributed import Ranks


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
# on_event(kind, **info); kinds: "start", "skip", "steps", "done", "refine_failed", and under torchrun, on rank 0,
# "units" (done, total: the units of work finished by all ranks)
Event = Callable[..., None]


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
    ranks: Optional[Ranks] = None,
) -> WalkSummary:
    """Estimate λ̂ at every checkpoint (in step order) and write them to `out`.

    checkpoints: from checkpoints.discover/select, or a folder to walk whole.
    model: built by the factory; its weights are replaced by each checkpoint's in turn, its parameter tensors by the
      sampler's (estimate_llc's inplace: the same values, one copy of the model less), and it is left in eval mode.
    root: the checkpoint folder (paths in the file are relative to it).
    meta: run description stored in the root attributes (command line, model spec, data spec, ...).
    probes: behavioural measurements at each checkpoint (probes.py), stored in the file's `probes` group.
    refine: components whose refined λ̂ (Wang et al. 2024) is also estimated at each checkpoint, same settings and
      seed, into the file's `refined` group: {name: params} (a regex over parameter names, or Coordinates), or a
      list of "heads" (one per attention head: inputs/heads.py), "layers", (name, regex) pairs and Components.
    wait: when another process is writing `out`, wait for it instead of refusing (InputError naming it).
    ranks: this process's rank in a torchrun job (distributed.process_group); every rank calls walk with the same
      arguments, each estimates its share, rank 0 writes the file and returns the whole walk's summary.
    Raises InputError before any work when `out` cannot be written, is being written by another process, or holds a
    different walk (and overwrite is False); OutputError when it cannot be written later (a full disk: the file keeps
    the rows written before).
    """
    if isinstance(checkpoints, (str, Path)):  # a folder: every checkpoint in it
        root, checkpoints = checkpoints, discover(checkpoints)[0]
    ranks = ranks or Ranks()
    w = _Walk(out, model, data, loss_fn, config or SGLDConfig(), engine, meta, overwrite, on_event, probes,
              refine, wait, ranks)
    try:
        summary = WalkSummary(out=Path(out), total=len(checkpoints), method=w.method,
                              components=w.labels, heads=w.heads)
        units = w.units(checkpoints)
        w.total = len(units)
        mine: dict[int, list[int]] = {}  # checkpoint index -> the groups of its units this rank does (-1: the row)
        for i, g in units[ranks.rank::ranks.world]:
            mine.setdefault(i, []).append(g)
        ranks.barrier()  # every rank has listed the units before any writes a part
        for i in sorted(mine):
            w.checkpoint(i, checkpoints[i], sorted(mine[i]), Path(root), summary)
        if ranks.store is not None:
            w.gather(summary)
        if ranks.leader:
            w.file.finish()
            ranks.share("merged", True)
        else:
            ranks.wait("merged", poll=1.0)  # rank 0's store stays up, and torchrun's agents agree, until it is done
    finally:
        if w.file is not None:
            w.file.close()
    return summary


class _Walk:
    """One walk's fixed settings (config, device, sampling method, components) and its results file (rank 0's)."""

    def __init__(self, out, model, data, loss_fn, config, engine, meta, overwrite, on_event, probes, refine, wait,
                 ranks: Ranks):
        self.emit = on_event or (lambda kind, **info: None)
        self.out, self.ranks = Path(out), ranks
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
        self.where = {c.name: {"layer": c.layer, "head": c.head} for c in parts}
        attrs = store.run_attrs(config, self.device, engine, self.model, self.data, meta)
        if (self.refine or config.params is not None) and engine != "slt":
            raise InputError("refined LLCs (refine, params) are computed by engine 'slt' only")
        if config.params is not None:
            self._count(config.params, "--params")
        self.num_params = {name: self._count(p, f"refine {name}") for name, p in self.refine.items()}
        self.groups = self._groups()
        self.last_poll, self.total = 0.0, 0

        self.file: Optional[store.ResultsFile] = None
        if ranks.leader:
            self.file = store.ResultsFile(out, config, overwrite=overwrite, wait=wait)  # this walk's until it ends
            try:
                self.file.adopt(attrs)  # refuses, before any work, to continue a file that holds another computation
                method = self.file.previous.get("method") if self.file.previous is not None else None
                if engine == "devinterp":
                    method = "devinterp"
                elif config.method != "auto" or method is None:  # "auto" as an earlier run resolved it, else now
                    method = sampling_method(self.model, config)
                attrs["method"] = method
                self.file.start()  # the file exists, with this run's attrs and no parts, before any part is written
            except BaseException:
                self.file.close()
                raise
            self.rows = self.file.rows
            self.probe_values = self.file.resumed_probes() if probes is not None else {}
            self.refined = self.file.resumed_refined(self.labels, self.num_params, self.where)
            ranks.share("ready", {"method": method})
        else:  # the file as rank 0 left it at its start, before anyone's parts
            method = ranks.receive("ready")["method"]
            _, rows = store.read(self.out)
            self.rows = {r["step"]: r for r in rows}
            old = store.Probes.read(self.out) if probes is not None else None
            self.probe_values = old.values if old else {}
            self.refined = store.resume_refined(store.Refined.read(self.out) if self.refine else None, self.labels,
                                                self.num_params, self.where)
        self.method = method
        self.run_config = replace(config, method=method) if engine == "slt" else config

    def _count(self, pattern: Params, what: str) -> int:
        """The coordinates `pattern` selects: one that selects nothing fails now, not at every checkpoint."""
        try:
            return count_params(self.model, pattern)
        except ValueError as e:
            raise InputError(f"{what}: {e}") from None

    def _groups(self) -> list[list[str]]:
        """The components estimate_components samples in one run (the same tensors sampled: the heads of a layer),
        in its order: the finest split whose units give the same numbers as the one-process walk."""
        named = list(self.model.named_parameters())
        groups: dict[tuple, list[str]] = {}
        for name, params in self.refine.items():
            groups.setdefault(tuple(m is not None for m in sampled_tensors(named, params)), []).append(name)
        return list(groups.values())

    # -- the units of work

    def units(self, checkpoints: list[Checkpoint]) -> list[tuple[int, int]]:
        """Every unit of the walk, (checkpoint index, group; -1: the checkpoint's row and probes): those the file
        lacks first, then those it seems to have (whose rank still checks the weights hash), each in walk order.
        The same list on every rank: it is made from the file as it was before anyone's parts."""
        todo, have = [], []
        for i, ckpt in enumerate(checkpoints):
            old = self.rows.get(ckpt.step)
            ok = old is not None and old["status"] == "ok"
            probed = self.probes is None or ckpt.step in self.probe_values
            (have if ok and probed else todo).append((i, -1))
            for g, names in enumerate(self.groups):
                done = ok and all(ckpt.step in self.refined.values[n] for n in names)
                (have if done else todo).append((i, g))
        return todo + have

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

    def estimate_refined(self, step: int, names: list[str]) -> dict[str, dict[str, Any]]:
        """The refined λ̂ of one group's components at the model's current weights (one row each; NaN where it
        fails). They share one run (estimate_components); the sampling method is the rule's for their size."""
        todo = {name: self.refine[name] for name in names}
        try:
            results = estimate_components(self.model, self.data, todo, loss_fn=self.loss_fn,
                                          config=replace(self.run_config, method=self.config.method),
                                          progress=lambda done, total: self.steps(done, total), inplace=True)
        except (ValueError, RuntimeError, TypeError, IndexError, AssertionError) as e:  # the forward pass failed
            results = {}
            for name in todo:
                self.emit("refine_failed", step=step, component=name, message=first_line(e))
        values = {}
        for name in todo:
            r = results.get(name)
            values[name] = {
                "llc_mean": r.llc_mean, "llc_se": r.llc_se, "verdict": r.verdict,
                "llc_per_chain": np.asarray(r.llc_per_chain, dtype=np.float64)} if r is not None else {
                "llc_mean": float("nan"), "llc_se": float("nan"), "verdict": "fail",
                "llc_per_chain": np.full(self.config.chains, np.nan)}
        return values

    def checkpoint(self, i: int, ckpt: Checkpoint, groups: list[int], root: Path, summary: WalkSummary) -> None:
        """This rank's units of one checkpoint (groups: -1 its row and probes, g ≥ 0 the refined group g), skipped
        where the file has them with the same weights, the rest estimated and written as one part."""
        start = time.perf_counter()
        try:
            sha, error = checkpoint_sha256(ckpt), None
        except CheckpointError as e:  # vanished or unreadable since it was found
            sha, error = "", str(e)
        old = self.rows.get(ckpt.step)
        # done with the same weights; or done before and gone now (a trainer rotated it): its results are kept
        same = old is not None and old["status"] == "ok" and (old["sha256"] == sha or error is not None)
        row, probed, refined = None, None, {}
        loaded: Optional[str] = None  # why the weights could not be loaded, once tried

        def load() -> Optional[str]:
            nonlocal loaded
            if loaded is None:
                try:
                    self.load(ckpt)
                    loaded = ""
                except CheckpointError as e:
                    loaded = str(e)
                    if same:  # its row stands; what could not be added to it is said, once
                        summary.failed.append({"step": ckpt.step, "path": str(ckpt.path), "message": loaded})
            return loaded or None

        if -1 in groups and same:
            if error is None and self.probes is not None and ckpt.step not in self.probe_values:
                if load() is None:  # done before without the probes asked for now: add them
                    probed = _measure(self.probes, self.model)
            summary.skipped += 1
            summary.verdicts[ckpt.step] = (old["verdict"], old["reasons"])
            self.emit("skip", index=i, checkpoint=ckpt, row=old)
        elif -1 in groups:
            self.emit("start", index=i, checkpoint=ckpt)
            row = self.file_row(ckpt.step)
            row.update(path=_relative(ckpt.path, root), format=ckpt.format, sha256=sha)
            error = error or load()
            if error is None:
                try:
                    if self.probes is not None:
                        probed = _measure(self.probes, self.model)
                    result = estimate_llc(self.model, self.data, loss_fn=self.loss_fn, config=self.run_config,
                                          engine=self.engine, progress=lambda done, total: self.steps(done, total),
                                          inplace=True)  # the walk's own model: no copy of it (bounded memory)
                    store.fill_row(row, result)
                except (ValueError, RuntimeError, TypeError, IndexError, AssertionError) as e:  # the forward pass failed
                    error = f"{ckpt.path}: {type(e).__name__}: {first_line(e)}"
            if error is not None:
                store.fail_row(row, error)
                summary.failed.append({"step": ckpt.step, "path": str(ckpt.path), "message": error})
            else:
                summary.computed += 1
                summary.verdicts[ckpt.step] = (row["verdict"], row["reasons"])

        for g in (g for g in groups if g >= 0):
            names = self.groups[g]
            if same:  # only what was not asked for before; nothing when the checkpoint is gone
                names = [n for n in names if ckpt.step not in self.refined.values[n]] if error is None else []
            if not names:
                continue
            if load() is None:  # else: a row being estimated says why itself, a row kept said it in load()
                refined.update(self.estimate_refined(ckpt.step, names))

        if row is not None:
            row["seconds"] = time.perf_counter() - start
            row["finished"] = store.utc_now()
        if row is not None or probed is not None or refined:
            self.write(ckpt.step, row, probed, refined)
        self.ranks.count("units", len(groups))
        self.poll(force=True)
        if row is not None:
            self.emit("done", index=i, checkpoint=ckpt, row=row)

    def file_row(self, step: int) -> dict[str, Any]:
        row = store.empty_row(self.config.chains, self.config.draws, self.config.burnin)
        row["step"] = step
        return row

    def write(self, step: int, row: Optional[dict], probed: Optional[dict], refined: dict[str, dict]) -> None:
        """One checkpoint's results (of this rank's units) as a part of the file."""
        if probed is not None:
            self.probe_values[step] = probed
        for name, values in refined.items():
            self.refined.values[name][step] = values
        probes = store.Probes(self.probes.info, {step: probed}) if probed is not None else None
        group = store.Refined({n: self.labels[n] for n in refined}, {n: self.num_params[n] for n in refined},
                              {n: {step: v} for n, v in refined.items()},
                              {n: self.where[n] for n in refined}) if refined else None
        rows = [row] if row is not None else []
        name = store.parts.part_name(step, self.ranks.rank)
        if self.file is not None:
            self.file.add(name, rows, probes, group)
        else:
            try:
                store.write_part(self.out, name, rows, self.config, probes, group)
            except OSError as e:
                raise OutputError(f"{self.out}: rank {self.ranks.rank} could not write its part {name} "
                                  f"({e.strerror or e})") from None

    # -- torchrun: progress and the end

    def steps(self, done: int, total: int) -> None:
        self.emit("steps", done=done, total=total)
        self.poll()

    def poll(self, force: bool = False) -> None:
        """Rank 0's view of every rank's progress (the store's count of finished units), at most once a second."""
        if self.ranks.leader and self.ranks.store is not None and (force or time.monotonic() - self.last_poll > 1):
            self.last_poll = time.monotonic()
            self.emit("units", done=self.ranks.count("units"), total=self.total)

    def gather(self, summary: WalkSummary) -> None:
        """Each rank's summary to rank 0, which waits for every unit and folds the summaries into its own."""
        mine = {"computed": summary.computed, "skipped": summary.skipped, "failed": summary.failed,
                "verdicts": {str(s): list(v) for s, v in summary.verdicts.items()}}
        self.ranks.share(f"summary/{self.ranks.rank}", mine)
        if not self.ranks.leader:
            return
        while self.ranks.count("units") < self.total:
            self.poll(force=True)
            time.sleep(0.5)
        self.poll(force=True)
        summary.computed = summary.skipped = 0
        summary.failed, summary.verdicts = [], {}
        for r in range(self.ranks.world):
            theirs = self.ranks.receive(f"summary/{r}")
            summary.computed += theirs["computed"]
            summary.skipped += theirs["skipped"]
            summary.failed += [f for f in theirs["failed"] if f not in summary.failed]  # two ranks, one checkpoint
            summary.verdicts.update({int(s): tuple(v) for s, v in theirs["verdicts"].items()})
        summary.failed.sort(key=lambda f: f["step"])
        summary.verdicts = dict(sorted(summary.verdicts.items()))


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
    ranks: Optional[Ranks] = None,
) -> WalkSummary:
    """`slt-probe walk`: the checkpoints of a folder (steps / every / max_checkpoints select some), with model, data
    and loss built from `spec`, walked into `out`; then, with detect, the stages of the LLC and of each refined λ̂.

    ranks: under torchrun, this process's rank (see walk); rank 0 detects the stages.
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
                   wait=wait, ranks=ranks)
    if detect and (ranks is None or ranks.leader):
        summary.transitions = detect_all(out, refined=list(summary.components))
    return summary
