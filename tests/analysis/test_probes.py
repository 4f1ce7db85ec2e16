"""The behavioural probes (slt_probe/analysis/probes.py): previous-token and prefix-matching scores of attention
patterns, repeated-block sequences, the in-context-learning score, a probe run on a model built to have a
previous-token head, and the onset of a rising score."""

import math

import numpy as np
import pytest
import torch
from modelfiles import load_model_file

from slt_probe.analysis import probes


def synthetic_patterns(T=12, block=6, B=3):
    """[1, B, 3, T, T]: head 0 attends to t - 1, head 1 is an exact induction head on blocks of `block`
    repeated, head 2 attends uniformly."""
    attn = torch.zeros(1, B, 3, T, T)
    for t in range(T):
        attn[0, :, 0, t, max(t - 1, 0)] = 1
        attn[0, :, 1, t, t - block + 1 if t >= block else 0] = 1
        attn[0, :, 2, t, : t + 1] = 1 / (t + 1)
    return attn


def test_scores_on_synthetic_patterns():
    attn = synthetic_patterns()
    prev = probes.prev_token_scores(attn)
    pm = probes.prefix_matching_scores(attn, 6)
    assert prev.shape == pm.shape == (1, 3)
    assert prev[0, 0] == pytest.approx(1.0) and prev[0, 1] < 0.2
    assert pm[0, 1] == pytest.approx(1.0) and pm[0, 0] == 0
    assert prev[0, 2] == pytest.approx(np.mean([1 / (t + 1) for t in range(1, 12)]))
    with pytest.raises(ValueError):
        probes.prefix_matching_scores(attn, 12)


def test_repeated_blocks():
    seqs = probes.repeated_blocks(range(10, 60), 20, 5, seed=1)
    assert seqs.shape == (5, 20) and seqs.dtype == torch.int64
    assert torch.equal(seqs[:, :10], seqs[:, 10:])
    assert all(len(set(s[:10].tolist())) == 10 for s in seqs)  # distinct within a block
    assert seqs.min() >= 10 and seqs.max() < 60
    odd = probes.repeated_blocks([1, 2, 3], 9, 2, seed=0)  # tiny vocabulary: repeats allowed; third copy starts
    assert odd.shape == (2, 9) and torch.equal(odd[:, 8], odd[:, 0])


def previous_token_model(n_ctx=16):
    """An attention-only model whose layer-0 head 0 attends to the previous position, by construction:
    position t's embedding is the unit vector e_t, the query maps e_t to c·e_{t-1}, the key is the identity."""
    model = load_model_file("attn_only").attn_only(vocab_size=32, n_ctx=n_ctx, d_model=2 * n_ctx, n_heads=2)
    d, dh = 2 * n_ctx, n_ctx
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.pos_embed.weight.copy_(torch.eye(n_ctx, d))  # [T, d]: e_t
        w = model.blocks[0].qkv.weight  # [3d, d]: q rows 0..d-1, k rows d..2d-1 (head 0: the first dh of each)
        w[:dh, :n_ctx] = 50.0 * torch.diag(torch.ones(n_ctx - 1), 1)  # column t is 50·e_{t-1}: q_t = 50·e_{t-1}
        w[d:d + dh, :n_ctx] = torch.eye(n_ctx)
    return model


def test_probes_find_a_constructed_previous_token_head():
    model = previous_token_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    icl = torch.randint(0, 32, (8, 17))
    p = probes.induction_probes(model, vocab_tokens=range(32), n_seqs=4, seed=0, icl_data=icl)
    assert p["prev_token"].shape == p["prefix_matching"].shape == (2, 2) and p["block"] == 8
    assert p["prev_token"][0, 0] > 0.9  # the constructed head
    assert p["prev_token"][0, 1] < 0.3 and p["prev_token"][1].max() < 0.3  # zero weights attend uniformly
    assert np.all((p["prefix_matching"] >= 0) & (p["prefix_matching"] <= 1))
    assert p["position_loss"].shape == (16,) and math.isfinite(p["icl_score"])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    s = probes.best_scores(p)
    assert set(s) == {"prev_token", "prefix_matching", "icl_score"} and s["prev_token"] > 0.9


def test_icl_positions_and_score():
    early, late = probes.icl_positions(64)
    assert (early.start, early.stop, late.start, late.stop) == (4, 8, 56, 64)
    loss = np.linspace(3.0, 1.0, 64)
    assert probes.icl_score(loss) < 0
    assert probes.icl_score(np.ones(64)) == 0


def test_onset():
    steps = [0, 10, 20, 40, 80, 160, 320, 640]
    assert probes.onset(steps, [0.0, 0.0, 0.01, 0.05, 0.35, 0.6, 0.62, 0.6]) == 80  # half of ~0.61
    assert probes.onset(steps, [0.06] * 8) is None  # never rises
    assert probes.onset(steps, [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.05, 0.05]) is None  # falls
    # a score starting at the uniform-attention level: half its final value, or half-way from its start
    assert probes.onset(steps, [0.2, 0.2, 0.2, 0.25, 0.4, 0.55, 0.8, 0.8]) == 80
    assert probes.onset(steps, [0.2, 0.2, 0.2, 0.25, 0.4, 0.55, 0.8, 0.8], from_baseline=True) == 160
    # starting above half its final value, it cannot rise through it: half-way from the start
    assert probes.onset(steps, [0.5, 0.5, 0.5, 0.6, 0.7, 0.9, 1.0, 1.0]) == 160
    # any order in, NaN rows ignored
    assert probes.onset(steps[::-1], [0.6, 0.62, 0.6, 0.35, 0.05, 0.01, 0.0, 0.0]) == 80
    assert probes.onset([0, 1, 2, 3], [0.0, float("nan"), 1.0, 1.0]) == 2


def test_weight_norms_of_the_anchor_model():
    attn_only = load_model_file("attn_only").attn_only
    torch.manual_seed(0)
    model = attn_only(vocab_size=16, n_ctx=8, d_model=16, n_heads=2, n_layers=2, block_ln=True, layer_norm=True,
                      positions="shortformer")
    with torch.no_grad():
        model.blocks[1].ln.weight.mul_(0.5)  # a collapsing gain
    info = probes.norm_info(model)
    norms = probes.weight_norms(model)
    assert list(info) == list(norms) == ["embed_norm", "pos_embed_norm", "blocks_0_ln_gain_norm",
                                         "blocks_1_ln_gain_norm", "ln_f_gain_norm", "unembed_norm"]
    assert info["blocks_1_ln_gain_norm"][0] == "‖γ‖ blocks.1.ln" and info["unembed_norm"][0] == "‖W‖ unembed"
    assert norms["blocks_0_ln_gain_norm"] == pytest.approx(4.0) and norms["blocks_1_ln_gain_norm"] == pytest.approx(2.0)
    assert norms["embed_norm"] == pytest.approx(float(model.embed.weight.detach().norm()), rel=1e-6)
    assert norms["unembed_norm"] == pytest.approx(float(model.unembed.weight.detach().norm()), rel=1e-6)
    # the default model has no LayerNorm: embeddings and unembedding only
    assert list(probes.weight_norms(attn_only(vocab_size=16, n_ctx=8, d_model=16, n_heads=2))) == [
        "embed_norm", "pos_embed_norm", "unembed_norm"]
