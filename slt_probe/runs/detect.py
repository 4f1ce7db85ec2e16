"""Stages and spurts of a results file's λ̂ curves: read the curve, detect (analysis.transitions), store the result.

What `slt-probe transitions` runs, and what a walk and the demo run at their end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from slt_probe.analysis.transitions import TransitionConfig, Transitions, detect_transitions
from slt_probe.store import Refined, load_results, write_transitions


def transitions_from_results(path: Path | str, config: Optional[TransitionConfig] = None,
                             refined: Optional[str] = None) -> Transitions:
    """Detect transitions in a walk's results file (failed checkpoints are left out); does not write.

    refined: the name of a refined λ̂ curve of the file (walk(refine=...)) to detect them in instead; its stages
    are typed against the model's loss, as the LLC's are.
    """
    res = load_results(path)
    a = res.arrays
    ok = a["status"] == "ok"
    llc, per_chain = np.where(ok, a["llc_mean"], np.nan), a["llc_per_chain"]
    if refined is not None:
        r = Refined.read(path)
        if r is None or refined not in r.values:
            raise ValueError(f"no refined λ̂ named {refined!r} (have: {', '.join(r.params) if r else 'none'})")
        curve = r.curve(refined, a["step"])
        llc, per_chain = np.where(ok, curve["llc_mean"], np.nan), curve["llc_per_chain"]
    return detect_transitions(a["step"], llc, loss=a["init_loss"], llc_per_chain=per_chain, config=config)


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
