"""The `transitions` group of a results file (slt_probe/store/transitions.py): what store.write_transitions puts
in is what store.read_transitions gives back, and a rewrite of the rows drops it.

The curves are synthetic, with known stages (tests/helpers/curves.py); the detector itself is tested in
tests/analysis/test_transitions.py, the `transitions` command in tests/test_cli.py.
"""

import pytest
from curves import rise_then_hidden_fall as make_rise_then_hidden_fall

from slt_probe import store
from slt_probe.analysis.transitions import TransitionConfig, detect_transitions

CFG = TransitionConfig(resamples=100)


@pytest.fixture()
def rise_then_hidden_fall(tmp_path):
    """A results file whose λ̂ rises (loss falls) and then falls under a flat loss; and its curve."""
    return make_rise_then_hidden_fall(tmp_path)


def test_the_stored_boundary_keeps_its_precise_location(rise_then_hidden_fall):
    path, c = rise_then_hidden_fall
    t = detect_transitions(c.step, c.per_chain.mean(1), loss=c.loss, llc_per_chain=c.per_chain, config=CFG)
    store.write_transitions(path, t)
    back = store.read_transitions(path)
    assert back.boundaries[0].log_step == t.boundaries[0].log_step != int(t.boundaries[0].log_step)
    assert back.stages == t.stages and back.config == t.config
    assert back.noise == t.noise and back.noise["source"] == "chains" and back.noise["agrees"]


def test_the_noise_record_of_a_stated_se_is_stored(rise_then_hidden_fall):
    path, c = rise_then_hidden_fall
    std = c.per_chain.std(1, ddof=1) * 10  # a spread, passed as the s.e.
    t = detect_transitions(c.step, c.per_chain.mean(1), std, c.loss, config=CFG)
    store.write_transitions(path, t)
    back = store.read_transitions(path)
    assert back.noise == t.noise and back.noise["rescaled"] and back.notes == t.notes


def test_a_rewrite_of_the_rows_drops_the_stale_transitions(rise_then_hidden_fall):
    """A resumed walk rewrites the rows: the transitions found on the old rows no longer describe them."""
    path, c = rise_then_hidden_fall
    t = detect_transitions(c.step, c.per_chain.mean(1), loss=c.loss, llc_per_chain=c.per_chain, config=CFG)
    store.write_transitions(path, t)
    assert store.read_transitions(path) is not None
    attrs, rows = store.read(path)
    store.write(path, attrs, rows, 4, 3, 0)
    assert store.read_transitions(path) is None
