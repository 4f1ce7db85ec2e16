"""Small problems for the engine's tests (tests/engine/): a tiny attention-only transformer on token ids with a
repeating pattern, a deep linear network with noiseless targets, and a sampler budget that suits them.
A plain module, not a test file."""

import torch
from modelfiles import load_model_file

from slt_probe.engine.dln import deep_linear_network

attn_only = load_model_file("attn_only").attn_only


TINY_LM = dict(vocab_size=32, n_ctx=16, d_model=32, n_heads=2, n_layers=2)


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    return attn_only(**TINY_LM)


def lm_tokens(n=256, seq=16, vocab=32, seed=0):
    # a repeating pattern plus noise, so the model has something to be locally complex about
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, vocab, (n, seq // 2), generator=g)
    return torch.cat([base, base], dim=1)


def dln_problem(widths=(4, 3, 5), n=2000, seed=0):
    torch.manual_seed(seed)
    model = deep_linear_network(widths)
    x = torch.randn(n, widths[0])
    return model, (x, model(x).detach())


CFG = dict(lr=1e-3, localization=10.0, nbeta=50.0, chains=3, draws=40, burnin=10, batch_size=32, seed=3)
