"""TransformerLens runs: a HookedTransformer's state dicts walked with `--model config.json` (slt_probe/inputs/tlens.py).

The checkpoints here are HookedTransformer state dicts (blocks.0.attn.W_Q [n_heads, d_model, d_head], ...) trained
with HookedTransformer's forward written out below, so they need no TransformerLens, and the model slt-probe builds
from the config is checked against that forward: with TransformerLens 4, which has no HookedTransformer, this is what
shows that its TransformerBridge computes the same function. (hooked_logits was checked against TransformerLens 3.9's
HookedTransformer: the same logits to 1e-6.) transformer-lens is a test extra: without it these tests fail.
"""

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from walkrun import SGLD, invoke, one_line_error

import slt_probe
from slt_probe.errors import CheckpointError, InputError
from slt_probe.inputs import tlens
from slt_probe.inputs.checkpoints import discover, load_into, load_state_dict
from slt_probe.inputs.specs import build_model

ARGS = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_vocab=32, n_ctx=16, act_fn="gelu_new")
# the same config as TransformerLens 3.9 saves it: json.dump(cfg.to_dict(), f, default=str) (dtype is no JSON type)
SAVED = {**ARGS, **json.loads("""{"d_mlp": 64, "device": "cpu", "use_attn_result": false,
  "use_split_qkv_input": false, "default_prepend_bos": true, "positional_embedding_type": "standard",
  "n_key_value_heads": null, "attn_only": false, "gated_mlp": false, "uses_rms_norm": false, "eps": 1e-05,
  "layer_norm_folding": false, "normalization_type": "LN", "num_experts": null, "experts_per_token": null,
  "final_rms": false, "dtype": "torch.float32", "model_name": "custom", "use_attn_scale": true,
  "attn_scale": 2.8284271247461903, "use_hook_mlp_in": false, "use_attn_in": false, "use_qk_norm": false,
  "clip_qkv": null, "use_logn_attn": false, "train_seq_length": null, "use_dynamic_ntk_rope": false,
  "use_local_attn": false, "ungroup_grouped_query_attention": false, "original_architecture": null,
  "from_checkpoint": false, "checkpoint_index": null, "checkpoint_label_type": null, "checkpoint_value": null,
  "tokenizer_name": null, "window_size": null, "attn_types": null, "init_mode": "gpt2", "n_devices": 1,
  "attention_dir": "causal", "seed": 0, "initializer_range": 0.2, "init_weights": true,
  "scale_attn_by_inverse_layer_idx": false, "d_vocab_out": 32, "parallel_attn_mlp": false, "rotary_dim": null,
  "n_params": 6144, "use_hook_tokens": false, "tokenizer_prepends_bos": null, "post_embedding_ln": false,
  "rotary_base": 10000, "rotary_base_local": null, "rotary_scaling_factor": 1.0, "trust_remote_code": false,
  "rotary_adjacent_pairs": false, "load_in_4bit": false, "quantization_method": null,
  "relative_attention_max_distance": null, "relative_attention_num_buckets": null, "decoder_start_token_id": null,
  "tie_word_embeddings": false, "use_normalization_before_and_after": false, "attn_scores_soft_cap": -1.0,
  "output_logits_soft_cap": -1.0, "use_NTK_by_parts_rope": false, "NTK_by_parts_low_freq_factor": 1.0,
  "NTK_by_parts_high_freq_factor": 4.0, "NTK_by_parts_factor": 8.0, "NTK_original_ctx_len": 8192,
  "use_yarn_rope": false, "yarn_factor": 1.0, "yarn_attention_factor": 1.0, "yarn_beta_fast": 32.0,
  "yarn_beta_slow": 1.0, "yarn_original_max_position_embeddings": 4096, "yarn_truncate": true,
  "yarn_global_attn_only": false, "use_attention_sinks": false, "norm_topk_prob": false}""")}
STEPS = [10, 20, 30]


def hooked_state(cfg: dict, seed: int = 0) -> dict:
    """A HookedTransformer's state_dict(): its names and shapes, random weights (and its two attention buffers)."""
    gen = torch.Generator().manual_seed(seed)
    d, h, e, V, T = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_vocab"], cfg["n_ctx"]
    m = cfg.get("d_mlp", 4 * d)
    shapes = {"embed.W_E": (V, d), "pos_embed.W_pos": (T, d), "ln_final.w": (d,), "ln_final.b": (d,),
              "unembed.W_U": (d, V), "unembed.b_U": (V,)}
    for i in range(cfg["n_layers"]):
        shapes.update({f"blocks.{i}.ln1.w": (d,), f"blocks.{i}.ln1.b": (d,), f"blocks.{i}.attn.W_O": (h, e, d),
                       f"blocks.{i}.attn.b_O": (d,)})
        shapes.update({f"blocks.{i}.attn.W_{n}": (h, d, e) for n in "QKV"})
        shapes.update({f"blocks.{i}.attn.b_{n}": (h, e) for n in "QKV"})
        if not cfg.get("attn_only"):
            shapes.update({f"blocks.{i}.ln2.w": (d,), f"blocks.{i}.ln2.b": (d,), f"blocks.{i}.mlp.W_in": (d, m),
                           f"blocks.{i}.mlp.b_in": (m,), f"blocks.{i}.mlp.W_out": (m, d), f"blocks.{i}.mlp.b_out": (d,)})
    state = {k: 0.3 * torch.randn(s, generator=gen) + (1.0 if k.endswith(".w") else 0.0) for k, s in shapes.items()}
    for i in range(cfg["n_layers"]):
        state[f"blocks.{i}.attn.mask"] = torch.ones(T, T, dtype=torch.bool).tril()
        state[f"blocks.{i}.attn.IGNORE"] = torch.tensor(-1e5)
    return state


def hooked_logits(w: dict, cfg: dict, tokens: torch.Tensor) -> torch.Tensor:
    """HookedTransformer's forward for LayerNorm, standard positions and a gelu_new MLP (or attention only)."""
    def ln(x, g, b):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + cfg.get("eps", 1e-5)).sqrt() * g + b

    T = tokens.shape[1]
    x = w["embed.W_E"][tokens] + w["pos_embed.W_pos"][:T]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(cfg["n_layers"]):
        p = {k.removeprefix(f"blocks.{i}."): v for k, v in w.items() if k.startswith(f"blocks.{i}.")}
        h = ln(x, p["ln1.w"], p["ln1.b"])
        q, k, v = (torch.einsum("btd,hde->bthe", h, p[f"attn.W_{n}"]) + p[f"attn.b_{n}"] for n in "QKV")
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg["d_head"])
        z = torch.einsum("bhqk,bkhe->bqhe", scores.masked_fill(future, -math.inf).softmax(-1), v)
        x = x + torch.einsum("bqhe,hed->bqd", z, p["attn.W_O"]) + p["attn.b_O"]
        if not cfg.get("attn_only"):
            h = ln(x, p["ln2.w"], p["ln2.b"])
            x = x + F.gelu(h @ p["mlp.W_in"] + p["mlp.b_in"], approximate="tanh") @ p["mlp.W_out"] + p["mlp.b_out"]
    return ln(x, w["ln_final.w"], w["ln_final.b"]) @ w["unembed.W_U"] + w["unembed.b_U"]


def trained_run(folder, cfg=ARGS):
    """A TransformerLens run: step_N.pt HookedTransformer state dicts trained on learnable tokens, data.npy [256, 9],
    config.json."""
    rng = np.random.default_rng(0)
    tokens = (np.arange(256 * 9).reshape(256, 9) * 7 + rng.integers(0, 3, (256, 9))) % cfg["d_vocab"]
    np.save(folder / "data.npy", tokens.astype(np.int64))
    (folder / "config.json").write_text(json.dumps(cfg))
    state = hooked_state(cfg)
    params = {k: v.requires_grad_() for k, v in state.items() if v.is_floating_point() and k.split(".")[-1] != "IGNORE"}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    ids = torch.from_numpy(tokens).long()
    gen = torch.Generator().manual_seed(0)
    (folder / "ckpts").mkdir()
    for step in range(max(STEPS) + 1):
        if step in STEPS:
            torch.save({k: v.detach().clone() for k, v in state.items()}, folder / "ckpts" / f"step_{step}.pt")
        batch = ids[torch.randint(0, len(ids), (32,), generator=gen)]
        logits = hooked_logits(state, cfg, batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return folder


@pytest.mark.parametrize("form", ["saved by to_dict", "its arguments"])
@pytest.mark.parametrize("attn_only", [False, True])
def test_the_model_from_a_config_computes_what_the_hooked_transformer_computed(tmp_path, form, attn_only):
    cfg = {**(SAVED if form == "saved by to_dict" else ARGS), "attn_only": attn_only}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    state = hooked_state(cfg, seed=1)
    torch.save(state, tmp_path / "step_5.pt")
    model, desc = build_model(str(tmp_path / "config.json"))
    (ckpt,), _ = discover(tmp_path)
    load_into(model, load_state_dict(ckpt), source=str(ckpt.path))
    tokens = torch.randint(0, 32, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hooked_logits(state, cfg, tokens), atol=2e-5, rtol=1e-5)
    # every parameter of the HookedTransformer is sampled, b_U included (TransformerLens 4 holds it as a buffer)
    assert desc["num_params"] == sum(v.numel() for k, v in state.items() if k.split(".")[-1] not in ("mask", "IGNORE"))
    assert desc["class"].startswith("transformer_lens.") and desc["transformer_lens"] == tlens.version()
    assert desc["kwargs"]["seed"] is None and desc["kwargs"]["device"] == "cpu" and "dtype" not in desc["kwargs"]


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_a_transformer_lens_run_is_walked_from_its_config(tmp_path, method):
    run = trained_run(tmp_path)
    sgld = [a if a != "loop" else method for a in SGLD]
    code, out = invoke("walk", run / "ckpts", "--model", run / "config.json", "--data", run / "data.npy",
                       "--out", run / "r.h5", *sgld, "--draws", "20", "--quiet", "--no-transitions")
    assert code == 0, out
    res = slt_probe.load_results(run / "r.h5")
    t = res.table
    assert list(t.step) == STEPS and set(t.status) == {"ok"}, t.message
    assert np.isfinite(t.llc_mean).all() and (t.llc_mean > 0).all() and np.isfinite(t.init_loss).all()
    assert (np.diff(t.init_loss) < 0).all()  # the training run's loss, falling: the checkpoints' weights were loaded
    assert res.attrs["model"]["class"].startswith("transformer_lens.") and res.attrs["method"] == method


FACTORY = """
import transformer_lens as tl

def make(**cfg):
    try:  # TransformerLens 3
        return tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    except ImportError:  # 4: no HookedTransformer
        from transformer_lens.config import TransformerBridgeConfig
        return tl.TransformerBridge.boot_native(TransformerBridgeConfig(**cfg))
"""


def test_a_factory_returning_a_transformer_lens_model_is_walked_with_its_own_state_dicts(tmp_path):
    """--model model.py:make: TransformerLens' own model class, whatever it is, and model.state_dict() files."""
    (tmp_path / "model.py").write_text(FACTORY)
    (tmp_path / "model.json").write_text(json.dumps(ARGS))
    model, desc = build_model(f"{tmp_path / 'model.py'}:make", tmp_path / "model.json")
    assert desc["class"] in ("transformer_lens.HookedTransformer.HookedTransformer",
                             "transformer_lens.model_bridge.transformer_bridge.TransformerBridge")
    (tmp_path / "ckpts").mkdir()
    gen = torch.Generator().manual_seed(0)
    for step in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        torch.save(model.state_dict(), tmp_path / "ckpts" / f"step_{step}.pt")
    np.save(tmp_path / "data.npy", np.random.default_rng(0).integers(0, 32, (64, 9)))
    code, out = invoke("walk", tmp_path / "ckpts", "--model", f"{tmp_path / 'model.py'}:make", "--model-config",
                       tmp_path / "model.json", "--data", tmp_path / "data.npy", "--out", tmp_path / "r.h5", *SGLD,
                       "--quiet", "--no-transitions")
    assert code == 0 and "Moving model" not in out, out  # TransformerLens' own .to prints that
    t = slt_probe.load_results(tmp_path / "r.h5").table
    assert list(t.step) == [1, 2] and set(t.status) == {"ok"} and np.isfinite(t.llc_mean).all(), t.message


def test_a_checkpoint_that_does_not_fit_the_config_is_refused_naming_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(ARGS))
    model, _ = build_model(str(tmp_path / "config.json"))
    state = hooked_state({**ARGS, "n_heads": 4, "d_head": 4})  # the same d_model, split into other heads
    with pytest.raises(CheckpointError, match=r"^run/step_1\.pt: .*blocks\.0\.attn\.W_[QKVO]") as e:
        load_into(model, state, source="run/step_1.pt")
    assert "\n" not in str(e.value)


def test_without_transformer_lens_the_walk_stops_in_one_line_naming_the_extra(tmp_path, monkeypatch):
    run = trained_run(tmp_path)
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import transformer_lens raises ImportError
    code, out = invoke("walk", run / "ckpts", "--model", run / "config.json", "--data", run / "data.npy",
                       "--out", run / "r.h5", *SGLD)
    assert code == 2
    assert "pip install 'slt-probe[transformer-lens]'" in one_line_error(out) and "config.json" in out
    assert not (run / "r.h5").exists()


def test_config_errors_are_one_line(tmp_path):
    def error(cfg, *extra):
        (tmp_path / "c.json").write_text(json.dumps(cfg))
        with pytest.raises(InputError) as e:
            build_model(str(tmp_path / "c.json"), *extra)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "d_vocab" in error({k: v for k, v in ARGS.items() if k != "d_vocab"})
    assert "lacks d_head" in error({k: v for k, v in ARGS.items() if k != "d_head"})
    assert "Hugging Face config" in error({"model_type": "gpt2", "n_layer": 2})
    assert "--model-config applies to a factory" in error(ARGS, tmp_path / "c.json")
    assert "not_a_field" in error({**ARGS, "not_a_field": 1})
    if int(tlens.version().split(".")[0]) >= 4:
        # a HookedTransformer the native TransformerBridge would compute differently: refused, not walked wrong
        for key, value in {"parallel_attn_mlp": True, "positional_embedding_type": "rotary", "gated_mlp": True,
                           "use_attn_scale": False}.items():
            message = error({**ARGS, key: value})
            assert key in message and "pip install 'transformer-lens<4'" in message, message
