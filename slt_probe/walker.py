"""Walk a folder of checkpoints: λ̂ at each one, with the same hyperparameters, into one HDF5 file.

Every checkpoint is estimated with the same config, the same seed and therefore the same minibatch
sequence and noise (common random numbers), so differences along the curve are the model's, not the
sampler's. The walk resumes: a checkpoint whose row is already in the file with the same weights hash is
skipped, and the file is rewritten atomically after each checkpoint (store.py), so an interrupted walk
loses at most the checkpoint it was working on and a rerun completes it with identical numbers.
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
from slt_probe.checkpoints import Checkpoint, checkpoint_sha256, discover, load_into, load_state_dict
from slt_probe.data import Data, LossFn, num_samples, to_device
from slt_probe.errors import CheckpointError, InputError
from slt_probe.llc import LLCResult, estimate_llc
from slt_probe.sampler import SGLDConfig, count_params, resolve_device

# Fields of SGLDConfig that may differ between a run and its resume: they change where and how fast it runs,
# not what it computes. (method is resolved once per walk and stored; see sampling_method.)
_RESUME_FREE = {"device", "method"}


@dataclass
class WalkSummary:
    out: Path
    total: int  # checkpoints in this walk
    computed: int = 0
    skipped: int = 0  # already in the file with the same weights
    failed: list[dict] = field(default_factory=list)  # {"step", "path", "message"}
    method: str = ""


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


def _row(ckpt: Checkpoint, root: Path, sha: str, config: SGLDConfig) -> dict[str, Any]:
    row = store.empty_row(config.chains, config.draws, config.burnin)
    row.update(step=ckpt.step, path=_relative(ckpt.path, root), format=ckpt.format, sha256=sha)
    return row


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def fill_row(row: dict[str, Any], r: LLCResult) -> None:
    """Copy an estimate into a results row (store.empty_row); also used by the training hook."""
    d = r.diagnostics
    row.update(
        status="ok", init_loss=r.init_loss, llc_mean=r.llc_mean, llc_std=r.llc_std, llc_se=r.llc_se,
        llc_per_chain=np.asarray(r.llc_per_chain, dtype=np.float64),
        loss_trace=np.asarray(r.loss_trace, dtype=np.float32), burnin_trace=np.asarray(r.burnin_trace, dtype=np.float32),
        rhat=d.rhat, ess_bulk=d.ess_bulk, ess_tail=d.ess_tail, acceptance=d.acceptance, drift=d.drift,
        chains_ok=d.chains_ok, verdict=d.verdict, reasons="; ".join(d.reasons),
    )


def run_attrs(config: SGLDConfig, device, engine: str, model: nn.Module, data: Data,
              meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The root attributes of a results file (store.py documents them); also used by the training hook."""
    attrs = {
        "schema": store.SCHEMA, "schema_version": store.SCHEMA_VERSION,
        "description": "local learning coefficient (λ̂) at each checkpoint of a training run, by slt-probe walk",
        "created": store.utc_now(), "engine": engine, "device": str(device),
        "config_resolved": config.to_dict(), "num_params": sum(p.numel() for p in model.parameters()),
        "num_samples": num_samples(data), "versions": store.versions(), **(meta or {}),
    }
    for dist in ("slt-probe", "torch", "devinterp"):
        attrs[f"{dist.replace('-', '_')}_version"] = attrs["versions"][dist]
    return attrs


def sampling_method(model: nn.Module, data: Data, loss_fn: Optional[LossFn], config: SGLDConfig) -> str:
    """Resolve method="auto" once for the whole walk, by timing both paths on a few steps.

    Per checkpoint, "auto" would time again and could pick differently on a noisy machine; the two paths
    agree only to float rounding, so a resumed walk would not reproduce the uninterrupted one bit for bit.
    """
    probe = replace(config, draws=6, burnin=0, chains=config.chains, mala_every=0, method="auto")
    return estimate_llc(model, data, loss_fn=loss_fn, config=probe).diagnostics.method


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
    refine: Optional[dict[str, str]] = None,
) -> WalkSummary:
    """Estimate λ̂ at every checkpoint (in step order) and write them to `out`.

    checkpoints: from checkpoints.discover/select, or a folder to walk whole.
    model: built by the factory; its weights are replaced by each checkpoint's in turn.
    root: the checkpoint folder (paths in the file are relative to it).
    meta: run description stored in the root attributes (command line, model spec, data spec, ...).
    probes: behavioural measurements at each checkpoint (probes.py), stored in the file's `probes` group.
    refine: {name: regex over parameter names}: at each checkpoint also the refined λ̂ of each such component
      (config.params, Wang et al. 2024), same settings and seed, stored in the file's `refined` group.
    Raises InputError before any work when `out` holds a different walk (and overwrite is False).
    """
    if isinstance(checkpoints, (str, Path)):  # a folder: every checkpoint in it
        root, checkpoints = checkpoints, discover(checkpoints)[0]
    out = Path(out)
    emit = on_event or (lambda kind, **info: None)
    config = (config or SGLDConfig()).resolved(num_samples(data))
    device = resolve_device(config.device)
    model = model.to(device)
    data = to_device(data, device)

    attrs = run_attrs(config, device, engine, model, data, meta)
    refine = dict(refine or {})
    if (refine or config.params is not None) and engine != "slt":
        raise InputError("refined LLCs (refine, params) are computed by engine 'slt' only")

    def selected(pattern: str, what: str) -> int:  # a pattern that selects nothing fails now, not per checkpoint
        try:
            return count_params(model, pattern)
        except ValueError as e:
            raise InputError(f"{what}: {e}") from None

    if config.params is not None:
        selected(config.params, "--params")
    refined = store.Refined(refine, {name: selected(p, f"refine {name}") for name, p in refine.items()},
                            {name: {} for name in refine})
    rows: dict[int, dict[str, Any]] = {}
    probe_values: dict[int, dict[str, Any]] = {}
    method = None
    if out.exists() and not overwrite:
        try:
            old_attrs, old_rows = store.read(out)
        except (OSError, ValueError) as e:
            raise InputError(f"{out}: exists and is not a readable slt-probe results file ({e}); "
                             f"pass --overwrite or choose another --out") from None
        check_same_run(out, old_attrs, attrs)
        attrs["created"] = old_attrs.get("created", attrs["created"])
        method = old_attrs.get("method")
        rows = {r["step"]: r for r in old_rows}
        old_probes = store.Probes.read(out) if probes is not None else None
        probe_values = old_probes.values if old_probes else {}
        old_refined = store.Refined.read(out) if refine else None
        for name, pattern in (old_refined.params if old_refined else {}).items():
            if name not in refine:  # not asked for this time: kept as it is
                refined.params[name], refined.num_params[name] = pattern, old_refined.num_params[name]
                refined.values[name] = old_refined.values[name]
            elif refine[name] == pattern:  # the same component: its rows so far are reused
                refined.values[name] = old_refined.values[name]
    store.remove_stale_temporaries(out)

    if engine == "devinterp":
        method = "devinterp"
    elif config.method != "auto":
        method = config.method
    elif method is None:
        method = sampling_method(model, data, loss_fn, config)
    attrs["method"] = method
    run_config = replace(config, method=method) if engine == "slt" else config

    def save() -> None:  # the whole file, atomically: rows so far, their probes and refined λ̂
        store.write(out, attrs, list(rows.values()), config.chains, config.draws, config.burnin,
                    probes=store.Probes(probes.info, probe_values) if probes is not None else None,
                    refined=refined if refine else None)

    def estimate_refined(step: int, only_missing: bool = False) -> None:
        """The refined λ̂ of each component at the model's current weights (one row each; NaN where it fails)."""
        for name, pattern in refine.items():
            if only_missing and step in refined.values[name]:
                continue
            try:
                r = estimate_llc(model, data, loss_fn=loss_fn, config=replace(run_config, params=pattern))
                value = {"llc_mean": r.llc_mean, "llc_se": r.llc_se, "verdict": r.verdict,
                         "llc_per_chain": np.asarray(r.llc_per_chain, dtype=np.float64)}
            except (ValueError, RuntimeError) as e:  # the forward pass failed on these weights: the row says so
                value = {"llc_mean": float("nan"), "llc_se": float("nan"), "verdict": "fail",
                         "llc_per_chain": np.full(config.chains, np.nan)}
                emit("refine_failed", step=step, component=name, message=first_line(e))
            refined.values[name][step] = value

    summary = WalkSummary(out=out, total=len(checkpoints), method=method)
    for i, ckpt in enumerate(checkpoints):
        start = time.perf_counter()
        try:
            sha = checkpoint_sha256(ckpt)
        except OSError as e:
            sha = ""
            error = f"{ckpt.path}: cannot be read ({e.strerror or e})"
        else:
            error = None
        old = rows.get(ckpt.step)
        if error is None and old is not None and old["status"] == "ok" and old["sha256"] == sha:
            missing_probes = probes is not None and ckpt.step not in probe_values
            missing_refined = any(ckpt.step not in refined.values[name] for name in refine)
            if missing_probes or missing_refined:  # done before without them: add them
                load_into(model, load_state_dict(ckpt, device), source=str(ckpt.path))
                if missing_probes:
                    probe_values[ckpt.step] = _measure(probes, model)
                estimate_refined(ckpt.step, only_missing=True)
                save()
            summary.skipped += 1
            emit("skip", index=i, checkpoint=ckpt, row=old)
            continue

        emit("start", index=i, checkpoint=ckpt)
        row = _row(ckpt, Path(root), sha, config)
        if error is None:
            try:
                load_into(model, load_state_dict(ckpt, device), source=str(ckpt.path))
                if probes is not None:
                    probe_values[ckpt.step] = _measure(probes, model)
                result = estimate_llc(model, data, loss_fn=loss_fn, config=run_config, engine=engine,
                                      progress=lambda done, total: emit("steps", done=done, total=total))
                fill_row(row, result)
                estimate_refined(ckpt.step)
            except CheckpointError as e:
                error = str(e)
            except (ValueError, RuntimeError, TypeError, IndexError) as e:  # the forward pass failed on these weights
                error = f"{ckpt.path}: {type(e).__name__}: {first_line(e)}"
        if error is not None:
            row.update(status="failed", message=error, verdict="fail")
            summary.failed.append({"step": ckpt.step, "path": str(ckpt.path), "message": error})
        else:
            summary.computed += 1
        row["seconds"] = time.perf_counter() - start
        row["finished"] = store.utc_now()
        rows[ckpt.step] = row
        save()
        emit("done", index=i, checkpoint=ckpt, row=row)
    return summary


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def check_same_run(out: Path, old: dict[str, Any], new: dict[str, Any],
                   hint: str = "write elsewhere with --out, or pass --overwrite to start again") -> None:
    """Resume only the same computation: same config, engine, model and data (InputError otherwise)."""
    old_cfg = {k: v for k, v in (old.get("config_resolved") or {}).items() if k not in _RESUME_FREE}
    new_cfg = {k: v for k, v in new["config_resolved"].items() if k not in _RESUME_FREE}
    diff = store.describe_difference(old_cfg, new_cfg)
    if diff:
        raise InputError(f"{out}: holds a walk with a different config ({diff}); {hint}")
    for key in ("engine", "num_params", "num_samples"):
        if old.get(key) != new.get(key):
            raise InputError(f"{out}: holds a walk with a different {key} ({old.get(key)!r} → {new.get(key)!r}); {hint}")
    old_data, new_data = old.get("data") or {}, new.get("data") or {}
    if old_data.get("sha256") != new_data.get("sha256"):
        raise InputError(f"{out}: holds a walk on different data (sha256 {str(old_data.get('sha256'))[:12]} → "
                         f"{str(new_data.get('sha256'))[:12]}); {hint}")
    old_model, new_model = old.get("model") or {}, new.get("model") or {}
    for key in ("spec", "kwargs"):
        if old_model.get(key) != new_model.get(key):
            raise InputError(f"{out}: holds a walk of a different model ({key} {old_model.get(key)!r} → "
                             f"{new_model.get(key)!r}); {hint}")
