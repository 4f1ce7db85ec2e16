"""Components of a transformer from its own layout: one per attention head (`--refine heads`) or per layer.

A head is a set of coordinates (engine Coordinates), not of whole tensors: q, k and v of all heads are usually one
fused matrix. What one head's coordinates are, per layout (d = d_model, dh = d_head, h = the head):
  attn_only, nanoGPT  qkv / c_attn Linear [3d, d]: rows h·dh…(h+1)·dh of each of the q, k, v blocks (and of the
                      bias); out / c_proj Linear [d, d]: columns h·dh…(h+1)·dh
  GPT-2               c_attn Conv1D [d, 3d]: the same columns of each q, k, v block (and of the bias);
                      c_proj Conv1D [d, d]: rows h·dh…(h+1)·dh
  GPT-NeoX (Pythia)   query_key_value Linear [3d, d], interleaved per head: rows h·3dh…(h+1)·3dh (q_h, k_h, v_h)
                      and the bias; dense Linear [d, d]: columns h·dh…(h+1)·dh
  Llama, Mistral, …   q_proj rows h·dh…(h+1)·dh, o_proj columns h·dh…(h+1)·dh, and with grouped-query attention
                      the k_proj and v_proj rows of h's group g = h // (n_heads / n_kv_heads): everything that
                      computes h's output. The heads of a group share their k/v coordinates, so their components
                      overlap there (and their refined λ̂ are not additive)
  TransformerLens 3   W_Q, W_K, W_V [n_heads, d, dh], b_Q, b_K, b_V [n_heads, dh], W_O [n_heads, dh, d]: index h
                      (grouped: _W_K, _W_V, _b_K, _b_V [n_kv_heads, …] at h's group)
  TransformerLens 4   its native transformer's q, k, v, o Linears: as Llama's (the bridge's TransformerBridge)
The output bias (out.bias, c_proj.bias, dense.bias, b_O) adds to every head's output and belongs to none.
A layer is every parameter of the block that holds the layer's attention (its MLP, LayerNorms, …).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from slt_probe.engine.sampler import Coordinates, Params
from slt_probe.errors import InputError


@dataclass(frozen=True)
class Component:
    """A part of the model whose refined λ̂ is estimated: name (L0H3, L1, …), what it samples, where it sits."""

    name: str
    params: Params
    layer: Optional[int] = None
    head: Optional[int] = None


@dataclass
class Attention:
    """One layer's attention: where its tensors are and which of their coordinates each head owns."""

    prefix: str  # the attention module's name in model.named_modules()
    n_heads: int
    owned: Callable[[int], dict[str, tuple]]  # head -> {parameter name under prefix: index of its coordinates}


def _rows(start: int, size: int) -> slice:
    return slice(start, start + size)


def _fused_linear(m: nn.Module, qkv: str, out: str, n_heads: int, transposed: bool) -> Callable[[int], dict]:
    """q|k|v blocks of one fused projection (Linear [3d, d], or GPT-2's Conv1D [d, 3d]), an output projection."""
    fused = getattr(m, qkv)
    d = (fused.weight.shape[0] if transposed else fused.weight.shape[1])
    dh = d // n_heads

    def owned(h: int) -> dict:
        blocks = [_rows(b * d + h * dh, dh) for b in range(3)]
        idx = {}
        for b in blocks:  # each index is one slice; three per tensor are merged below
            idx.setdefault(f"{qkv}.weight", []).append((slice(None), b) if transposed else (b,))
            if getattr(fused, "bias", None) is not None:
                idx.setdefault(f"{qkv}.bias", []).append((b,))
        idx[f"{out}.weight"] = [(_rows(h * dh, dh),) if transposed else (slice(None), _rows(h * dh, dh))]
        return idx

    return owned


def _neox(m: nn.Module) -> Attention:
    n, dh = m.config.num_attention_heads, m.head_size

    def owned(h: int) -> dict:
        idx = {"query_key_value.weight": [(_rows(h * 3 * dh, 3 * dh),)], "dense.weight": [(slice(None), _rows(h * dh, dh))]}
        if m.query_key_value.bias is not None:
            idx["query_key_value.bias"] = [(_rows(h * 3 * dh, 3 * dh),)]
        return idx

    return Attention("", n, owned)


def _linear(m: nn.Module, attr: str) -> str:
    """The path under m of the Linear at m.attr: itself, or the one a TransformerLens 4 bridge wraps."""
    return attr if isinstance(getattr(m, attr), nn.Linear) else f"{attr}._original_component"


def _separate(m: nn.Module, q: str, k: str, v: str, o: str, n: int, n_kv: int, dh: int) -> Attention:
    """Separate q, k, v, o projections (Linear [heads × dh, d], o [d, heads × dh]); with grouped-query attention
    head h reads the k/v of group h // (n / n_kv), as HF Llama's repeat_kv and TransformerLens' repeat_interleave."""
    per_group = n // n_kv

    def owned(h: int) -> dict:
        g = h // per_group
        idx = {}
        for proj, i in ((q, h), (k, g), (v, g)):
            path = _linear(m, proj)
            idx[f"{path}.weight"] = [(_rows(i * dh, dh),)]
            if m.get_submodule(path).bias is not None:
                idx[f"{path}.bias"] = [(_rows(i * dh, dh),)]
        idx[f"{_linear(m, o)}.weight"] = [(slice(None), _rows(h * dh, dh))]
        return idx

    return Attention("", n, owned)


def _llama(m: nn.Module) -> Attention:
    n = m.config.num_attention_heads
    return _separate(m, "q_proj", "k_proj", "v_proj", "o_proj", n,
                     getattr(m.config, "num_key_value_heads", None) or n, m.head_dim)


def _transformer_lens(m: nn.Module) -> Attention:
    """TransformerLens 3's Attention: W_Q [n_heads, d, dh], ...; GroupedQueryAttention's _W_K, _W_V per group."""
    n = m.cfg.n_heads
    n_kv = getattr(m.cfg, "n_key_value_heads", None) or n

    def owned(h: int) -> dict:
        g = h // (n // n_kv)
        return {name: [(g if name.startswith("_") else h,)] for name in m._parameters if name != "b_O"}

    return Attention("", n, owned)


def _layout(m: nn.Module) -> Optional[Attention]:
    """The attention layout of module m, or None when m is not an attention module this file knows."""
    cls = type(m).__name__
    if cls.startswith("GPT2Attention") and hasattr(m, "c_attn") and not getattr(m, "is_cross_attention", False):
        return Attention("", m.num_heads, _fused_linear(m, "c_attn", "c_proj", m.num_heads, transposed=True))
    if hasattr(m, "query_key_value") and hasattr(m, "dense") and hasattr(m, "head_size"):
        return _neox(m)
    if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")) and hasattr(m, "config"):
        return _llama(m)
    if "W_Q" in m._parameters and "W_O" in m._parameters and hasattr(m, "cfg"):  # not the root's stacked W_Q
        return _transformer_lens(m)
    if all(isinstance(getattr(m, a, None), nn.Module) for a in "qkvo") and isinstance(getattr(m, "n_kv_heads", None), int):
        return _separate(m, "q", "k", "v", "o", m.n_heads, m.n_kv_heads, m.d_head)  # TransformerLens 4's native
    for qkv, out, heads in (("qkv", "out", "n_heads"), ("c_attn", "c_proj", "n_head")):  # attn_only, nanoGPT
        if isinstance(getattr(m, qkv, None), nn.Linear) and isinstance(getattr(m, out, None), nn.Linear) \
                and isinstance(getattr(m, heads, None), int):
            n = getattr(m, heads)
            return Attention("", n, _fused_linear(m, qkv, out, n, transposed=False))
    return None


def attention_layers(model: nn.Module) -> list[Attention]:
    """Every attention module of the model, in layer order; ValueError when none has a known layout."""
    found = []
    for prefix, m in model.named_modules():
        if any(prefix.startswith(a.prefix + ".") for a in found):
            continue  # inside an attention already found (its q_proj, say)
        att = _layout(m)
        if att is not None:
            att.prefix = prefix
            found.append(att)
    if not found:
        raise ValueError(f"{type(model).__name__}: no attention module of a known layout (attn_only, nanoGPT, GPT-2, "
                         f"GPT-NeoX, Llama-family q/k/v/o_proj, TransformerLens); select parameters with NAME=REGEX")
    return found


def head_masks(model: nn.Module, att: Attention, h: int) -> dict[str, torch.Tensor]:
    """{parameter name: bool mask of its shape} of head h of attention `att`, under the names named_parameters()
    gives (a TransformerLens 4 bridge reaches each tensor by two paths; the first is the name)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    module = model.get_submodule(att.prefix)
    masks = {}
    for local, indices in att.owned(h).items():
        p = module.get_parameter(local)
        mask = torch.zeros(p.shape, dtype=torch.bool)
        for index in indices:
            mask[index] = True
        masks[name_of[id(p)]] = mask
    return masks


def _block(model: nn.Module, prefix: str) -> nn.Module:
    """The layer holding module `prefix`: its ancestor that is an item of a ModuleList."""
    parts = prefix.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if isinstance(model.get_submodule(".".join(parts[:i])), nn.ModuleList):
            return model.get_submodule(".".join(parts[: i + 1]))
    return model.get_submodule(prefix)


def _layer_params(model: nn.Module, block: nn.Module, label: str) -> Params:
    """Every parameter of `block`: a regex over their names when one selects exactly them, else their masks."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [name_of[id(p)] for p in block.parameters()]
    common = os.path.commonprefix(names)
    prefix = common[: common.rfind(".") + 1]
    pattern = "^" + re.escape(prefix)
    if prefix and sorted(n for n in name_of.values() if re.search(pattern, n)) == sorted(names):
        return pattern
    return Coordinates({n: torch.ones(p.shape, dtype=torch.bool) for n, p in model.named_parameters() if n in names},
                       label)


def head_name(layer: int, head: int) -> str:
    """A head's component name: L<layer>H<head>."""
    return f"L{layer}H{head}"


def components(model: nn.Module, kind: str) -> list[Component]:
    """One Component per attention head (kind "heads", named L<layer>H<head>) or per layer ("layers", L<layer>)."""
    layers = attention_layers(model)
    if kind == "layers":
        return [Component(f"L{i}", _layer_params(model, _block(model, a.prefix), f"layer {i}"), layer=i)
                for i, a in enumerate(layers)]
    if kind != "heads":
        raise ValueError(f"expected heads or layers, got {kind!r}")
    return [Component(head_name(i, h), Coordinates(head_masks(model, a, h), f"head {h} of layer {i} ({a.prefix})"),
                      layer=i, head=h)
            for i, a in enumerate(layers) for h in range(a.n_heads)]


def resolve(model: nn.Module, refine: list) -> list[Component]:
    """--refine items as components: "heads", "layers", (NAME, REGEX), or a Component (one head of components(),
    say). InputError when the model has no heads."""
    out = []
    for item in refine:
        if isinstance(item, Component):
            out.append(item)
        elif isinstance(item, str):
            try:
                out += components(model, item)
            except ValueError as e:
                raise InputError(f"--refine {item}: {e}") from None
        else:
            out.append(Component(item[0], item[1]))
    names = [c.name for c in out]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"--refine: the component names {', '.join(duplicated)} are given twice")
    return out
