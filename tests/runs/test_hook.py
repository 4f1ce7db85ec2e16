"""LLCHook (slt_probe/runs/hook.py) during training: the run is unchanged bit for bit, the file is the walk's,
readable and crash-safe; its schedules; and the framework callbacks built on it (slt_probe/integrations/: the
Hugging Face Trainer's and Lightning's, both installed by the test extras so that these tests run in CI).

Tiny models (an attention-only transformer of 16 dimensions, an MLP with BatchNorm and dropout) and a
tiny SGLD budget: what is tested is the hook's plumbing, not the estimator (tested elsewhere).
"""

import importlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch
from modelfiles import load_model_file
from torch import nn
from typer.testing import CliRunner

import slt_probe
from slt_probe import store
from slt_probe.cli import app
from slt_probe.errors import InputError
from slt_probe.runs.hook import LLCHook, log_schedule, parse_schedule

MODEL_KW = dict(vocab_size=32, n_ctx=8, d_model=16, n_heads=2)
SGLD = slt_probe.SGLDConfig(chains=2, draws=12, burnin=2, batch_size=16, lr=1e-4, nbeta=30.0, localization=100.0,
                            seed=3, method="loop")


def tokens(n=128) -> torch.Tensor:
    """Learnable token ids [n, 9]: each row counts up by 7 (mod 32), with a little noise."""
    g = torch.Generator().manual_seed(0)
    return (torch.arange(n * 9).view(n, 9) * 7 + torch.randint(0, 3, (n, 9), generator=g)) % 32


def attn_only() -> nn.Module:
    torch.manual_seed(0)
    return load_model_file("attn_only").attn_only(**MODEL_KW)


class Net(nn.Module):
    """Everything a hook could disturb: dropout (the RNG), BatchNorm (buffers), train/eval mode."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def mse_drawing_random_numbers(model, batch):
    """A loss that draws from every generator, as a user's augmentation might: only the hook's restore of
    the Python, NumPy and torch generators keeps the training run from seeing these draws."""
    random.random()
    np.random.rand()
    torch.rand(1)
    return mse(model, batch)


def regression(n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return x, x[:, :1] * x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=g)


def train_net(hook=None, steps=24):
    """Minibatches shuffled by torch, noise from NumPy, a scale from `random`; the hook between backward and step."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = regression()
    losses = []
    for step in range(steps):
        idx = torch.randperm(len(x))[:32]
        noise = torch.from_numpy(np.random.normal(0, 0.01, (32, 1))).float()
        loss = mse(model, (x[idx], y[idx] + noise)) * random.uniform(0.9, 1.1)
        opt.zero_grad()
        loss.backward()
        if hook is not None:
            grads = [p.grad.clone() for p in model.parameters()]
            buffers = [b.clone() for b in model.buffers()]
            hook(model, step)
            assert model.training, "the hook changed the model's mode"
            assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters())), "the hook changed .grad"
            assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers())), "the hook changed a buffer"
        opt.step()
        losses.append(loss.detach())
    return model, opt, torch.stack(losses)


def train_lm(model, data, hook=None, steps=20, after_hook=None):
    """The tiny transformer, measured before each update; after_hook(step) runs right after each call."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for step in range(steps + 1):
        if hook is not None:
            hook(model, step)
            if after_hook is not None:
                after_hook(step)
        if step == steps:
            break
        loss = slt_probe.engine.data.lm_cross_entropy(model, data[torch.randint(0, len(data), (32,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


# ----------------------------------------------------------------------------------------------------------
# the training run is unchanged


def test_training_with_the_hook_is_bitwise_identical_to_training_without(tmp_path):
    plain_model, plain_opt, plain_losses = train_net()
    hook = LLCHook(regression(), loss_fn=mse_drawing_random_numbers, config=SGLD, schedule=5, out=tmp_path / "net.h5")
    model, opt, losses = train_net(hook)

    assert torch.equal(losses, plain_losses)
    a, b = model.state_dict(), plain_model.state_dict()  # weights and BatchNorm's running statistics
    assert a.keys() == b.keys() and "bn.running_mean" in a and "bn.num_batches_tracked" in a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    sa, sb = opt.state_dict()["state"], plain_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for name in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][name]), torch.as_tensor(sb[i][name])), (i, name)

    t = slt_probe.load_results(tmp_path / "net.h5").table
    assert list(t.step) == [0, 5, 10, 15, 20] and set(t.status) == {"ok"} and np.isfinite(t.llc_mean).all()


def test_the_estimate_does_not_depend_on_where_the_hook_is_called(tmp_path):
    """Under no_grad, inference_mode or bf16 autocast the hook measures the same numbers, and leaves them on."""
    model, data = attn_only(), tokens()
    plain = LLCHook(data, config=SGLD, schedule=[0], out=tmp_path / "a.h5")(model, 0)
    odd = LLCHook(data, config=SGLD, schedule=[0], out=tmp_path / "b.h5")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        row = odd(model, 0)
        assert not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
    with torch.inference_mode():
        again = LLCHook(data, config=SGLD, schedule=[0], out=tmp_path / "c.h5")(model, 0)
    for r in (row, again):
        assert r["status"] == "ok", r["message"]
        np.testing.assert_array_equal(r["llc_per_chain"], plain["llc_per_chain"])


# ----------------------------------------------------------------------------------------------------------
# the file: the walk's schema, readable at any time, resumable


def test_the_file_is_readable_while_training_writes_it(tmp_path):
    out, runner = tmp_path / "run.h5", CliRunner()
    seen = []

    def read(step):
        if step % 5:
            return
        with h5py.File(out, "r") as f:  # plain h5py, as any reader would
            assert f.attrs["schema"] == store.SCHEMA and f["step"][-1] == step
        res = slt_probe.load_results(out)
        seen.append(len(res.table))
        result = runner.invoke(app, ["inspect", str(out)])
        assert result.exit_code == 0, result.output
        assert f"{len(res.table)} checkpoints" in result.output and str(step) in result.output

    hook = LLCHook(tokens(), config=SGLD, schedule=5, out=out, meta={"run": "tiny"})
    train_lm(attn_only(), tokens(), hook, steps=15, after_hook=read)
    assert seen == [1, 2, 3, 4]

    res = slt_probe.load_results(out)
    a = res.attrs
    assert a["schema"] == store.SCHEMA and a["source"] == "LLCHook" and a["run"] == "tiny"
    assert a["schedule"] == {"every": 5} and a["method"] == "loop" and a["engine"] == "slt"
    assert a["config_resolved"]["nbeta"] == 30 and a["config"]["draws"] == 12 and a["num_samples"] == 128
    assert a["command"] and a["data"]["sha256"] and a["model"]["class"].endswith("AttnOnlyTransformer")
    assert res.arrays["loss_trace"].shape == (4, 2, 12) and res.arrays["burnin_trace"].shape == (4, 2, 2)
    t = res.table
    assert set(t.status) == {"ok"} and (t.path == "").all() and (t.seconds > 0).all()
    assert t.init_loss.iloc[-1] < t.init_loss.iloc[0]  # it measured the weights as they trained


def test_saved_checkpoints_are_the_walkers_and_a_walk_reproduces_the_hook(tmp_path):
    data = tokens()
    hook = LLCHook(data, config=SGLD, schedule=[0, 4, 8], out=tmp_path / "hook.h5", save_checkpoints=tmp_path / "ck")
    train_lm(attn_only(), data, hook, steps=8)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_0.pt", "step_4.pt", "step_8.pt"]
    assert torch.load(tmp_path / "ck" / "step_4.pt", weights_only=True)["step"] == 4

    summary = slt_probe.walk(tmp_path / "ck", tmp_path / "walk.h5", model=attn_only(), data=data, config=SGLD)
    assert summary.computed == 3
    h, w = slt_probe.load_results(tmp_path / "hook.h5"), slt_probe.load_results(tmp_path / "walk.h5")
    assert list(h.table.path) == list(w.table.path) == ["step_0.pt", "step_4.pt", "step_8.pt"]
    assert list(h.table.sha256) == list(w.table.sha256) and set(h.table.format) == {"torch"}
    for name in ("llc_mean", "init_loss", "llc_per_chain", "loss_trace", "burnin_trace"):
        np.testing.assert_array_equal(h.arrays[name], w.arrays[name], err_msg=name)


def test_a_restarted_run_appends_and_a_different_config_is_refused(tmp_path):
    out, data, model = tmp_path / "run.h5", tokens(), attn_only()
    LLCHook(data, config=SGLD, schedule=[0, 10], out=out)(model, 0)
    first = slt_probe.load_results(out).table

    with pytest.raises(InputError) as e:
        LLCHook(data, config=slt_probe.SGLDConfig(**{**SGLD.to_dict(), "lr": 2e-4}), schedule=5, out=out)
    message = str(e.value)
    assert "\n" not in message and "lr" in message and "overwrite=True" in message and str(out) in message
    with pytest.raises(InputError, match="different data"):
        LLCHook((data + 1) % 32, config=SGLD, schedule=5, out=out)
    with pytest.raises(InputError, match="num_params"):  # the model is compared at the first measurement
        LLCHook(data, config=SGLD, schedule=5, out=out)(load_model_file("attn_only").attn_only(
            **{**MODEL_KW, "d_model": 8}), 0)

    hook = LLCHook(data, config=SGLD, schedule=[0, 10], out=out)  # same config: continues the file
    hook(model, 10)
    t = slt_probe.load_results(out).table
    assert list(t.step) == [0, 10] and t.finished.iloc[0] == first.finished.iloc[0]
    hook(model, 0)  # a step measured again replaces its row, with the same numbers (same weights)
    t = slt_probe.load_results(out).table
    assert list(t.step) == [0, 10] and t.llc_mean.iloc[0] == first.llc_mean.iloc[0]
    assert hook(model, 0) is None  # once per step in a process (gradient accumulation calls it again)

    LLCHook(data, config=slt_probe.SGLDConfig(**{**SGLD.to_dict(), "lr": 2e-4}), schedule=[3], out=out,
            overwrite=True)(model, 3)
    assert list(slt_probe.load_results(out).table.step) == [3]


# ----------------------------------------------------------------------------------------------------------
# failures are recorded, never raised into training


def test_a_failing_estimate_is_recorded_and_training_goes_on(tmp_path):
    broken = {"mode": None}

    def flaky(model, batch):
        loss = slt_probe.engine.data.lm_cross_entropy(model, batch)
        if broken["mode"] == "nan":
            return loss * float("nan")
        if broken["mode"] == "raise":
            raise RuntimeError("shape mismatch in the forward pass\nsecond line")
        return loss

    def breaks(step):
        broken["mode"] = {4: "nan", 8: "raise"}.get(step + 1)  # the next measurement fails

    data = tokens()
    plain = train_lm(attn_only(), data, steps=12)

    # two hooks in one loop: a flaky loss, and chains that blow up
    failing = LLCHook(data, loss_fn=flaky, config=SGLD, schedule=4, out=tmp_path / "fail.h5")
    diverging = LLCHook(data, config=slt_probe.SGLDConfig(**{**SGLD.to_dict(), "lr": 1e3}), schedule=[0, 12],
                        out=tmp_path / "div.h5")

    def both(model, step):
        failing(model, step)
        diverging(model, step)

    model = train_lm(attn_only(), data, both, steps=12, after_hook=breaks)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))

    t = slt_probe.load_results(tmp_path / "fail.h5").table.set_index("step")
    assert list(t.index) == [0, 4, 8, 12] and list(t.status) == ["ok", "failed", "failed", "ok"]
    assert "ValueError" in t.message[4] and "not finite" in t.message[4]
    assert t.message[8] == "step 8: RuntimeError: shape mismatch in the forward pass"  # one line
    assert (t.verdict[[4, 8]] == "fail").all() and t.llc_mean[[4, 8]].isna().all()
    d = slt_probe.load_results(tmp_path / "div.h5").table
    assert list(d.step) == [0, 12] and set(d.verdict) == {"fail"} and (d.chains_ok == 0).all()


def test_a_file_that_cannot_be_written_warns_and_the_next_write_catches_up(tmp_path, monkeypatch):
    out, model = tmp_path / "runs" / "run.h5", attn_only()
    hook = LLCHook(tokens(), config=SGLD, schedule=[0, 1], out=out)  # creates runs/
    write = store.results.write  # what ResultsFile.save writes with

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.results, "write", full_disk)
    with pytest.warns(RuntimeWarning, match="could not write"):
        assert hook(model, 0)["status"] == "ok"
    assert not out.exists()
    monkeypatch.setattr(store.results, "write", write)
    hook(model, 1)
    assert list(slt_probe.load_results(out).table.step) == [0, 1]


# ----------------------------------------------------------------------------------------------------------
# kill -9 at random moments


SCRIPT = """
import sys
from pathlib import Path

import torch
from slt_probe import SGLDConfig, load_results
from slt_probe.runs.hook import LLCHook

out, ckpts, last = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
x = torch.randn(256, 8)
y = x[:, :1] * x[:, 1:2]


def mse(m, batch):
    return ((m(batch[0]) - batch[1]) ** 2).mean()


start = 0
if out.exists():  # a restart: from the last measured step, whose checkpoint was saved before its row
    t = load_results(out).table
    if (t.status == "ok").any():
        start = int(t.step[t.status == "ok"].max())
        model.load_state_dict(torch.load(ckpts / f"step_{start}.pt", weights_only=True)["model"])
cfg = SGLDConfig(chains=2, draws=300, burnin=2, batch_size=32, lr=1e-4, nbeta=50.0, method="loop")
hook = LLCHook((x, y), loss_fn=mse, config=cfg, schedule=5, out=out, save_checkpoints=ckpts)
opt = torch.optim.SGD(model.parameters(), lr=0.05)  # no state: a restart continues the same trajectory
for step in range(start, last + 1):
    hook(model, step)
    loss = mse(model, (x, y))
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


FIRST_WRITE_S = 120  # how long a training process may take to write its file: start-up took over 30 s once, loaded


def wait_for_a_write(proc: subprocess.Popen, out, since) -> None:
    """Wait until `out` is written anew (its mtime is no longer `since`) or the process ends, at most FIRST_WRITE_S.

    When there is still no file to read, fail with the process's stderr: it died before writing, or it wrote
    nothing in time (killed first). A file that exists is read whatever happened: that is what is tested.
    """
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < FIRST_WRITE_S:
        if out.exists() and out.stat().st_mtime_ns != since:
            return
        time.sleep(0.01)
    if out.exists():
        return
    if proc.poll() is None:
        proc.kill()
        why = f"wrote no file in {FIRST_WRITE_S} s"
    else:
        why = f"exited with code {proc.returncode} before writing its file"
    _, err = proc.communicate()
    pytest.fail(f"the training process {why}; its stderr:\n{err.decode()}")


def test_kill_9_at_random_moments_leaves_a_readable_file_and_a_rerun_completes(tmp_path):
    script, out, ckpts, last = tmp_path / "train.py", tmp_path / "run.h5", tmp_path / "ck", 60
    script.write_text(textwrap.dedent(SCRIPT))
    command = [sys.executable, str(script), str(out), str(ckpts), str(last)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rng = random.Random(0)
    mid_run, before = 0, None
    for i in range(3):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if i == 0:  # during start-up, before any file
            time.sleep(rng.uniform(0.2, 1.0))
        else:  # while it measures and rewrites: wait for its first write, then a random moment
            wait_for_a_write(proc, out, since=out.stat().st_mtime_ns if out.exists() else None)
            deadline = time.monotonic() + rng.uniform(0, 0.8)
            while time.monotonic() < deadline:  # read it from here while the training process rewrites it
                with h5py.File(out, "r") as f:
                    assert f.attrs["schema"] == store.SCHEMA
                assert len(slt_probe.load_results(out).table) >= 1
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        if out.exists():  # whatever the moment, the file opens and reads
            with h5py.File(out, "r") as f:
                assert f.attrs["schema"] == store.SCHEMA
            before = slt_probe.load_results(out).table
            mid_run += proc.returncode != 0 and 0 < len(before) < last // 5 + 1
    assert mid_run >= 1, "no kill landed while the run was measuring"

    subprocess.run(command, env=env, check=True, capture_output=True)
    t = slt_probe.load_results(out).table.set_index("step")
    assert list(t.index) == list(range(0, last + 1, 5)) and set(t.status) == {"ok"}
    kept = before.set_index("step")
    kept = kept[kept.status == "ok"]
    assert len(kept) >= 1
    # rows from the killed runs are kept; the step the rerun started from is measured again, identically
    assert (t.llc_mean[kept.index] == kept.llc_mean).all()
    assert not list(tmp_path.glob("run.h5.tmp*")) and not list(ckpts.glob("*.tmp*"))


# ----------------------------------------------------------------------------------------------------------
# the analysis commands read the hook's file


def test_transitions_and_plot_read_the_hooks_file(tmp_path):
    from slt_probe.analysis.plot import plot_results
    from slt_probe.runs.detect import transitions_from_results

    out = tmp_path / "run.h5"
    auto = slt_probe.SGLDConfig(**{**SGLD.to_dict(), "method": "auto", "draws": 16})
    hook = LLCHook(tokens(), config=auto, schedule=log_schedule(30, n=7), out=out)
    train_lm(attn_only(), tokens(), hook, steps=30)
    res = slt_probe.load_results(out)
    assert list(res.table.step) == log_schedule(30, n=7) and len(res.table) >= 5
    assert res.attrs["method"] in ("loop", "vmap") and res.attrs["schedule"] == {"steps": log_schedule(30, n=7)}
    t = transitions_from_results(out)  # may find no boundary on so short a run: it must just work
    store.write_transitions(out, t)
    back = store.read_transitions(out)
    assert back.stages == t.stages and back.boundaries == t.boundaries
    png = plot_results(out, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------------
# schedules


def test_schedules():
    every, desc = parse_schedule(10)
    assert desc == {"every": 10} and [s for s in range(35) if every(s)] == [0, 10, 20, 30]
    listed, desc = parse_schedule([30, 0, 7, 7])
    assert desc == {"steps": [0, 7, 30]} and [s for s in range(35) if listed(s)] == [0, 7, 30]
    for bad in (0, -5, [], [-1, 3], True, "often", 2.5j):
        with pytest.raises((ValueError, TypeError)):
            parse_schedule(bad)

    for total, n, first in ((2000, 30, 0), (100_000, 30, 0), (5000, 12, 100), (50, 30, 0), (10, 30, 0), (1, 3, 0)):
        s = log_schedule(total, n=n, first=first)
        assert s == sorted(set(s)) and s[0] == first and s[-1] == total, s
        assert len(s) == min(n, total - first + 1) or n <= len(s) <= n + 2, (total, n, len(s))
    assert log_schedule(10, n=30) == list(range(11))
    s = np.array(log_schedule(100_000, n=30)[1:], dtype=float)
    ratios = s[1:] / s[:-1]
    assert ratios[-1] == pytest.approx(ratios[-5], rel=0.05)  # evenly spaced in log(step) where rounding is moot
    assert log_schedule(0) == [0]


# ----------------------------------------------------------------------------------------------------------
# frameworks


def tiny_gpt2():
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)  # dropout 0.1: the RNG matters
    return transformers.GPT2LMHeadModel(config)


def test_hf_callback_in_the_trainers_event_order_leaves_training_unchanged(tmp_path):
    """The Trainer's own CallbackHandler, driven as Trainer.train drives it (which also needs accelerate)."""
    from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

    from slt_probe.integrations.hf import LLCTrainerCallback

    data = tokens(64)

    def train(callbacks, steps=8):
        model = tiny_gpt2()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        handler = CallbackHandler(callbacks, model, None, opt, None)
        state, control, args = TrainerState(max_steps=steps), TrainerControl(), None
        control = handler.on_train_begin(args, state, control)
        losses = []
        for _ in range(steps):
            control = handler.on_step_begin(args, state, control)
            batch = data[torch.randperm(len(data))[:8]]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            state.global_step += 1
            control = handler.on_step_end(args, state, control)
            losses.append(loss.detach())
        handler.on_train_end(args, state, control)
        return model, torch.stack(losses)

    plain, plain_losses = train([])
    hook = LLCHook(data, config=SGLD, schedule=[0, 1, 4, 8], out=tmp_path / "hf.h5")
    with pytest.raises(TypeError):
        LLCTrainerCallback(hook, schedule=3)
    hooked, losses = train([LLCTrainerCallback(hook)])
    assert torch.equal(losses, plain_losses)
    a, b = hooked.state_dict(), plain.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    t = slt_probe.load_results(tmp_path / "hf.h5").table
    assert list(t.step) == [0, 1, 4, 8] and set(t.status) == {"ok"}


def trainer_run(tmp_path, callbacks, steps=12):
    import transformers
    dataset = [{"input_ids": row, "labels": row} for row in tokens(64)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
        seed=0, report_to=[], use_cpu=True, save_strategy="no", dataloader_num_workers=0, logging_steps=1,
        disable_tqdm=True)
    trainer = transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=dataset, callbacks=callbacks)
    trainer.train()
    return trainer


def test_hf_trainer_with_the_callback_is_bitwise_identical(tmp_path):
    importlib.import_module("accelerate")  # the Trainer needs it; a test extra: missing, this fails rather than skips
    from slt_probe.integrations.hf import LLCTrainerCallback

    plain = trainer_run(tmp_path, [])
    callback = LLCTrainerCallback(tokens(64), config=SGLD, schedule=[0, 1, 4, 12], out=tmp_path / "hf.h5")
    hooked = trainer_run(tmp_path, [callback])

    a, b = hooked.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (hooked, plain)]
    assert losses[0] == losses[1] and len(losses[0]) == 12
    t = slt_probe.load_results(tmp_path / "hf.h5").table
    assert list(t.step) == [0, 1, 4, 12] and set(t.status) == {"ok"}


def test_lightning_callback_leaves_training_unchanged(tmp_path):
    import lightning as L  # a test extra: without it this test fails rather than skips
    from slt_probe.integrations.lightning import LLCCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def training_step(self, batch, batch_idx):
            return mse(self.net, batch)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    def fit(callbacks):
        L.seed_everything(0)
        module = Module()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*regression()), batch_size=32, shuffle=True)
        trainer = L.Trainer(max_steps=8, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=callbacks)
        trainer.fit(module, loader)
        return module

    plain = fit([])
    hooked = fit([LLCCallback(regression(), loss_fn=mse, config=SGLD, schedule=[0, 1, 3, 8], out=tmp_path / "l.h5",
                              model_getter="net")])
    a, b = hooked.state_dict(), plain.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    t = slt_probe.load_results(tmp_path / "l.h5").table
    assert list(t.step) == [0, 1, 3, 8] and set(t.status) == {"ok"}


def test_integrations_say_what_to_install_when_their_framework_is_missing(monkeypatch):
    for name, frameworks, words in (("hf", ["transformers"], "pip install transformers"),
                                    ("lightning", ["lightning", "pytorch_lightning"],
                                     r"pip install 'slt-probe\[lightning\]'")):
        for key in [k for k in sys.modules if k.split(".")[0] in frameworks] + frameworks:
            monkeypatch.setitem(sys.modules, key, None)  # as if not installed, even where it is imported
        monkeypatch.delitem(sys.modules, f"slt_probe.integrations.{name}", raising=False)
        with pytest.raises(ImportError, match=words):
            importlib.import_module(f"slt_probe.integrations.{name}")
