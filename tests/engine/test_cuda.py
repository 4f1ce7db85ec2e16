"""The engine on a CUDA device (marked `cuda`: `pytest -m cuda`; skipped without one, as on CI).

benchmarks/gpu_check.sh runs these first on a GPU machine."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_problems import CFG, lm_tokens, tiny_lm

from slt_probe import SGLDConfig, estimate_components, estimate_llc
from slt_probe.inputs.heads import components

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

BIG = {**CFG, "chains": 8, "draws": 200}


def test_cuda_and_cpu_read_the_same_llc_within_statistical_error():
    # the same seed gives the same minibatches; the noise comes from each device's own generator
    model, data = tiny_lm(), lm_tokens()
    cpu = estimate_llc(model, data, config=SGLDConfig(**BIG, device="cpu"))
    gpu = estimate_llc(model, data, config=SGLDConfig(**BIG, device="cuda"))
    assert gpu.diagnostics.method == "vmap"  # auto on CUDA
    assert gpu.init_loss == pytest.approx(cpu.init_loss, rel=1e-5)
    assert abs(gpu.llc_mean - cpu.llc_mean) < 4 * math.hypot(cpu.llc_se, gpu.llc_se), (cpu.llc_mean, gpu.llc_mean)
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays where it was


def test_vmap_and_loop_agree_on_cuda_and_bf16_autocast_runs():
    model, data = tiny_lm(), lm_tokens()
    cfg = SGLDConfig(**CFG, device="cuda")
    loop = estimate_llc(model, data, config=SGLDConfig(**{**cfg.to_dict(), "method": "loop"}))
    vmap = estimate_llc(model, data, config=SGLDConfig(**{**cfg.to_dict(), "method": "vmap"}))
    np.testing.assert_allclose(vmap.loss_trace, loop.loss_trace, rtol=1e-3)
    bf16 = estimate_llc(model, data, config=SGLDConfig(**{**cfg.to_dict(), "dtype": "bfloat16"}))
    assert np.isfinite(bf16.llc_mean) and abs(bf16.init_loss - loop.init_loss) < 0.02 * loop.init_loss


def test_heads_batched_on_cuda_read_as_their_own_runs():
    model, data = tiny_lm(), lm_tokens()
    heads = {c.name: c.params for c in components(model, "heads")}
    cfg = SGLDConfig(**CFG, device="cuda", method="loop")
    batched = estimate_components(model, data, heads, config=cfg)
    for name, params in list(heads.items())[:2]:
        alone = estimate_llc(model, data, config=replace(cfg, params=params))
        assert batched[name].llc_mean == pytest.approx(alone.llc_mean, rel=1e-5, abs=1e-6)
