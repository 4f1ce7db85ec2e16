"""The demo's attention-only transformer (slt_probe/demo/model.py), loaded as the CLI loads it: by the path of
models/attn_only.py, which re-exports it. Parameter counts, shapes, causality, attention patterns, and gradients
under vmap that match plain autograd (the sampler's vmapped path relies on them)."""

import pytest
import torch
import torch.nn.functional as F
from modelfiles import load_model_file
from torch.func import functional_call, grad, vmap

attn_only_mod = load_model_file("attn_only")

SMALL = dict(vocab_size=16, n_ctx=8, d_model=16, n_heads=2, n_layers=2)


def small_model(**over):
    torch.manual_seed(0)
    return attn_only_mod.attn_only(**{**SMALL, **over})


def test_default_param_count():
    model = attn_only_mod.attn_only()
    # embed + pos + 2 layers x (qkv + out) + unembed
    expected = 512 * 128 + 64 * 128 + 2 * 4 * 128 * 128 + 128 * 512
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    assert sizes == {"embed.weight": 512 * 128, "pos_embed.weight": 64 * 128, "unembed.weight": 128 * 512,
                     **{f"blocks.{i}.{name}.weight": n for i in range(2)
                        for name, n in (("qkv", 3 * 128 * 128), ("out", 128 * 128))}}
    assert sum(sizes.values()) == expected == 270_336
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.num_params() == expected


def test_optional_layernorm_and_bias_params():
    base = small_model().num_params()
    d, L = SMALL["d_model"], SMALL["n_layers"]
    assert small_model(layer_norm=True).num_params() == base + 2 * d
    assert small_model(attn_bias=True).num_params() == base + L * 4 * d


def test_unknown_config_key_raises():
    with pytest.raises(TypeError, match="d_mlp"):
        attn_only_mod.attn_only(d_mlp=4)


def test_heads_must_divide_d_model():
    with pytest.raises(AssertionError):
        attn_only_mod.attn_only(d_model=10, n_heads=3)


@pytest.mark.parametrize("seq", [1, 5, 8])
def test_shapes(seq):
    model = small_model(layer_norm=True)
    tokens = torch.randint(0, SMALL["vocab_size"], (3, seq))
    logits = model(tokens)
    assert logits.shape == (3, seq, SMALL["vocab_size"])
    logits2, attn = model(tokens, return_attn=True)
    assert torch.equal(logits, logits2)
    assert attn.shape == (SMALL["n_layers"], 3, SMALL["n_heads"], seq, seq)


def test_too_long_sequence_raises():
    model = small_model()
    with pytest.raises(ValueError, match="n_ctx"):
        model(torch.zeros(1, SMALL["n_ctx"] + 1, dtype=torch.long))


def test_causality():
    model = small_model()
    torch.manual_seed(1)
    tokens = torch.randint(0, SMALL["vocab_size"], (4, SMALL["n_ctx"]))
    base = model(tokens)
    for t in range(SMALL["n_ctx"]):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 1) % SMALL["vocab_size"]
        out = model(changed)
        assert torch.equal(out[:, :t], base[:, :t]), f"position {t} leaked backwards"
        assert not torch.allclose(out[:, t], base[:, t])  # and it does matter at t


def test_attention_row_stochastic_and_causal():
    model = small_model()
    tokens = torch.randint(0, SMALL["vocab_size"], (4, SMALL["n_ctx"]))
    _, attn = model(tokens, return_attn=True)
    assert torch.all(attn >= 0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    T = SMALL["n_ctx"]
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    assert torch.all(attn[..., future] == 0)


def test_mask_is_not_in_state_dict():
    keys = small_model().state_dict().keys()
    assert not any(k.endswith("mask") or k == "pos" for k in keys)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_vmap_grad_matches_autograd(layer_norm):
    model = small_model(layer_norm=layer_norm, attn_bias=layer_norm)
    n_chains = 3
    torch.manual_seed(2)
    tokens = torch.randint(0, SMALL["vocab_size"], (5, SMALL["n_ctx"]))
    # distinct values per chain, as SGLD chains drift apart
    stacked = {
        k: v.detach().unsqueeze(0) + 0.1 * torch.randn(n_chains, *v.shape)
        for k, v in model.named_parameters()
    }

    def loss_fn(params, tokens):
        logits = functional_call(model, params, (tokens[:, :-1],))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    grads = vmap(grad(loss_fn), in_dims=(0, None))(stacked, tokens)

    for c in range(n_chains):
        copy = attn_only_mod.attn_only(**{**SMALL, "layer_norm": layer_norm, "attn_bias": layer_norm})
        copy.load_state_dict({k: v[c] for k, v in stacked.items()})
        logits = copy(tokens[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).backward()
        for name, p in copy.named_parameters():
            torch.testing.assert_close(grads[name][c], p.grad, atol=1e-5, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------------------------
# the anchor's options (Hoogland et al. 2024): pre-LN blocks, a final LN, shortformer positions

ANCHOR = dict(block_ln=True, layer_norm=True, positions="shortformer")


def test_block_layernorm_params_and_names():
    base = small_model().num_params()
    d, L = SMALL["d_model"], SMALL["n_layers"]
    model = small_model(**ANCHOR)
    assert model.num_params() == base + (L + 1) * 2 * d
    names = {n for n, _ in model.named_parameters()}
    assert {f"blocks.{i}.ln.{w}" for i in range(L) for w in ("weight", "bias")} | {"ln_f.weight", "ln_f.bias"} <= names
    # the default model's state dict is unchanged: checkpoints of the current demo still load strictly
    assert set(small_model().state_dict()) == {"embed.weight", "pos_embed.weight", "unembed.weight",
                                              *(f"blocks.{i}.{m}.weight" for i in range(L) for m in ("qkv", "out"))}


def test_unknown_positions_raise():
    with pytest.raises(ValueError, match="shortformer"):
        small_model(positions="rotary")


def _reference_forward(model, tokens):
    """The anchor's block written out as TransformerLens computes it (components.TransformerBlock with
    shortformer_pos_embed): q = W_Q(ln1(x) + p), k = W_K(ln1(x) + p), v = W_V ln1(x); x_0 = W_E[tokens]."""
    T, C, H = tokens.shape[1], SMALL["d_model"], SMALL["n_heads"]
    p = model.pos_embed.weight[:T]
    x = model.embed.weight[tokens]
    for blk in model.blocks:
        h = F.layer_norm(x, (C,), blk.ln.weight, blk.ln.bias)
        W_Q, W_K, W_V = blk.qkv.weight.split(C)
        q, k, v = (h + p) @ W_Q.T, (h + p) @ W_K.T, h @ W_V.T
        heads = lambda t: t.view(*t.shape[:2], H, C // H).transpose(1, 2)  # noqa: E731
        scores = heads(q) @ heads(k).transpose(-1, -2) / (C // H) ** 0.5
        scores = scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))
        y = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(x.shape)
        x = x + y @ blk.out.weight.T
    return F.layer_norm(x, (C,), model.ln_f.weight, model.ln_f.bias) @ model.unembed.weight.T


def test_shortformer_matches_the_written_out_block():
    model = small_model(**ANCHOR)
    with torch.no_grad():  # gains and biases away from their (1, 0) init, so that a misplaced LN would show
        for n, p in model.named_parameters():
            if ".ln" in n or n.startswith("ln_f"):
                p.add_(0.3 * torch.randn_like(p))
    tokens = torch.randint(0, SMALL["vocab_size"], (3, SMALL["n_ctx"]))
    torch.testing.assert_close(model(tokens), _reference_forward(model, tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions, moves", [("shortformer", False), ("residual", True)])
def test_shortformer_positions_reach_only_queries_and_keys(positions, moves):
    # with W_Q = W_K = 0 attention is uniform whatever the positions, so positions could only reach the output
    # through the residual stream: they do with residual positions, and must not with shortformer ones
    model = small_model(block_ln=True, positions=positions)
    with torch.no_grad():
        for blk in model.blocks:
            blk.qkv.weight[: 2 * SMALL["d_model"]].zero_()
    tokens = torch.randint(0, SMALL["vocab_size"], (3, SMALL["n_ctx"]))
    before = model(tokens)
    with torch.no_grad():
        model.pos_embed.weight.add_(torch.randn_like(model.pos_embed.weight))
    assert torch.allclose(model(tokens), before, atol=1e-6) != moves


@pytest.mark.parametrize("options", [dict(block_ln=True), ANCHOR])
def test_anchor_options_causal_and_vmap_safe(options):
    model = small_model(**options)
    tokens = torch.randint(0, SMALL["vocab_size"], (4, SMALL["n_ctx"]))
    base = model(tokens)
    changed = tokens.clone()
    changed[:, 3] = (changed[:, 3] + 1) % SMALL["vocab_size"]
    assert torch.equal(model(changed)[:, :3], base[:, :3])
    stacked = {k: v.detach().unsqueeze(0) + 0.1 * torch.randn(2, *v.shape) for k, v in model.named_parameters()}

    def loss_fn(params, tokens):
        logits = functional_call(model, params, (tokens[:, :-1],))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    grads = vmap(grad(loss_fn), in_dims=(0, None))(stacked, tokens)
    for c in range(2):
        g = grad(loss_fn)({k: v[c] for k, v in stacked.items()}, tokens)
        for name in g:
            torch.testing.assert_close(grads[name][c], g[name], atol=1e-5, rtol=1e-4, msg=name)
