"""Training the demo's model (slt_probe/demo/train.py): the checkpoint grid, a run a walk can read (checkpoints,
model.json, data, probe tokens, the training log), deterministic and leaving the caller's global state alone.

The training run is the 20-step tiny run of tests/demo/conftest.py.
"""

import json
import math

import numpy as np
import torch

from slt_probe.demo.corpus import CorpusConfig
from slt_probe.demo.train import MODEL_SPEC, TrainConfig, checkpoint_steps, train_demo
from slt_probe.inputs.checkpoints import discover, load_into, load_state_dict
from slt_probe.inputs.specs import build_model


def test_checkpoint_grid():
    cfg = TrainConfig(steps=3000, n_log=20, n_linear=10, log_from=1)
    steps = checkpoint_steps(cfg)
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 3000
    assert {0, 300, 1500, 2700} <= set(steps) and 1 in steps
    assert len(steps) <= 20 + 11 + 1
    assert sum(s < 100 for s in steps) >= 8  # log spacing: dense early
    # no log-spaced step within 10% of an evenly spaced one
    assert all(min(abs(s - t) for t in range(0, 3001, 300)) > 0.1 * s or s % 300 == 0 for s in steps)
    late = checkpoint_steps(TrainConfig(steps=3000, n_log=10, n_linear=0, log_from=50))
    assert late[:2] == [0, 50] and late[-1] == 3000 and len(late) == 11
    assert checkpoint_steps(TrainConfig(steps=5, n_log=0, n_linear=0)) == [0, 5]
    assert checkpoint_steps(TrainConfig(steps=20, n_log=4, n_linear=0, log_from=50)) == [0, 20]  # clamped
    default = checkpoint_steps(TrainConfig())
    assert 25 <= len(default) <= 35 and default[1] == 50  # the demo walks ~30 checkpoints, none in the first drop


def test_train_demo_writes_a_walkable_run(tiny_run):
    cfg, result, seen = tiny_run
    out = result.out_dir
    ckpts, _ = discover(out)
    assert [c.step for c in ckpts] == checkpoint_steps(cfg) == result.checkpoints
    raw = torch.load(out / "step_20.pt", weights_only=True)
    assert set(raw) == {"model", "step"} and raw["step"] == 20

    model, _ = build_model(MODEL_SPEC, out / "model.json")
    assert json.loads((out / "model.json").read_text())["n_ctx"] == 16
    load_into(model, load_state_dict(ckpts[-1]), source="test")

    data = np.load(out / "data.npy")
    assert data.shape == (40, 17) and data.dtype == np.int64 and data.max() < 256
    vocab = np.load(out / "probe_tokens.npy")
    assert vocab.ndim == 1 and 0 not in vocab and ord("e") in vocab

    log = json.loads((out / "train_log.json").read_text())
    steps = [r["step"] for r in log["log"]]
    assert steps == sorted(steps) and 0 in steps and 10 in steps and 20 in steps
    assert log["log"][0]["train_loss"] is None  # nothing trained yet: null, not NaN
    last = log["log"][-1]
    assert all(math.isfinite(last[k]) for k in ("train_loss", "val_loss", "val_loss_plain"))
    assert last["val_loss"] < log["log"][0]["val_loss"]  # it learned something (bytes are far from uniform)
    assert log["config"]["corpus"]["context"] == 16
    assert seen[-1] == (20, 20)


def test_train_demo_is_deterministic_and_restores_global_state(tiny_run, tmp_path):
    cfg, result, _ = tiny_run
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = train_demo(cfg, tmp_path / "again")
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    assert torch.get_num_threads() == threads
    a = torch.load(result.out_dir / "step_20.pt", weights_only=True)["model"]
    b = torch.load(again.out_dir / "step_20.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(np.load(result.out_dir / "data.npy"), np.load(again.out_dir / "data.npy"))


def test_train_config_round_trips_through_its_dict():
    cfg = TrainConfig(d_model=32, corpus=CorpusConfig(context=32, span_max=12))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_model_kwargs_name_the_anchor_options_only_when_set():
    # the default demo's model.json, and the model its results files name, are what they were before the options
    assert TrainConfig().model_kwargs() == dict(vocab_size=256, n_ctx=32, d_model=64, n_heads=4, n_layers=2)
    anchor = TrainConfig(block_ln=True, final_ln=True, positions="shortformer").model_kwargs()
    assert (anchor["block_ln"], anchor["layer_norm"], anchor["positions"]) == (True, True, "shortformer")
