"""
Deep linear network: x -> W_L ... W_2 W_1 x, no biases, no nonlinearities.

The standard test bed for LLC estimators, because the true learning coefficient
of a DLN is known in closed form (Aoyagi 2024, "Consideration on the learning
efficiency of multiple-layered neural networks with linear units"). The function
it computes depends only on the product matrix, so `product()` is what you
compare against a teacher.

Safe under torch.func.vmap / functional_call: forward is a chain of matmuls.

Usage from the CLI: `models/dln.py:dln` with `widths=[in, hidden..., out]`.
"""

from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass
class DLNConfig:
    # [input, hidden..., output]; len(widths) - 1 layers
    widths: list[int] = field(default_factory=lambda: [4, 8, 4])


class DLN(nn.Module):

    def __init__(self, cfg: DLNConfig):
        super().__init__()
        if len(cfg.widths) < 2:
            raise ValueError(f"widths needs at least [in, out], got {cfg.widths}")
        self.config = cfg
        self.layers = nn.ModuleList(
            [nn.Linear(d_in, d_out, bias=False) for d_in, d_out in zip(cfg.widths[:-1], cfg.widths[1:])]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in) -> (B, out)
        for layer in self.layers:
            x = layer(x)
        return x

    def product(self) -> torch.Tensor:
        """End-to-end matrix W_L ... W_1, shape (out, in)."""
        W = self.layers[0].weight  # (w1, in)
        for layer in self.layers[1:]:
            W = layer.weight @ W  # (w_{i+1}, w_i) @ (w_i, in)
        return W


def dln(widths: list[int] | None = None, **kw) -> DLN:
    """Factory for the CLI: `models/dln.py:dln` with DLNConfig fields as kwargs."""
    if widths is not None:
        kw["widths"] = list(widths)
    return DLN(DLNConfig(**kw))
