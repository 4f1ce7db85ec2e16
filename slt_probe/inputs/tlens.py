"""TransformerLens models from their config alone, and HookedTransformer checkpoints loaded into them.

A TransformerLens training run saves `model.state_dict()` of a HookedTransformer (blocks.0.attn.W_Q [n_heads, d_model,
d_head], embed.W_E, unembed.W_U, ...) beside its HookedTransformerConfig. `--model config.json` rebuilds that model
from the config's fields; nothing is downloaded (no from_pretrained, no tokenizer):

  TransformerLens < 4   HookedTransformer(HookedTransformerConfig(**config)); the checkpoints load as they were saved
  TransformerLens >= 4  HookedTransformer was removed. TransformerBridge.boot_native(TransformerBridgeConfig) builds
                        TransformerLens' own transformer, which computes the HookedTransformer's logits from the same
                        weights; each checkpoint is converted on loading by TransformerLens' convert_tl_checkpoint
                        (checkpoints.load_into). A config using a feature the native transformer lacks is refused.

transformer-lens is imported only here and only when a TransformerLens config is given: it takes seconds.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import sys
import warnings
from typing import Any

import torch
from torch import nn

from slt_probe.errors import CheckpointError, InputError

EXTRA = "pip install 'slt-probe[transformer-lens]'"

# HookedTransformerConfig's required fields: what tells a TransformerLens config from a factory's keyword arguments
REQUIRED = ("n_layers", "d_model", "n_ctx", "d_head")

# Fields whose saved value must not be used. device: the walk places the model (--device); n_devices: one model, one
# device; seed: the weights come from the checkpoints, and HookedTransformerConfig would reseed the global generators
# of Python, NumPy and torch with it; tokenizer_name: TransformerLens would download that tokenizer.
OVERRIDDEN = {"device": "cpu", "n_devices": 1, "seed": None, "tokenizer_name": None}
# dtype: a string once saved as JSON ("torch.float32"), and the walk samples at --dtype anyway; n_params: derived
DROPPED = ("dtype", "n_params")

# HookedTransformer features that TransformerLens 4's native transformer does not compute as HookedTransformer does,
# each with the value that leaves it off: a config that turns one on would be walked as a different function, so it
# is refused. Measured against HookedTransformer 3.9 (same weights, same logits to 2e-6) where the native transformer
# has the feature: use_attn_scale=False still divides by sqrt(d_head); its gated MLP has no biases (b_in, b_out);
# its rotary embedding rotates adjacent pairs (rotary_adjacent_pairs=True), not halves (checked in _bridge).
# original_architecture: a config derived from a pretrained model, which HookedTransformer special-cases (OLMo's QK norm)
NATIVE_LACKS = {
    "parallel_attn_mlp": False, "use_local_attn": False, "attn_types": None, "scale_attn_by_inverse_layer_idx": False,
    "use_qk_norm": False, "post_embedding_ln": False, "use_normalization_before_and_after": False,
    "num_experts": None, "use_NTK_by_parts_rope": False, "use_yarn_rope": False, "use_dynamic_ntk_rope": False,
    "use_logn_attn": False, "clip_qkv": None, "use_attention_sinks": False, "rotary_base_local": None,
    "rotary_scaling_factor": 1.0, "load_in_4bit": False, "quantization_method": None, "original_architecture": None,
    "use_attn_scale": True, "gated_mlp": False,
}
# HookedTransformerConfig fields (3.9) that TransformerBridgeConfig lacks and that matter only with a feature refused
# above, or only to hooks: accepted and left out
NATIVE_IGNORES = {
    "NTK_original_ctx_len", "yarn_attention_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_factor",
    "yarn_global_attn_only", "yarn_original_max_position_embeddings", "yarn_truncate", "train_seq_length",
    "norm_topk_prob", "ungroup_grouped_query_attention",
}
# rotary tables: buffers the bridge computes from the config; convert_tl_checkpoint refuses them as unknown keys
ROTARY_TABLES = (".rotary_sin", ".rotary_cos")
# a HookedTransformer's buffers that it builds from its config: the causal mask ([n_ctx, n_ctx] up to 3.x's later
# releases, an empty placeholder since), the masked score (-1e5, later -inf), the rotary tables. A checkpoint's are
# never loaded: one from another TransformerLens release has them in another shape.
HOOKED_DERIVED = (".mask", ".IGNORE") + ROTARY_TABLES


def _why(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:300]}" if msg else type(e).__name__


def version() -> str:
    return importlib.metadata.version("transformer-lens")


def is_config(d: Any) -> bool:
    """A TransformerLens config (HookedTransformerConfig's fields), not a Hugging Face config or a factory's kwargs."""
    return isinstance(d, dict) and "model_type" not in d and all(k in d for k in REQUIRED)


def build(config: dict, where: str) -> tuple[nn.Module, dict, str]:
    """(the model, the config as used, what built it) from a TransformerLens config; InputError, one line, naming
    `where`, when transformer-lens is missing or rejects the config."""
    try:
        importlib.import_module("transformer_lens")
    except ImportError as e:
        if e.name in ("transformer_lens", None):
            raise InputError(f"{where}: a TransformerLens config needs transformer-lens; {EXTRA}") from None
        raise InputError(f"{where}: importing transformer_lens raised {_why(e)}") from None
    d_vocab = config.get("d_vocab")
    if isinstance(d_vocab, bool) or not isinstance(d_vocab, int) or d_vocab < 1:
        raise InputError(f"{where}: d_vocab must be the vocabulary size (TransformerLens would take it from a "
                         f"tokenizer, which slt-probe never downloads), got {d_vocab!r}")
    cfg = {k: v for k, v in config.items() if k not in DROPPED}
    cfg.update(OVERRIDDEN)
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig  # removed in 4.0
    except ImportError:
        return _bridge(cfg, where), cfg, "transformer_lens.TransformerBridge.boot_native"
    return _hooked(HookedTransformer, HookedTransformerConfig, cfg, where), cfg, "transformer_lens.HookedTransformer"


def _hooked(base: type, config_cls: type, cfg: dict, where: str) -> nn.Module:
    unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise InputError(f"{where}: not fields of TransformerLens {version()}'s HookedTransformerConfig: "
                         f"{', '.join(unknown)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.x: "removed in 4.0"; 4.x is walked too (_bridge)
            model = base(config_cls(**cfg))
    except Exception as e:  # noqa: BLE001 - an assertion or a ValueError of TransformerLens, in one line
        raise InputError(f"{where}: TransformerLens rejected the config: {_why(e)}") from None
    return adapt(model)


def adapt(model: nn.Module) -> nn.Module:
    """A TransformerLens model made fit for the walk, which moves it with .to and deep-copies it for every estimate
    (the same model, in place); any other model as it is."""
    if is_hooked(model):
        model.__class__ = _on_its_device(type(model))
    elif is_bridge(model):
        # Its blocks' capture hooks (for the split-qkv and hook_mlp_in hook points, which λ̂ never uses) close over a
        # weak proxy of their block, which copy.deepcopy shares with the copy: every estimate's copy would write its
        # activations into this model, and the next copy would fail on their autograd graph (or on vmap's batched
        # tensors). Removed, and kept from being wired again.
        for module in model.modules():
            if callable(getattr(module, "_teardown_capture_hooks", None)):
                module._teardown_capture_hooks()
                module._capture_hooks_wired = True
        model.__class__ = _quiet(type(model))
    return model


_DEVICE_FOLLOWING: dict[type, type] = {}


def _on_its_device(base: type) -> type:
    """HookedTransformer with cfg.device (and cfg.dtype) following its parameters.

    HookedTransformer moves every input to cfg.device, which only its own .to updates, while the walk and the sampler
    move models with nn.Module.to; its .to also prints, and takes no device= keyword.
    """
    if base in _DEVICE_FOLLOWING.values():
        return base
    if base not in _DEVICE_FOLLOWING:
        class HookedTransformer(base):
            def to(self, *args, **kwargs):
                return nn.Module.to(self, *args, **kwargs)

            def _apply(self, fn, *args, **kwargs):
                out = super()._apply(fn, *args, **kwargs)
                p = next(iter(self.parameters()), None)
                if p is not None:
                    # str: "cuda:1", where TransformerLens' own .to would keep "cuda" and send inputs to cuda:0
                    self.cfg.device, self.cfg.dtype = str(p.device), p.dtype
                return out

        _DEVICE_FOLLOWING[base] = HookedTransformer
    return _DEVICE_FOLLOWING[base]


def _bridge(cfg: dict, where: str) -> nn.Module:
    from transformer_lens import TransformerBridge
    from transformer_lens.config import TransformerBridgeConfig

    on = [f"{k}={cfg[k]!r}" for k, off in NATIVE_LACKS.items() if k in cfg and cfg[k] != off]
    if cfg.get("positional_embedding_type") == "rotary" and not cfg.get("rotary_adjacent_pairs", False):
        on.append("positional_embedding_type='rotary' with rotary_adjacent_pairs=False")
    if on:
        raise InputError(f"{where}: TransformerLens {version()} has no HookedTransformer, and its native transformer "
                         f"does not compute {', '.join(on)} as HookedTransformer does; walk it with "
                         f"pip install 'transformer-lens<4'")
    known = set(NATIVE_LACKS) | NATIVE_IGNORES | {"rotary_adjacent_pairs"}
    for cls in TransformerBridgeConfig.__mro__:  # its **kwargs reach TransformerLensConfig's fields
        if cls is not object:
            known |= set(inspect.signature(cls).parameters) - {"kwargs"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise InputError(f"{where}: fields TransformerLens {version()} does not know: {', '.join(unknown)}")
    try:
        bridge = TransformerBridge.boot_native(
            TransformerBridgeConfig.from_dict({k: v for k, v in cfg.items() if k not in NATIVE_IGNORES}))
    except Exception as e:  # noqa: BLE001 - e.g. an act_fn the native transformer lacks, in one line
        raise InputError(f"{where}: TransformerLens rejected the config: {_why(e)}") from None
    # The bridge keeps the unembedding bias b_U as a fixed buffer (its native models train none); a HookedTransformer
    # trains it, so it is sampled as the parameter it was.
    for module in bridge.original_model.modules():
        if isinstance(module, nn.Linear) and "bias" in module._buffers:
            module.bias = nn.Parameter(module._buffers.pop("bias"))
    return adapt(bridge)


_QUIET: dict[type, type] = {}


def _quiet(base: type) -> type:
    """TransformerBridge whose .to (the walk moves its model with it) does not print "Moving model to device"."""
    if base in _QUIET.values():
        return base
    if base not in _QUIET:
        class TransformerBridge(base):
            def to(self, *args, **kwargs):
                kwargs.setdefault("print_details", False)
                return super().to(*args, **kwargs)

        _QUIET[base] = TransformerBridge
    return _QUIET[base]


def is_bridge(model: nn.Module) -> bool:
    """A TransformerLens TransformerBridge (transformer_lens is imported wherever one exists)."""
    module = sys.modules.get("transformer_lens.model_bridge.transformer_bridge")
    cls = getattr(module, "TransformerBridge", None)
    return isinstance(cls, type) and isinstance(model, cls)


def is_hooked(model: nn.Module) -> bool:
    """A TransformerLens 3 HookedTransformer (transformer_lens is imported wherever one exists)."""
    module = sys.modules.get("transformer_lens.HookedTransformer")
    cls = getattr(module, "HookedTransformer", None)
    return isinstance(cls, type) and isinstance(model, cls)


def without_derived(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A HookedTransformer checkpoint without the buffers the model builds from its config (HOOKED_DERIVED)."""
    return {k: v for k, v in state.items() if not k.endswith(HOOKED_DERIVED)}


def _hooked_name(key: str) -> bool:
    """A HookedTransformer's parameter name (blocks.0.attn.W_Q, ln_final.w), not a bridge's (...q.weight)."""
    last = key.rsplit(".", 1)[-1]
    return last.lstrip("_").startswith(("W_", "b_")) or last in ("w", "b")


def from_hooked_names(bridge: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A HookedTransformer checkpoint's weights under the bridge's state_dict() names, converted (keys and per-head
    shapes) by TransformerLens' own convert_tl_checkpoint; any other checkpoint as it is."""
    if not any(_hooked_name(k) for k in state):
        return state
    try:
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
    except ImportError:  # 4.0 added it; a 3.x bridge (a factory's) cannot read HookedTransformer names
        raise CheckpointError(f"{source}: a HookedTransformer checkpoint, and TransformerLens {version()} cannot convert "
                              f"it for a TransformerBridge (convert_tl_checkpoint came with 4.0)") from None
    try:
        return convert_tl_checkpoint({k: v for k, v in state.items() if not k.endswith(ROTARY_TABLES)}, bridge.cfg)
    except ValueError as e:  # an unknown key, or per-head shapes that do not fit the config
        raise CheckpointError(f"{source}: {' '.join(str(e).split())}") from None
