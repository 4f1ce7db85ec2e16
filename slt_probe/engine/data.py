"""Data for the estimator: a tensor (or tuple of tensors) whose first dimension indexes samples.

Everything that decides *which* samples a step sees lives here, so that the minibatch sequence is a
pure function of (dataset size, batch size, seed): every chain and every checkpoint sees the same
sequence (common random numbers), and differences between checkpoints are not sampling noise.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

Data = Union[torch.Tensor, tuple[torch.Tensor, ...]]
LossFn = Callable[[nn.Module, Data], torch.Tensor]  # (model, batch) -> scalar mean loss


def as_tuple(data: Data) -> tuple[torch.Tensor, ...]:
    tensors = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("data must be a tensor or a tuple of tensors (first dimension = samples)")
    n = tensors[0].shape[0] if tensors[0].dim() > 0 else 0
    if n == 0:
        raise ValueError("data has no samples (its first dimension is empty)")
    for t in tensors[1:]:
        if t.dim() == 0 or t.shape[0] != n:
            raise ValueError(f"data tensors disagree on the number of samples: {[tuple(t.shape) for t in tensors]}")
    return tensors


def num_samples(data: Data) -> int:
    return as_tuple(data)[0].shape[0]


def take(data: Data, idx: torch.Tensor) -> Data:
    """Rows `idx` of every tensor, keeping the container type of `data`."""
    if isinstance(data, torch.Tensor):
        return data[idx]
    return tuple(t[idx] for t in data)


def to_device(data: Data, device: torch.device) -> Data:
    if isinstance(data, torch.Tensor):
        return data.to(device)
    return tuple(t.to(device) for t in data)


def batch_schedule(n: int, batch_size: int, steps: int, seed: int, repeat_every: int = 0) -> torch.Tensor:
    """Minibatch indices for every step: [steps, batch_size], epochs of seeded permutations.

    With repeat_every = k > 1, step t (t % k == 1) reuses step t-1's batch, so the pair (t-1, t) sees one
    fixed potential and the sampler can measure an exact MALA acceptance ratio there at no extra cost.
    """
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} samples)")
    gen = torch.Generator().manual_seed(seed)
    fresh = steps if repeat_every < 2 else steps - (steps + repeat_every - 2) // repeat_every
    per_epoch = n // batch_size  # drop the ragged tail of each epoch: every batch has the same size
    epochs = -(-fresh // per_epoch)
    perms = [torch.randperm(n, generator=gen)[: per_epoch * batch_size] for _ in range(epochs)]
    batches = torch.cat(perms).view(-1, batch_size)[:fresh]  # [fresh, batch]
    if repeat_every < 2:
        return batches
    t = torch.arange(steps)
    is_repeat = (t % repeat_every == 1)
    which = torch.cumsum(~is_repeat, 0) - 1  # index into `batches` of the fresh batch each step uses
    return batches[which]


def lm_cross_entropy(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on token ids [B, T+1]: predict batch[:, 1:] from batch[:, :-1].

    ValueError, naming what the model returned, when it is not logits [B, T, vocab] for every position.
    """
    x = batch[:, :-1].contiguous()  # [B, T]; contiguous: a model may .view() its input
    out = model(x)
    logits = getattr(out, "logits", out)  # Hugging Face models return an output object
    if isinstance(logits, (tuple, list)):  # nanoGPT returns (logits, loss), TransformerLens may return a tuple
        logits = logits[0] if logits else logits
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x.shape):
        got = f"a tensor of shape {list(logits.shape)}" if isinstance(logits, torch.Tensor) else type(out).__name__
        raise ValueError(f"the default next-token loss needs logits [B, T, vocab] for tokens {list(x.shape)}, the model "
                         f"returned {got} (nanoGPT's GPT returns the last position only unless given targets); "
                         "pass --loss targets (the model's own loss) or --loss file.py:fn")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def lm_targets_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The model's own next-token loss, model(x, targets=y) -> (logits, loss), as nanoGPT's GPT computes it; on
    token ids [B, T+1], x = batch[:, :-1] and y = batch[:, 1:], both contiguous (nanoGPT views targets)."""
    out = model(batch[:, :-1].contiguous(), targets=batch[:, 1:].contiguous())
    loss = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else getattr(out, "loss", None)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"--loss targets: model(x, targets=y) returned {type(out).__name__}, not (logits, loss) "
                         "with a scalar loss; pass --loss file.py:fn")
    return loss.reshape(()).float()


def check_lm_tokens(data: Data) -> None:
    """The default loss needs integer token ids of shape [N, T+1] with T >= 1."""
    if not isinstance(data, torch.Tensor):
        raise ValueError("the default next-token loss takes one tensor of token ids; pass loss_fn for other data")
    if data.dtype.is_floating_point or data.dtype == torch.bool or data.dim() != 2 or data.shape[1] < 2:
        raise ValueError(
            f"the default next-token loss needs integer token ids of shape [N, T+1], got {data.dtype} "
            f"{tuple(data.shape)}; pass loss_fn for other data"
        )
    if int(data.min()) < 0:
        raise ValueError(f"token ids must be non-negative, found {int(data.min())}")
