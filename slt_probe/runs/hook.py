"""LLCHook: the λ̂ curve while the model trains, in the same HDF5 file a walk writes.

    hook = LLCHook(data, config=SGLDConfig(...), schedule=log_schedule(10_000), out="run.h5")
    for step in range(10_001):
        hook(model, step)  # λ̂ of the weights after `step` updates, when `step` is scheduled
        ...  # forward, backward, optimizer step

A measurement estimates λ̂ on a copy of the current weights (estimate_llc never touches the model it is
given: it samples on a deep copy, in eval mode) and appends a row built exactly as the walker builds one,
so `slt-probe inspect`, `transitions` and `plot` read the file unchanged.

The training run must not notice the hook: with the same seed it must produce the same weights, bit for
bit. The model's parameters, gradients, buffers (BatchNorm statistics) and train/eval mode are never
written; the optimizer is never seen. What a measurement could disturb is global state, so it saves and
restores the Python, NumPy, torch CPU and CUDA random number generators around the estimate, and runs it
with gradients on and autocast off whatever context the training loop calls it from (the estimate must
not depend on where it is called).

Every estimate uses the same resolved config, seed and sampling method (common random numbers, as in the
walk), so the curve's differences are the model's. A failing estimate (a NaN loss, a forward pass that
raises) is recorded as a failed row and never stops training; a diverged one is recorded with verdict fail.
The hook is the file's one writer (a lock beside it, held from the hook's creation until close() or the process
ends). The file is rewritten atomically after each measurement (store: unlike a walk, which adds its rows as parts,
so that plain h5py sees every measurement as it comes; a hook measures tens of steps, not thousands): readers may
open it at any time, and a training process killed at any moment leaves the last complete version. A restarted
training with the same config appends to it (a row for a step measured again is replaced).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import shlex
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
from torch import nn

from slt_probe import store
from slt_probe.engine.data import Data, LossFn, as_tuple, check_lm_tokens, num_samples, to_device
from slt_probe.engine.estimate import estimate_llc, sampling_method
from slt_probe.engine.sampler import SGLDConfig, resolve_device
from slt_probe.errors import first_line
from slt_probe.inputs.checkpoints import Checkpoint, checkpoint_sha256

Schedule = Union[int, Iterable[int]]  # every N steps from 0, or the steps themselves

# The walker's refusal names its command-line options; the hook is called from Python.
_HOOK_HINT = "write elsewhere (out=...), or pass overwrite=True to start again"


# ----------------------------------------------------------------------------------------------------------
# schedules


def log_schedule(total_steps: int, n: int = 30, first: int = 0) -> list[int]:
    """About n integer steps from `first` to `total_steps` (both included), evenly spaced in log(step).

    Step 0 (the initialization) cannot sit on a log axis: with first=0 it is included and the other steps
    are log-spaced from 1. Rounding merges the densest early steps, so more points are taken until n
    distinct steps remain (fewer only when the range has fewer integers).
    """
    total_steps, n, first = int(total_steps), int(n), int(first)
    if first < 0 or total_steps < first:
        raise ValueError(f"need 0 <= first <= total_steps, got first={first}, total_steps={total_steps}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lo = max(first, 1)
    head = [0] if first == 0 else []
    if total_steps < lo:  # total_steps == first == 0
        return head
    want = min(n - len(head), total_steps - lo + 1)
    if want < 1:
        return head
    if want == 1:
        return head + [total_steps]
    m = want
    while True:
        steps = np.unique(np.round(np.geomspace(lo, total_steps, m)).astype(np.int64))
        if len(steps) >= want:
            break
        m += max(1, want - len(steps))
    return head + steps.tolist()


def parse_schedule(schedule: Schedule) -> tuple[Callable[[int], bool], dict[str, Any]]:
    """(is this step scheduled?, the schedule as stored in the file's attrs) from an int N or a list of steps."""
    if isinstance(schedule, bool):
        raise TypeError("schedule must be an int (every N steps) or a list of steps, got a bool")
    if isinstance(schedule, (int, np.integer)):
        every = int(schedule)
        if every < 1:
            raise ValueError(f"schedule: every N steps needs N >= 1, got {every}")
        return (lambda step: step % every == 0), {"every": every}
    try:
        steps = sorted({int(s) for s in schedule})
    except (TypeError, ValueError):
        raise TypeError(f"schedule must be an int (every N steps) or a list of integer steps, got {schedule!r}") \
            from None
    if not steps:
        raise ValueError("schedule: the list of steps is empty")
    if steps[0] < 0:
        raise ValueError(f"schedule: steps must be >= 0, got {steps[0]}")
    wanted = frozenset(steps)
    return wanted.__contains__, {"steps": steps}


# ----------------------------------------------------------------------------------------------------------
# what the training run must not notice


def _rng_states(cuda: bool) -> tuple:
    return (random.getstate(), np.random.get_state(), torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if cuda else None)


def _restore_rng_states(states: tuple) -> None:
    py, np_state, cpu, cuda = states
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _neutral_context():
    """Gradients on, autocast off: the estimate is the same whether the loop calls the hook under
    torch.no_grad(), inference_mode or autocast or not. Each context restores the caller's on exit."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield


# ----------------------------------------------------------------------------------------------------------
# describing the run


def _data_description(data: Data) -> dict[str, Any]:
    """Shape, dtype and a hash of the bytes: a resumed run must measure on the same samples."""
    tensors = as_tuple(data)
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    one = isinstance(data, torch.Tensor)
    return {"path": "in memory (LLCHook)", "sha256": h.hexdigest(),
            "shape": list(data.shape) if one else [list(t.shape) for t in tensors],
            "dtype": str(data.dtype).removeprefix("torch.") if one else
            [str(t.dtype).removeprefix("torch.") for t in tensors]}


def _model_description(model: nn.Module) -> dict[str, Any]:
    cls = type(model)
    where = f"{cls.__module__}."
    if cls.__module__ == "__main__":  # a class of the training script itself: its file says more
        where = f"{getattr(sys.modules['__main__'], '__file__', '__main__')}:"
    return {"class": where + cls.__qualname__, "num_params": sum(p.numel() for p in model.parameters())}


def _name(fn: Optional[Callable]) -> str:
    if fn is None:
        return "next-token cross-entropy"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


# ----------------------------------------------------------------------------------------------------------
# the hook


class LLCHook:
    """Call `hook(model, step)` in a training loop: λ̂ at the scheduled steps, appended to `out`.

    data: the samples λ̂ is measured on: token ids [N, T+1] for the default next-token loss, or any tensor
      (tuple of tensors) with loss_fn(model, batch) -> mean loss.
    config: the SGLD settings (SGLDConfig), resolved once (nβ from the data size) and the same for every step.
    schedule: an int N (steps 0, N, 2N, ...), or the steps themselves (a list; see log_schedule).
    out: the HDF5 results file, the walk's schema. An existing file with the same config is continued;
      a different config raises InputError here, unless overwrite=True.
    save_checkpoints: a folder: each measured step's weights are also saved there, as step_{N}.pt
      ({"model": state_dict, "step": N}, what `slt-probe walk` reads), before the estimate.
    meta: extra root attributes for the file (a run name, the model's hyperparameters, ...).
    on_result(step, row): called after each measurement, once the file holds it.
    """

    def __init__(
        self,
        data: Data,
        *,
        loss_fn: Optional[LossFn] = None,
        config: SGLDConfig,
        schedule: Schedule,
        out: Union[str, Path] = "run.h5",
        save_checkpoints: Union[str, Path, None] = None,
        overwrite: bool = False,
        meta: Optional[dict[str, Any]] = None,
        on_result: Optional[Callable[[int, dict], None]] = None,
    ):
        if not isinstance(config, SGLDConfig):
            raise TypeError(f"config must be an SGLDConfig, got {type(config).__name__}")
        if loss_fn is None:
            check_lm_tokens(data)
        self.n = num_samples(data)
        if config.batch_size > self.n:
            raise ValueError(f"batch_size {config.batch_size} is larger than the data ({self.n} samples)")
        self.config_given = config
        self.config = config.resolved(self.n)  # nβ fixed now: every measurement uses the same config
        self.device = resolve_device(self.config.device)
        self.data = to_device(data, self.device)  # once, not at every measurement
        self.loss_fn = loss_fn
        self.scheduled, self.schedule = parse_schedule(schedule)
        self.out = Path(out)
        self.checkpoint_dir = Path(save_checkpoints) if save_checkpoints is not None else None
        self.on_result = on_result
        self.meta = dict(meta or {})
        self.data_description = _data_description(data)
        self.method: Optional[str] = None if self.config.method == "auto" else self.config.method
        self.started = False  # the file's attrs are built at the first measurement, which sees the model
        self.measured: set[int] = set()  # steps measured by this process (a step is seen once per update)

        self.file = store.ResultsFile(self.out, self.config, overwrite=overwrite, hint=_HOOK_HINT)
        previous = self.file.previous
        if previous is not None:
            # What can be compared before the model is seen; the model is compared at the first measurement.
            self.file.check({**previous, "config_resolved": self.config.to_dict(), "engine": "slt",
                             "num_samples": self.n, "data": self.data_description})
            if self.method is None and previous.get("method") in ("loop", "vmap"):
                self.method = previous["method"]  # "auto" as the earlier run resolved it
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            for tmp in self.checkpoint_dir.glob("step_*.pt.tmp*"):  # left by a killed run's torch.save
                tmp.unlink(missing_ok=True)

    def __call__(self, model: nn.Module, step: int) -> Optional[dict[str, Any]]:
        """Measure λ̂ when `step` is scheduled (once per step); returns the row written, else None."""
        step = int(step)
        if not self.scheduled(step) or step in self.measured:
            return None
        start = time.perf_counter()
        # CUDA's generators only where CUDA is in use: reading them would initialize it in a CPU-only run.
        cuda = torch.cuda.is_available() and (torch.cuda.is_initialized() or self.device.type == "cuda")
        states = _rng_states(cuda)
        try:
            if not self.started:
                self._start(model)
            self.measured.add(step)
            with _neutral_context():
                row = self._measure(model, step)
        finally:
            _restore_rng_states(states)
        row["seconds"] = time.perf_counter() - start
        row["finished"] = store.utc_now()
        self.file.rows[step] = row
        self._write()
        if self.on_result is not None:
            self.on_result(step, row)
        return row

    # -- internals

    def _start(self, model: nn.Module) -> None:
        """The file's root attributes, from the first model seen; the resume check the constructor could not do."""
        meta = {
            "description": "local learning coefficient (λ̂) at steps of a training run, measured while it trained "
                           "(slt_probe.LLCHook)",
            "source": "LLCHook", "schedule": self.schedule, "command": shlex.join(sys.argv),
            "config": self.config_given.to_dict(), "model": _model_description(model),
            "data": self.data_description, "loss": _name(self.loss_fn),
            **({"checkpoint_dir": str(self.checkpoint_dir.resolve())} if self.checkpoint_dir else {}),
            **self.meta,
        }
        attrs = store.run_attrs(self.config, self.device, "slt", model, self.data, meta)
        self.file.adopt(attrs)
        attrs["method"] = self.method or ""
        self.started = True

    def _measure(self, model: nn.Module, step: int) -> dict[str, Any]:
        row = self.file.new_row(step)
        try:
            if self.checkpoint_dir is not None:
                row.update(self._save_checkpoint(model, step))
            if self.method is None:
                # "auto" is resolved once, here, and kept: the two paths agree only to float rounding
                self.method = sampling_method(model, self.config)
                self.file.attrs["method"] = self.method
            result = estimate_llc(model, self.data, loss_fn=self.loss_fn,
                                  config=replace(self.config, method=self.method))
            store.fill_row(row, result)
        except Exception as e:  # anything the estimate raises is this step's failure, never the training's
            store.fail_row(row, f"step {step}: {type(e).__name__}: {first_line(e)}")
        return row

    def _save_checkpoint(self, model: nn.Module, step: int) -> dict[str, Any]:
        """step_{N}.pt in the walker's format, written beside and renamed over (a kill leaves no half file)."""
        path = self.checkpoint_dir / f"step_{step}.pt"
        with store.atomic_path(path) as tmp:
            torch.save({"model": model.state_dict(), "step": step}, tmp)
        sha = checkpoint_sha256(Checkpoint(step, path, "torch", (path,)))
        return {"path": path.name, "format": "torch", "sha256": sha}

    def _write(self) -> None:
        try:
            self.file.save()
        except OSError as e:  # a full disk must not end the training; the rows stay here for the next write
            warnings.warn(f"LLCHook: could not write {self.out} ({e}); will retry at the next measurement",
                          RuntimeWarning, stacklevel=3)

    def close(self) -> None:
        """Let another process write `out` (the hook holds the file's writer lock from its creation on; a process
        that ends releases it too)."""
        self.file.close()

    def __repr__(self) -> str:
        return f"LLCHook(out={str(self.out)!r}, schedule={self.schedule}, measured={len(self.measured)})"
