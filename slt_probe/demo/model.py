"""
Attention-only transformer: the toy model of the induction-head literature
(Olsson et al. 2022, "In-context Learning and Induction Heads"; Hoogland et al.
2024, "The Developmental Landscape of In-Context Learning").

No MLPs and, by default, no LayerNorm and no biases, so the residual stream is a
sum of embeddings and attention-head outputs. That keeps the circuits readable
and the parameter count small (~270k with the defaults).

Options give the anchor's own architecture (Hoogland et al. 2024: TransformerLens'
normalization_type='LN', positional_embedding_type='shortformer'): block_ln puts a
LayerNorm before the attention of every block, layer_norm a final one before the
unembedding, and positions='shortformer' adds the positional embedding only to
the inputs of the queries and keys (after the block's LayerNorm, as
TransformerLens does), never to the residual stream, so values, and what is
written back, carry no position.

The model is written to be safe under
    torch.func.vmap(torch.func.grad(loss))(stacked_params, ...)
with parameters stacked along a leading "chain" dim and applied via
torch.func.functional_call, which is how SGLD chains are run in parallel:
no in-place ops on activations, no .item(), no data-dependent Python control
flow. Attention is a plain masked softmax rather than
F.scaled_dot_product_attention: on CPU the two timed within noise of each other
(plain autograd and vmap(grad)), SDPA has no vmap batching rule on CPU (it falls
back to a per-sample loop, with warnings), and SDPA cannot return the attention
patterns that induction-head analyses need.

Usage from the CLI: `slt_probe.demo.model:attn_only` (or `models/attn_only.py:attn_only`) with keyword args taken
from AttnOnlyConfig.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class AttnOnlyConfig:
    vocab_size: int = 512
    n_ctx: int = 64  # max sequence length (size of the positional embedding)
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    layer_norm: bool = False  # a final LayerNorm before the unembedding
    block_ln: bool = False  # a LayerNorm before the attention of each block (pre-LN)
    positions: str = "residual"  # "residual": added to the embedding; "shortformer": to queries' and keys' inputs only
    attn_bias: bool = False  # biases on the qkv / output projections
    init_std: float = 0.02


class CausalSelfAttention(nn.Module):

    def __init__(self, cfg: AttnOnlyConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        self.ln = nn.LayerNorm(cfg.d_model) if cfg.block_ln else nn.Identity()
        self.n_heads = cfg.n_heads
        self.d_head = cfg.d_model // cfg.n_heads
        # one fused matmul for q, k, v is cheaper than three on CPU
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.attn_bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.attn_bias)
        # non-persistent: derived from n_ctx, so it should not clutter checkpoints
        mask = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape  # batch, seq, d_model; pos: (T, C) shortformer positions, or None
        q, k, v = self.qkv(self.ln(x)).split(C, dim=-1)  # each (B, T, C)
        if pos is not None:
            # W_Q(ln(x) + p) = W_Q ln(x) + W_Q p: the positions' part is projected once for all B windows
            qp, kp = F.linear(pos, self.qkv.weight[: 2 * C]).split(C, dim=-1)  # each (T, C)
            q, k = q + qp, k + kp
        # (B, T, C) -> (B, nh, T, dh)
        q = q.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.d_head).transpose(1, 2)

        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, nh, T, T)
        # out-of-place masked_fill: in-place writes to activations break vmap(grad)
        scores = scores.masked_fill(~self.mask[:T, :T], float("-inf"))
        attn = F.softmax(scores, dim=-1)  # (B, nh, T, T), rows sum to 1 over keys <= query

        y = attn @ v  # (B, nh, T, dh)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble heads side by side
        return self.out(y), attn


class AttnOnlyTransformer(nn.Module):

    def __init__(self, cfg: AttnOnlyConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions not in ("residual", "shortformer"):
            raise ValueError(f"positions must be 'residual' or 'shortformer', got {cfg.positions!r}")
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList([CausalSelfAttention(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        # untied: the induction-head analyses read W_E and W_U as separate objects
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # positions as a buffer so forward never builds tensors from Python ints
        self.register_buffer("pos", torch.arange(cfg.n_ctx), persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        # LayerNorm keeps its default (weight 1, bias 0)

    def forward(self, tokens: torch.Tensor, return_attn: bool = False):
        T = tokens.shape[-1]  # tokens: (B, T) int64
        if T > self.config.n_ctx:
            # shape check only, so it is static under vmap
            raise ValueError(f"sequence length {T} exceeds n_ctx={self.config.n_ctx}")

        pos = self.pos_embed(self.pos[:T])  # (T, C)
        shortformer = self.config.positions == "shortformer"
        x = self.embed(tokens) if shortformer else self.embed(tokens) + pos  # (B, T, C)
        patterns = []
        for block in self.blocks:
            h, attn = block(x, pos if shortformer else None)
            x = x + h  # residual stream; not `x += h`, which would be in-place
            patterns.append(attn)
        logits = self.unembed(self.ln_f(x))  # (B, T, vocab)

        if return_attn:
            return logits, torch.stack(patterns)  # (n_layers, B, nh, T, T)
        return logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def attn_only(**kwargs) -> AttnOnlyTransformer:
    """Factory for the CLI: `slt_probe.demo.model:attn_only` with AttnOnlyConfig fields as kwargs."""
    return AttnOnlyTransformer(AttnOnlyConfig(**kwargs))
