"""The demo's attention-only transformer, for `slt-probe walk --model models/attn_only.py:attn_only`.

The code lives in the package (slt_probe/demo/model.py), so that an installed slt-probe runs the demo from anywhere;
this file points at it. `--model slt_probe.demo.model:attn_only` is the same model.
"""

from slt_probe.demo.model import AttnOnlyConfig, AttnOnlyTransformer, CausalSelfAttention, attn_only

__all__ = ["AttnOnlyConfig", "AttnOnlyTransformer", "CausalSelfAttention", "attn_only"]
