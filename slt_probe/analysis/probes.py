"""Behavioural probes for induction circuits (Olsson et al. 2022, "In-context Learning and Induction Heads").

For a model whose forward(ids, return_attn=True) returns (logits, attention [L, B, H, T, T]):
  previous-token score    per head, the mean attention from each position t >= 1 to t - 1;
  prefix-matching score   per head, on a random block repeated twice, the mean attention from each token of
                          the second copy to the token *after* its earlier occurrence (what an induction head
                          attends to, so that it can copy it);
  in-context-learning score  mean loss late in the context minus mean loss early in it, on real windows:
                          negative when the model uses its context (Olsson et al.: loss at token 500 minus at
                          token 50; scaled here to the context length, see icl_score).
Both head scores are measured on the same sequences: blocks of distinct random tokens drawn from the byte
values the model has seen (so that every embedding involved has been trained, and a token occurs once per
block, so its earlier occurrence is unambiguous).

weight_norms() follows the weights that collapse around the stages of the anchor's model (Hoogland et al. 2024,
whose notebooks track "LN collapse" and "embedding collapse"): the norm of every LayerNorm's gain and of the
embeddings and unembedding.

onset() turns a score's curve over checkpoints into the step where it forms; best_scores() reduces the probes
of one checkpoint to the three scalars stored per checkpoint: best head of each kind, and the ICL score.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------------
# scores from attention patterns: pure functions of the tensor, so they are testable without a model


def prev_token_scores(attn: torch.Tensor) -> np.ndarray:
    """[L, H] mean attention to the previous token, over sequences and query positions t >= 1.

    attn: [L, B, H, T, T] attention patterns (query, key), rows summing to 1.
    """
    T = attn.shape[-1]
    t = torch.arange(1, T)
    to_prev = attn[..., t, t - 1]  # [L, B, H, T-1]
    return to_prev.mean(dim=(1, 3)).double().numpy()


def prefix_matching_scores(attn: torch.Tensor, block: int) -> np.ndarray:
    """[L, H] on sequences made of a block of `block` tokens repeated: the mean attention from each query
    t in the second copy (t >= block) to t - block + 1, the token that followed the same token last time.

    attn: [L, B, H, T, T] with T >= block + 1; queries beyond 2 * block (a third copy) count as well.
    """
    T = attn.shape[-1]
    if T <= block:
        raise ValueError(f"sequences of length {T} hold no second copy of a block of {block}")
    t = torch.arange(block, T)
    to_next = attn[..., t, t - block + 1]  # [L, B, H, T-block]
    return to_next.mean(dim=(1, 3)).double().numpy()


def per_position_loss(model: nn.Module, tokens: torch.Tensor, chunk: int = 128) -> np.ndarray:
    """[T] mean next-token cross-entropy at each position, over windows [N, T+1]."""
    total = None
    for part in tokens.split(chunk):
        logits = _logits(model(part[:, :-1]))  # [b, T, vocab]
        loss = F.cross_entropy(logits.transpose(1, 2).float(), part[:, 1:], reduction="none")  # [b, T]
        total = loss.sum(0) if total is None else total + loss.sum(0)
    return (total / tokens.shape[0]).double().numpy()


def icl_positions(T: int) -> tuple[slice, slice]:
    """(early, late) positions for the ICL score at context T: Olsson et al. compare token 500 with token 50
    of 8192, i.e. late and early by a factor 10; here positions [T/16, T/8) against the last T/8: at T = 32,
    positions 2-3 against 28-31; at T = 64, 4-7 against 56-63."""
    early = slice(max(1, T // 16), max(2, T // 8))
    late = slice(T - max(1, T // 8), T)
    return early, late


def icl_score(position_loss: np.ndarray) -> float:
    """Mean loss at late positions minus at early positions (icl_positions): negative when context helps."""
    early, late = icl_positions(len(position_loss))
    return float(position_loss[late].mean() - position_loss[early].mean())


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


# ----------------------------------------------------------------------------------------------------------
# the probes of one model


def repeated_blocks(vocab_tokens: Sequence[int], seq_len: int, n_seqs: int, seed: int) -> torch.Tensor:
    """[n_seqs, seq_len] int64: a block of seq_len // 2 distinct tokens from vocab_tokens, repeated twice
    (an odd seq_len leaves its last position to the start of a third copy). Tokens repeat within a block
    only when the vocabulary is smaller than the block."""
    vocab = np.asarray(vocab_tokens, dtype=np.int64)
    block = seq_len // 2
    if block < 2:
        raise ValueError(f"seq_len must be >= 4 (two blocks of >= 2 tokens), got {seq_len}")
    rng = np.random.default_rng(seed)
    if len(vocab) >= block:
        blocks = np.stack([rng.choice(vocab, size=block, replace=False) for _ in range(n_seqs)])  # [n, block]
    else:
        blocks = rng.choice(vocab, size=(n_seqs, block), replace=True)
    reps = -(-seq_len // block)
    return torch.from_numpy(np.tile(blocks, (1, reps))[:, :seq_len])


@torch.no_grad()
def induction_probes(
    model: nn.Module,
    *,
    vocab_tokens: Sequence[int],
    seq_len: Optional[int] = None,
    n_seqs: int = 64,
    seed: int = 0,
    icl_data: Optional[Union[torch.Tensor, np.ndarray]] = None,
) -> dict:
    """The probes of one model at its current weights.

    vocab_tokens: token ids the random blocks are drawn from (corpus.byte_vocab of the training text).
    seq_len: length of the repeated-block sequences (default: the model's n_ctx).
    icl_data: token windows [N, T+1] for the ICL score. Olsson et al. use natural text; at the demo's context
      (32 bytes) plain standard-library text shows no in-context gain, and a model trained on the copied-span
      mix is even slightly worse late in plain windows (it expects copies there), so the demo passes its
      held-out mixed windows (data.npy, the walk's data), where the score turns negative as induction forms.
    Returns {"prev_token": [L, H], "prefix_matching": [L, H], "block": int, and with icl_data
    "icl_score": float, "position_loss": [T]}. The model is left as it was (mode and weights).
    """
    if seq_len is None:
        seq_len = int(model.config.n_ctx)
    was_training = model.training
    model.eval()
    try:
        seqs = repeated_blocks(vocab_tokens, seq_len, n_seqs, seed)  # [n, T]
        _, attn = model(seqs, return_attn=True)  # attn: [L, n, H, T, T]
        block = seq_len // 2
        out = {"prev_token": prev_token_scores(attn), "prefix_matching": prefix_matching_scores(attn, block),
               "block": block}
        if icl_data is not None:
            tokens = torch.as_tensor(np.asarray(icl_data), dtype=torch.long)
            loss = per_position_loss(model, tokens)
            out["position_loss"] = loss
            out["icl_score"] = icl_score(loss)
    finally:
        model.train(was_training)
    return out


def best_scores(probes: dict) -> dict[str, float]:
    """The per-checkpoint scalars: the best head's previous-token and prefix-matching scores (over all
    layers and heads) and the ICL score (NaN when the probes were run without icl_data)."""
    return {"prev_token": float(np.max(probes["prev_token"])),
            "prefix_matching": float(np.max(probes["prefix_matching"])),
            "icl_score": float(probes.get("icl_score", float("nan")))}


# ----------------------------------------------------------------------------------------------------------
# weight norms

UNEMBEDDINGS = ("unembed", "lm_head", "embed_out")  # the output matrix's module name: ours, HF GPT-2's, Pythia's


def _normed(model: nn.Module) -> list[tuple[str, str, str, torch.Tensor]]:
    """[(name, label, description, weight)]: each LayerNorm's gain, each embedding, and the unembedding.
    Names end in "_norm" (plot.py draws such probes on their own panel, relative to their first value)."""
    out = []
    for name, m in model.named_modules():
        key = name.replace(".", "_")
        if isinstance(m, nn.LayerNorm) and m.weight is not None:
            out.append((f"{key}_gain_norm", f"‖γ‖ {name}", f"L2 norm of the gain (weight) of the LayerNorm {name}",
                        m.weight))
        elif isinstance(m, nn.Embedding) or (name in UNEMBEDDINGS and isinstance(m, nn.Linear)):
            out.append((f"{key}_norm", f"‖W‖ {name}", f"Frobenius norm of the weight of {name}", m.weight))
    return out


def norm_info(model: nn.Module) -> dict[str, tuple[str, str]]:
    """{name: (label, description)} of the norms weight_norms(model) measures."""
    return {key: (label, description) for key, label, description, _ in _normed(model)}


def weight_norms(model: nn.Module) -> dict[str, float]:
    """{name: norm} at the model's current weights: every LayerNorm gain, embedding and the unembedding."""
    return {key: float(w.detach().double().norm()) for key, _, _, w in _normed(model)}


# ----------------------------------------------------------------------------------------------------------
# over a run


def onset(steps: Sequence[int], scores: Sequence[float], *, n_final: int = 3, min_rise: float = 0.1,
          from_baseline: bool = False) -> Optional[int]:
    """The first step at which a score rises through half its final value: the onset the demo reports.

    final: the mean of the last n_final checkpoints (one checkpoint is noisy). A score that starts at or above
    half its final value cannot rise through it; there, and with from_baseline=True, the threshold is half-way
    from the initial value (the first checkpoint's) to the final one. The previous-token score starts at the
    uniform-attention level (~ log(T)/T), so the two definitions differ for it: the demo reports both.
    None when the score does not rise by at least min_rise (absolute) from start to finish.
    """
    order = np.argsort(np.asarray(steps), kind="stable")
    s = np.asarray(steps, dtype=np.int64)[order]
    y = np.asarray(scores, dtype=np.float64)[order]
    ok = np.isfinite(y)
    s, y = s[ok], y[ok]
    if len(y) < 2:
        return None
    first, final = y[0], y[-min(n_final, len(y)):].mean()
    if not final - first >= min_rise:
        return None
    half = 0.5 * final
    if from_baseline or first >= half:
        half = first + 0.5 * (final - first)
    above = np.nonzero(y >= half)[0]
    return int(s[above[0]])
