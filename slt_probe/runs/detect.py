"""Stages and spurts of a results file's λ̂ curves: read the curve, detect (analysis.transitions), store the result.

What `slt-probe transitions` runs, and what a walk and the demo run at their end. A curve from elsewhere (a CSV/TSV
table) is first written as a results file (store.curves), then detected in like any other (detect_in_csv).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from slt_probe.analysis.transitions import TransitionConfig, Transitions, detect_transitions
from slt_probe.errors import InputError
from slt_probe.inputs.curves import read_curve
from slt_probe.store import Refined, WriterLock, check_output, load_results, write_curve, write_transitions


def transitions_from_results(path: Path | str, config: Optional[TransitionConfig] = None,
                             refined: Optional[str] = None) -> Transitions:
    """Detect transitions in a walk's results file (failed checkpoints are left out); does not write.

    refined: the name of a refined λ̂ curve of the file (walk(refine=...)) to detect them in instead; its stages
    are typed against the model's loss, as the LLC's are.
    A file with no chains (a curve read from a table) is detected in from its stated s.e., or, where it states none,
    from the curve's own scatter.
    """
    res = load_results(path)
    a = res.arrays
    ok = a["status"] == "ok"
    llc, per_chain, se = np.where(ok, a["llc_mean"], np.nan), a["llc_per_chain"], None
    if per_chain.shape[1] == 0:  # nothing sampled: no chains to derive the s.e. from or to bootstrap
        per_chain = None
        se = a["llc_se"] if np.isfinite(a["llc_se"][ok]).all() else None
    if refined is not None:
        r = Refined.read(path)
        if r is None or refined not in r.values:
            raise ValueError(f"no refined λ̂ named {refined!r} (have: {', '.join(r.params) if r else 'none'})")
        curve = r.curve(refined, a["step"])
        llc, per_chain = np.where(ok, curve["llc_mean"], np.nan), curve["llc_per_chain"]
    return detect_transitions(a["step"], llc, se, loss=a["init_loss"], llc_per_chain=per_chain, config=config)


def detect_and_store(path: Path | str, config: Optional[TransitionConfig] = None,
                     refined: Optional[str] = None) -> Transitions:
    """transitions_from_results, written into the file (its `transitions` group, or the refined curve's)."""
    t = transitions_from_results(path, config, refined=refined)
    write_transitions(path, t, refined=refined)
    return t


def detect_all(path: Path | str, refined: Iterable[str] = (), config: Optional[TransitionConfig] = None
               ) -> dict[Optional[str], Transitions | ValueError]:
    """detect_and_store for the LLC (key None), then for each named refined λ̂ curve. A curve too short or too noisy
    to judge gets its ValueError instead of transitions: the others are still done."""
    found: dict[Optional[str], Transitions | ValueError] = {}
    for name in [None, *refined]:
        try:
            found[name] = detect_and_store(path, config, refined=name)
        except ValueError as e:
            found[name] = e
    return found


def detect_in_csv(csv: Path | str, out: Path | str, *, step: Optional[str] = None, llc: Optional[str] = None,
                  se: Optional[str] = None, loss: Optional[str] = None, config: Optional[TransitionConfig] = None,
                  command: Optional[str] = None) -> tuple[Transitions, Path]:
    """Detect transitions in a λ̂ curve read from a CSV/TSV table (columns step, llc, se, loss: inputs.read_curve):
    the curve is written as a results file at `out` (replacing an earlier conversion there; `command` is stored as
    its `command` attribute), and detect_and_store runs on it. Returns (transitions, out)."""
    csv, out = Path(csv), Path(out)
    if out.resolve() == csv.resolve():
        raise InputError(f"{csv}: the converted curve would overwrite the table itself; write it elsewhere with --out")
    curve = read_curve(csv, step=step, llc=llc, se=se, loss=loss)
    check_output(out)
    with WriterLock(out):  # held from the conversion to the stored transitions: no other writer in between
        write_curve(out, curve, {"command": command} if command else None)
        return detect_and_store(out, config), out
