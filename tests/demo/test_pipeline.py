"""The demo's pipeline (slt_probe/demo/pipeline.py): the induction probe the demo's walk runs at each checkpoint.

The whole pipeline (`slt-probe demo --quick`) is tested in tests/test_cli.py; the probes' scores themselves in
tests/analysis/test_probes.py.
"""

import numpy as np

from slt_probe.demo.pipeline import InductionProbe
from slt_probe.demo.train import MODEL_SPEC
from slt_probe.inputs.checkpoints import discover, load_into, load_state_dict
from slt_probe.inputs.specs import build_model


def test_the_induction_probe_over_the_tiny_run(tiny_run):
    """What the demo's walk stores per checkpoint: the best heads' scores, the ICL score, the per-head arrays."""
    cfg, result, _ = tiny_run
    model, _ = build_model(MODEL_SPEC, result.out_dir / "model.json")
    probe = InductionProbe(np.load(result.out_dir / "probe_tokens.npy"), np.load(result.out_dir / "data.npy")[:8],
                           n_seqs=4)
    ckpts, _ = discover(result.out_dir)
    rows = []
    for ckpt in ckpts:
        load_into(model, load_state_dict(ckpt), source=str(ckpt.path))
        rows.append(probe(model))
    assert set(rows[0]) == set(probe.info)
    series = {name: np.stack([np.asarray(r[name]) for r in rows]) for name in probe.info}
    series["step"] = np.array([c.step for c in ckpts])
    k = len(result.checkpoints)
    assert series["step"].tolist() == result.checkpoints
    assert series["prev_token"].shape == series["prefix_matching"].shape == series["icl_score"].shape == (k,)
    assert series["prev_token_heads"].shape == (k, 2, 2)
    assert np.all((series["prev_token"] >= 0) & (series["prev_token"] <= 1))
    assert np.all(np.isfinite(series["icl_score"]))
