"""The demo's pipeline (slt_probe/demo/pipeline.py): the induction probe the demo's walk runs at each checkpoint.

The whole pipeline (`slt-probe demo --quick`) is tested in tests/test_cli.py; the probes' scores themselves in
tests/analysis/test_probes.py.
"""

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest

from slt_probe.demo import pipeline
from slt_probe.demo.pipeline import DemoConfig, InductionProbe, onset_heads, probe_onsets
from slt_probe.demo.train import MODEL_SPEC, train_demo
from slt_probe.inputs.checkpoints import discover, load_into, load_state_dict
from slt_probe.inputs.specs import build_model
from slt_probe.store import Probes, Refined


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


def test_the_anchor_architecture_trains_and_probes_its_norms(tmp_path, make_tiny_config):
    """TrainConfig's block_ln / final_ln / positions reach model.json, a walk rebuilds the same model from it, and the
    probe built with the model adds the norms of its LayerNorm gains and embeddings, which training moves."""
    cfg = make_tiny_config(tmp_path, block_ln=True, final_ln=True, positions="shortformer")
    result = train_demo(cfg, tmp_path / "run")
    kwargs = json.loads((result.out_dir / "model.json").read_text())
    assert (kwargs["block_ln"], kwargs["layer_norm"], kwargs["positions"]) == (True, True, "shortformer")
    model, _ = build_model(MODEL_SPEC, result.out_dir / "model.json")
    probe = InductionProbe(np.load(result.out_dir / "probe_tokens.npy"), n_seqs=4, model=model)
    assert {"blocks_0_ln_gain_norm", "blocks_1_ln_gain_norm", "ln_f_gain_norm", "embed_norm", "unembed_norm"} <= set(probe.info)
    ckpts, _ = discover(result.out_dir)
    rows = []
    for ckpt in (ckpts[0], ckpts[-1]):
        load_into(model, load_state_dict(ckpt), source=str(ckpt.path))  # strict: the checkpoint has the LN weights
        rows.append(probe(model))
    assert set(rows[0]) == set(probe.info)
    assert rows[0]["ln_f_gain_norm"] == pytest.approx(4.0)  # d_model 16, gain initialized to ones
    assert rows[1]["ln_f_gain_norm"] != pytest.approx(4.0) and rows[1]["embed_norm"] != rows[0]["embed_norm"]


def write_probes(path, steps, prev, prev_heads, prefix, prefix_heads):
    with h5py.File(path, "w") as f:
        Probes({"prev_token": ("", ""), "prefix_matching": ("", ""), "prev_token_heads": ("", ""),
                "prefix_matching_heads": ("", "")},
               {s: {"prev_token": a, "prefix_matching": b, "prev_token_heads": ah, "prefix_matching_heads": bh}
                for s, a, b, ah, bh in zip(steps, prev, prefix, prev_heads, prefix_heads)}).write(f.create_group("probes"))
    return path


def test_onsets_and_the_heads_they_name(tmp_path):
    steps = [0, 100, 200, 400, 800]
    # the previous-token score rises through half its final value at 400, where L1H0 leads; L0H1 led before
    prev_heads = [np.array([[0.1, 0.1], [0.1, 0.1]]), np.array([[0.1, 0.15], [0.1, 0.1]]),
                  np.array([[0.1, 0.2], [0.15, 0.1]]), np.array([[0.1, 0.3], [0.5, 0.1]]),
                  np.array([[0.1, 0.3], [0.6, 0.1]])]
    prev = [float(h.max()) for h in prev_heads]
    flat = [np.full((2, 2), 0.04)] * 5  # induction never forms: no onset, no head named
    path = write_probes(tmp_path / "r.h5", steps, prev, prev_heads, [0.04] * 5, flat)
    pv = Probes.read(path).values
    assert probe_onsets(pv) == {"prev_token": 400, "prefix_matching": None}  # half of 0.433 first reached at 400
    assert probe_onsets(pv, from_baseline=True) == {"prev_token": 400, "prefix_matching": None}
    assert onset_heads(pv) == {"prev_token": (1, 0)}
    prev_heads[2] = np.array([[0.1, 0.31], [0.15, 0.1]])  # now the onset is at 200, where L0H1 leads
    prev[2] = 0.31
    write_probes(path, steps, prev, prev_heads, [0.04] * 5, flat)
    pv = Probes.read(path).values
    assert probe_onsets(pv)["prev_token"] == 200 and onset_heads(pv) == {"prev_token": (0, 1)}


def test_the_demo_refines_the_heads_the_probes_name(tmp_path, monkeypatch):
    """refine_heads: a first walk with the probes, then a second that adds only the named heads' refined λ̂ (the rows
    are not estimated again), each probe read against its own head's curve."""
    named = {"prev_token": (1, 0), "prefix_matching": (0, 1)}
    monkeypatch.setattr(pipeline, "onset_heads", lambda pv: named)
    cfg = DemoConfig.quick()
    cfg = replace(cfg, refine_heads=True, train=replace(cfg.train, steps=60, n_log=3, n_linear=1))
    phases = []
    report = pipeline.run_demo(tmp_path / "demo", cfg, progress=lambda phase, done, total: phases.append(phase))
    assert set(report.refined) == {"L1H0", "L0H1"}
    assert report.refined["L1H0"]["params"] == "head 0 of layer 1 (blocks.1)"
    assert {name: r["component"] for name, r in report.aligned_refined.items()} == {"prev_token": "L1H0",
                                                                                   "prefix_matching": "L0H1"}
    refined = Refined.read(report.results)
    assert sorted(refined.values) == ["L0H1", "L1H0"] and sorted(refined.values["L1H0"]) == report.steps
    assert phases.count("refine") == len(report.steps) and "walk" in phases
