"""The checkpoint walker (slt_probe/runs/walker.py) end to end: the results file it writes, resume, failed
checkpoints, kill -9, Hugging Face folders, the devinterp engine, a model with its own loss, probes, refined λ̂.

A tiny attention-only transformer is trained for a few steps in the test and saved as checkpoints
(tests/helpers/walkrun.py); the walk runs on the CPU with a small SGLD budget (the estimator's accuracy is tested
elsewhere). Most walks are driven through `slt-probe walk`, the way a user runs one; what the command line itself
prints and refuses (option parsing, one-line errors, --dry-run, inspect) is tested in tests/test_cli.py.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from modelfiles import MODELS_DIR, REPO, load_model_file
from walkrun import MODEL_KW, SGLD, STEPS, invoke, make_run, one_line_error, train_checkpoints, walk_args

import slt_probe
from slt_probe import store
from slt_probe.analysis.plot import results_figure
from slt_probe.inputs.heads import components
from slt_probe.inputs.specs import load_callable


@pytest.fixture()
def run(tmp_path):
    """A run folder: ckpts/ with 4 checkpoints, data.npy token ids [256, 9], model.json."""
    return make_run(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# the happy path and the schema


def test_walk_writes_a_self_describing_results_file(run):
    code, out = invoke(*walk_args(run))
    assert code == 0, out
    res = slt_probe.load_results(run / "results.h5")
    t = res.table
    assert list(t.step) == STEPS and set(t.status) == {"ok"}
    assert np.isfinite(t.llc_mean).all() and np.isfinite(t.init_loss).all()
    assert t.init_loss.iloc[-1] < t.init_loss.iloc[0]  # the checkpoints did train
    assert res.arrays["loss_trace"].shape == (4, 2, 24) and res.arrays["burnin_trace"].shape == (4, 2, 8)
    assert res.arrays["llc_per_chain"].shape == (4, 2)
    np.testing.assert_allclose(res.arrays["llc_per_chain"].mean(1), t.llc_mean, rtol=1e-12)
    for path in run.joinpath("ckpts").iterdir():
        row = t[t.path == path.name].iloc[0]
        assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    a = res.attrs
    assert a["schema"] == store.SCHEMA and a["schema_version"] == store.SCHEMA_VERSION
    assert a["config_resolved"]["lr"] == 1e-4 and a["config_resolved"]["nbeta"] == 30 and a["method"] == "loop"
    assert a["data"]["sha256"] == hashlib.sha256((run / "data.npy").read_bytes()).hexdigest()
    assert a["model"]["kwargs"] == MODEL_KW and a["num_samples"] == 256
    assert a["torch_version"] == torch.__version__.split("+")[0] or a["torch_version"] == torch.__version__
    assert a["command"].startswith(f"slt-probe walk {run / 'ckpts'} --out") and "--lr 0.0001" in a["command"]
    assert a["devinterp_version"] == "2.0.1"

    with h5py.File(run / "results.h5", "r") as f:  # every dataset says what it is
        datasets = [name for name in f if isinstance(f[name], h5py.Dataset)]
        for name in datasets:
            assert f[name].attrs["description"], name
        assert set(datasets) == {name for name, _, _ in store.COLUMNS}
        assert set(f) - set(datasets) <= {"transitions"}  # 4 checkpoints: too few, but detection ran and said so
    assert res.transitions is not None and "at least 5" in res.transitions.notes[0]
    schema = (REPO / "docs" / "results-schema.md").read_text()
    for name, _, _ in store.COLUMNS:  # and the docs document every one
        assert f"`{name}`" in schema, f"docs/results-schema.md does not document dataset {name}"


def test_python_api_walks_a_folder(run):
    model = load_model_file("attn_only").attn_only(**MODEL_KW)
    data = torch.from_numpy(np.load(run / "data.npy"))
    cfg = slt_probe.SGLDConfig(chains=2, draws=10, burnin=2, batch_size=16, nbeta=30.0, method="loop")
    summary = slt_probe.walk(run / "ckpts", run / "api.h5", model=model, data=data, config=cfg)
    assert summary.computed == 4 and not summary.failed
    assert list(slt_probe.load_results(run / "api.h5").table.step) == STEPS


# ----------------------------------------------------------------------------------------------------------
# resume


def test_resume_skips_done_checkpoints_and_reproduces_a_fresh_run(run):
    assert invoke(*walk_args(run, "results.h5", "--steps", "0,20"))[0] == 0
    code, out = invoke(*walk_args(run, quiet=False))
    assert code == 0, out
    assert "2 estimated, 2 already done" in out
    assert "step       10  loss" in out and "(already done)" in out  # one log line per checkpoint
    assert invoke(*walk_args(run, "fresh.h5"))[0] == 0
    a, b = slt_probe.load_results(run / "results.h5"), slt_probe.load_results(run / "fresh.h5")
    for name in ("llc_mean", "init_loss", "llc_per_chain", "loss_trace"):
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)


def test_resume_recomputes_a_changed_checkpoint(run):
    assert invoke(*walk_args(run))[0] == 0
    sd = torch.load(run / "ckpts" / "step_10.pt", weights_only=True)
    sd["embed.weight"] += 0.01
    torch.save(sd, run / "ckpts" / "step_10.pt")
    code, out = invoke(*walk_args(run, quiet=False))
    assert code == 0 and "1 estimated, 3 already done" in out, out


def test_a_different_config_is_refused_and_overwrite_starts_again(run):
    assert invoke(*walk_args(run))[0] == 0
    code, out = invoke(*walk_args(run, "results.h5", "--lr", "2e-4"))
    assert code == 2
    line = one_line_error(out)
    assert "results.h5" in line and "lr" in line and "--overwrite" in line and "--out" in line
    code, out = invoke(*walk_args(run, "results.h5", "--lr", "2e-4", "--overwrite"))
    assert code == 0, out
    assert slt_probe.load_results(run / "results.h5").attrs["config_resolved"]["lr"] == 2e-4


def test_rows_that_drew_other_noise_are_not_continued_and_the_chain_group_is_free(run):
    assert invoke(*walk_args(run, "results.h5", "--steps", "0,10"))[0] == 0
    # --chain-group changes the memory, not the numbers: the walk continues
    code, out = invoke(*walk_args(run, "results.h5", "--chain-group", "1", quiet=False))
    assert code == 0 and "2 estimated, 2 already done" in out, out
    with h5py.File(run / "results.h5", "a") as f:  # a file from before each chain drew its own noise stream
        assert "SeedSequence" in f.attrs["noise"]
        del f.attrs["noise"]
    code, out = invoke(*walk_args(run, "results.h5"))
    assert code == 2
    line = one_line_error(out)
    assert "results.h5" in line and "drew their noise another way" in line and "--overwrite" in line


# ----------------------------------------------------------------------------------------------------------
# bad checkpoints: recorded as failed, the walk goes on, exit 1


class Pwn:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_bad_checkpoints_are_recorded_and_the_walk_goes_on(run):
    ck = run / "ckpts"
    good = torch.load(ck / "step_10.pt", weights_only=True)
    blob = (ck / "step_10.pt").read_bytes()
    (ck / "step_40.pt").write_bytes(blob[: len(blob) // 2])  # truncated
    torch.save({k: v.clone().fill_(float("nan")) if k == "embed.weight" else v for k, v in good.items()}, ck / "step_50.pt")
    torch.save({k: v[:5] if k == "embed.weight" else v for k, v in good.items()}, ck / "step_60.pt")  # wrong shape
    torch.save({"foo.weight": torch.zeros(3)}, ck / "step_70.pt")  # wrong keys
    marker = run / "pwned"
    torch.save({"model": good, "evil": Pwn(marker)}, ck / "step_80.pt")  # a pickle that would run code
    code, out = invoke(*walk_args(run, quiet=False))
    assert code == 1, out
    assert "5 of 9 checkpoints failed" in out
    assert not marker.exists(), "the malicious pickle was executed"
    t = slt_probe.load_results(run / "results.h5").table.set_index("step")
    assert list(t.index) == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert (t.loc[STEPS, "status"] == "ok").all() and (t.loc[[40, 50, 60, 70, 80], "status"] == "failed").all()
    for step, words in {40: "step_40.pt", 50: "non-finite", 60: "shape", 70: "missing", 80: "refused"}.items():
        assert words in t.loc[step, "message"], (step, t.loc[step, "message"])
        assert "\n" not in t.loc[step, "message"]
        assert np.isnan(t.loc[step, "llc_mean"])


# ----------------------------------------------------------------------------------------------------------
# kill -9 at random moments


def test_kill_9_at_random_moments_leaves_a_readable_file_and_a_rerun_completes(run):
    steps = list(range(0, 120, 10))
    tokens = np.load(run / "data.npy")
    train_checkpoints(run / "many", tokens, steps=steps)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(out, quiet=True):
        args = walk_args(run, out, quiet=quiet)
        args[1] = run / "many"
        return [sys.executable, "-m", "slt_probe.cli", *map(str, args), "--draws", "150"]

    # The uninterrupted reference run also times the start-up and the work per checkpoint.
    start = time.perf_counter()
    proc = subprocess.Popen(command("reference.h5", quiet=False), env=env, stderr=subprocess.PIPE, text=True)
    stamps = [time.perf_counter() - start for line in proc.stderr if line.startswith("step")]
    assert proc.wait() == 0 and len(stamps) == len(steps)
    per = (stamps[-1] - stamps[0]) / (len(steps) - 1)
    startup = stamps[0] - per

    rng = random.Random(0)
    mid_walk, done = 0, 0
    for _ in range(8):  # kill anywhere: mostly inside a checkpoint's work (sampling, rewrites), some in start-up
        proc = subprocess.Popen(command("killed.h5", quiet=False), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        left = len(steps) - done
        if rng.random() < 0.25 or left < 3:
            time.sleep(rng.uniform(0, startup))
        else:  # wait for k checkpoints to be written (each line follows its save), then kill within the next
            k, computed = rng.randint(1, left - 2), 0
            for line in proc.stderr:
                computed += line.startswith("step") and "already done" not in line
                if computed == k:
                    break
            time.sleep(rng.uniform(0, 0.9 * per))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        if (run / "killed.h5").exists():  # whatever the moment, the file opens and reads
            with h5py.File(run / "killed.h5", "r") as f:
                assert f.attrs["schema"] == store.SCHEMA
            new = len(slt_probe.load_results(run / "killed.h5").table)
            mid_walk += done < new < len(steps)
            done = new
    assert mid_walk >= 2, f"only {mid_walk} kills landed between checkpoints"
    subprocess.run(command("killed.h5"), check=True, env=env, capture_output=True)
    a, b = slt_probe.load_results(run / "killed.h5"), slt_probe.load_results(run / "reference.h5")
    assert list(a.table.step) == steps and set(a.table.status) == {"ok"}
    for name in ("llc_mean", "llc_std", "init_loss", "llc_per_chain", "loss_trace", "burnin_trace", "rhat"):
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
    assert not list(run.glob("killed.h5.tmp*"))  # a killed writer's temporary is removed by the next run


# ----------------------------------------------------------------------------------------------------------
# Hugging Face folders, the devinterp engine, a model with its own loss, probes


def test_a_hugging_face_run_needs_no_model_spec(tmp_path):
    import transformers
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    for step in (100, 200):
        model.save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
        with torch.no_grad():
            model.transformer.wte.weight.mul_(1.5)
    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 32, (128, 9)))
    code, out = invoke("walk", tmp_path / "run", "--out", tmp_path / "hf.h5", "--data", tmp_path / "tokens.npy",
                       *SGLD, "--quiet")
    assert code == 0, out
    res = slt_probe.load_results(tmp_path / "hf.h5")
    assert list(res.table.step) == [100, 200] and set(res.table.format) == {"hf"} and set(res.table.status) == {"ok"}
    assert res.attrs["model"]["model_type"] == "gpt2"


HF_CONFIGS = {  # tiny configurations of the families users bring; save_pretrained writes each as transformers 5 does
    "gpt_neox": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=32,
                     max_position_embeddings=16, tie_word_embeddings=False),  # Pythia: saved as embed_out, loaded as lm_head
    "llama": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,  # grouped-query
                  intermediate_size=32, vocab_size=32, max_position_embeddings=16),
}


@pytest.mark.parametrize("model_type", list(HF_CONFIGS))
def test_gpt_neox_and_llama_runs_walk_through_the_librarys_own_key_names(tmp_path, model_type):
    import transformers
    config = transformers.AutoConfig.for_model(model_type, **HF_CONFIGS[model_type])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    for step in (100, 200):
        model.save_pretrained(tmp_path / "run" / f"step{step}")
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(1.5)
    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 32, (128, 9)))
    code, out = invoke("walk", tmp_path / "run", "--out", tmp_path / "hf.h5", "--data", tmp_path / "tokens.npy",
                       *SGLD, "--quiet", "--refine", "heads")
    assert code == 0, out
    res = slt_probe.load_results(tmp_path / "hf.h5")
    assert list(res.table.step) == [100, 200] and set(res.table.status) == {"ok"}, res.table.message
    assert res.attrs["model"]["model_type"] == model_type
    # one component per head from the library's own modules, estimated at every checkpoint
    refined = store.Refined.read(tmp_path / "hf.h5")
    heads = config.num_attention_heads
    assert list(refined.params) == [f"L{layer}H{h}" for layer in range(config.num_hidden_layers) for h in range(heads)]
    assert np.isfinite(refined.heads([100, 200])["llc_mean"]).all()


NANOGPT = '''"""nanoGPT's model.py in miniature: GPT(GPTConfig), (logits, loss) from forward, the last position only
without targets, targets viewed with .view(-1)."""
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 32
    n_embd: int = 16


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size, f"Cannot forward sequence of length {t}"
        x = torch.tanh(self.wte(idx) + self.wpe(torch.arange(t)))
        if targets is not None:
            logits = self.lm_head(x)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return self.lm_head(x[:, [-1], :]), None
'''


def test_a_nanogpt_run_builds_its_model_from_model_args_and_a_last_position_model_is_one_error(tmp_path):
    (tmp_path / "model.py").write_text(NANOGPT)
    GPT, GPTConfig = (load_callable(f"{tmp_path / 'model.py'}:{name}", what="model") for name in ("GPT", "GPTConfig"))
    args = dict(block_size=8, vocab_size=32, n_embd=12)  # not GPTConfig's defaults: they must come from the file
    torch.manual_seed(0)
    model = GPT(GPTConfig(**args))
    (tmp_path / "out").mkdir()
    for name, iter_num in (("ckpt_1000.pt", 1000), ("ckpt.pt", 2000)):  # ckpt.pt: the step from iter_num
        state = {f"_orig_mod.{k}": v.clone() for k, v in model.state_dict().items()}  # torch.compile's prefix
        torch.save({"model": state, "model_args": args, "iter_num": iter_num, "best_val_loss": torch.tensor(2.0),
                    "config": {"batch_size": 12, "dataset": "shakespeare_char"}}, tmp_path / "out" / name)
        with torch.no_grad():
            model.lm_head.weight.mul_(1.5)
    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 32, (128, 9)))
    common = ("walk", tmp_path / "out", "--model", f"{tmp_path / 'model.py'}:GPT", "--data", tmp_path / "tokens.npy",
              *SGLD, "--quiet")
    code, out = invoke(*common, "--out", tmp_path / "default.h5")
    assert code != 0 and one_line_error(out) == (
        f"error: {tmp_path / 'model.py'}:GPT: the default next-token loss needs logits [B, T, vocab] for tokens [2, 8], "
        "the model returned a tensor of shape [2, 1, 32] (nanoGPT's GPT returns the last position only unless given "
        "targets); pass --loss targets (the model's own loss) or --loss file.py:fn"), out
    assert not (tmp_path / "default.h5").exists()
    code, out = invoke(*common, "--loss", "targets", "--out", tmp_path / "own.h5")  # model(x, targets=y)[1]
    assert code == 0, out
    res = slt_probe.load_results(tmp_path / "own.h5")
    assert list(res.table.step) == [1000, 2000] and set(res.table.status) == {"ok"}, res.table.message
    assert res.attrs["model"]["kwargs"] == args


def test_a_hub_cache_walks_in_the_order_of_its_refs(tmp_path):
    # snapshot_download's layout: snapshots/<commit>/ with links into blobs/, refs/<revision> naming the commit.
    # The commits end in 99, 45, 07 for steps 1000, 2000, 3000: the steps must come from the refs.
    import transformers
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    repo = tmp_path / "hub" / "models--org--tiny-gpt2"
    commits = {1000: "a9c1e" * 7 + "0ff99", 2000: "b3d2f" * 7 + "1ee45", 3000: "c4e3a" * 7 + "2dd07"}
    for step, commit in commits.items():
        saved = tmp_path / "saved" / str(step)
        model.save_pretrained(saved)
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "blobs").mkdir(exist_ok=True)
        for f in saved.iterdir():  # blobs are named by content hash; any unique name will do here
            blob = repo / "blobs" / f"{step}-{f.name}"
            f.rename(blob)
            (repo / "snapshots" / commit / f.name).symlink_to(os.path.relpath(blob, repo / "snapshots" / commit))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / f"step{step}").write_text(commit)
        with torch.no_grad():
            model.transformer.wte.weight.mul_(1.5)
    (repo / "refs" / "main").write_text(commits[3000])
    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 32, (128, 9)))
    code, out = invoke("walk", repo, "--out", tmp_path / "hub.h5", "--data", tmp_path / "tokens.npy", *SGLD, "--quiet")
    assert code == 0, out
    res = slt_probe.load_results(tmp_path / "hub.h5")
    assert list(res.table.step) == [1000, 2000, 3000] and set(res.table.status) == {"ok"}
    assert [Path(p).name for p in res.table.path] == list(commits.values())
    assert res.attrs["model"]["model_type"] == "gpt2"


def test_the_devinterp_engine_walks_the_same_data(run):
    # rows of 9 tokens for a model with n_ctx 8: devinterp is handed our loss, which feeds the first 8
    code, out = invoke(*walk_args(run, "d.h5", "--engine", "devinterp", "--steps", "0,30"))
    assert code == 0, out
    res = slt_probe.load_results(run / "d.h5")
    assert res.attrs["engine"] == "devinterp" and res.attrs["method"] == "devinterp"
    assert set(res.table.status) == {"ok"} and np.isfinite(res.table.llc_mean).all()
    # the same init_loss as our engine: the same loss on the same data (the minibatch sequences differ)
    code, out = invoke(*walk_args(run, "s.h5", "--steps", "0,30"))
    assert code == 0, out
    ours = slt_probe.load_results(run / "s.h5")
    np.testing.assert_allclose(res.table.init_loss, ours.table.init_loss, rtol=0.05)


def test_a_non_language_model_walks_with_its_own_loss(tmp_path):
    dln = load_model_file("dln")
    torch.manual_seed(0)
    net = dln.dln([4, 3, 2])
    x = torch.randn(512, 4)
    np.savez(tmp_path / "xy.npz", x=x.numpy(), y=(x @ torch.randn(4, 2)).numpy())
    (tmp_path / "loss.py").write_text("def mse(model, batch):\n    x, y = batch\n    return ((model(x) - y) ** 2).mean()\n")
    (tmp_path / "ckpts").mkdir()
    for step in (1, 2):
        torch.save({"model": net.state_dict(), "step": step}, tmp_path / "ckpts" / f"model_{step}.pth")
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1.1)
    (tmp_path / "dln.json").write_text(json.dumps({"widths": [4, 3, 2]}))
    code, out = invoke("walk", tmp_path / "ckpts", "--out", tmp_path / "dln.h5", "--model",
                       f"{MODELS_DIR / 'dln.py'}:dln", "--model-config", tmp_path / "dln.json", "--data",
                       tmp_path / "xy.npz", "--loss", f"{tmp_path / 'loss.py'}:mse", *SGLD, "--quiet")
    assert code == 0, out
    res = slt_probe.load_results(tmp_path / "dln.h5")
    assert list(res.table.step) == [1, 2] and set(res.table.status) == {"ok"}
    assert res.attrs["loss"].endswith("loss.py:mse") and res.attrs["data"]["format"] == "npz"
    # the analysis script reads it with h5py, pandas and xarray
    script = subprocess.run([sys.executable, str(REPO / "analysis" / "read_results.py"), str(tmp_path / "dln.h5")],
                            capture_output=True, text=True)
    assert script.returncode == 0, script.stderr
    assert "largest change in λ̂: step 1 → 2" in script.stdout


class CountingProbe:
    """A stand-in behavioural probe: the mean embedding weight, and a per-head array."""

    info = {"embed_mean": ("mean embedding weight", "test probe"), "per_head": ("per head", "[layers, heads]")}

    def __call__(self, model):
        return {"embed_mean": float(model.embed.weight.mean()), "per_head": np.ones((2, 2)) * float(model.embed.weight.std())}


def test_probes_are_stored_by_step_and_survive_a_resume(run):
    model = load_model_file("attn_only").attn_only(**MODEL_KW)
    data = torch.from_numpy(np.load(run / "data.npy"))
    cfg = slt_probe.SGLDConfig(chains=2, draws=10, burnin=2, batch_size=16, nbeta=30.0, method="loop")
    ckpts = slt_probe.inputs.checkpoints.discover(run / "ckpts")[0]
    slt_probe.walk(ckpts[:2], run / "p.h5", model=model, data=data, config=cfg)  # no probes yet
    summary = slt_probe.walk(ckpts, run / "p.h5", model=model, data=data, config=cfg, probes=CountingProbe())
    assert (summary.computed, summary.skipped) == (2, 2)
    probes = store.Probes.read(run / "p.h5")
    assert sorted(probes.values) == STEPS  # the two done before got their probes without a new estimate
    for step in STEPS:
        sd = torch.load(run / "ckpts" / f"step_{step}.pt", weights_only=True)
        assert probes.values[step]["embed_mean"] == pytest.approx(float(sd["embed.weight"].mean()))
        assert probes.values[step]["per_head"].shape == (2, 2)
    with h5py.File(run / "p.h5", "r") as f:
        assert f["probes/embed_mean"].attrs["label"] == "mean embedding weight"
        assert f["probes/heads/per_head"].shape == (4, 2, 2)


# ----------------------------------------------------------------------------------------------------------
# refined λ̂ (Wang et al. 2024): a component's parameters sampled, the rest held at w*


def test_a_walk_stores_the_refined_llc_of_each_component_and_its_transitions(run):
    code, out = invoke(*walk_args(run, "r.h5", "--refine", r"layer0=^blocks\.0\.", "--refine", r"layer1=^blocks\.1\.",
                                  quiet=False))
    assert code == 0, out
    assert "refined λ̂ of layer0" in out
    refined = store.Refined.read(run / "r.h5")
    assert refined.params == {"layer0": r"^blocks\.0\.", "layer1": r"^blocks\.1\."}
    assert refined.num_params == {"layer0": 4 * 16 * 16, "layer1": 4 * 16 * 16}  # qkv 16x48 + out 16x16 per layer
    res = slt_probe.load_results(run / "r.h5")
    for name in ("layer0", "layer1"):
        values = refined.values[name]
        assert sorted(values) == STEPS
        llc = np.array([values[s]["llc_mean"] for s in STEPS])
        assert np.isfinite(llc).all() and np.all(np.array([values[s]["llc_per_chain"].shape for s in STEPS]) == [2])
        # a part of the model is sampled: its λ̂ is below the whole model's over the trained checkpoints (summed: at
        # 2 chains × 24 draws one checkpoint's λ̂ of ~0.1 has an s.e. of ~0.1, so single checkpoints may cross)
        assert llc[1:].sum() < res.table.llc_mean.to_numpy()[1:].sum(), (name, llc, res.table.llc_mean)
        assert store.read_transitions(run / "r.h5", refined=name) is not None
    with h5py.File(run / "r.h5") as f:
        assert "description" in f["refined"].attrs and f["refined/layer0"].attrs["params"] == r"^blocks\.0\."
        for ds in f["refined/layer1"].values():
            if isinstance(ds, h5py.Dataset):
                assert ds.attrs["description"]

    # a rerun skips everything; a new component is added to the finished rows, the others are kept
    code, out = invoke(*walk_args(run, "r.h5", "--refine", r"layer0=^blocks\.0\.", "--refine", "embed=^embed\\."))
    assert code == 0, out
    refined2 = store.Refined.read(run / "r.h5")
    assert sorted(refined2.values["embed"]) == STEPS and set(refined2.params) == {"layer0", "layer1", "embed"}
    assert refined2.values["layer0"][20]["llc_mean"] == refined.values["layer0"][20]["llc_mean"]


def test_refine_heads_stores_one_component_per_head_and_draws_them(run, tmp_path):
    code, out = invoke(*walk_args(run, "h.h5", "--refine", "heads", "--refine", r"emb=^embed\.", quiet=False))
    assert code == 0, out
    # the heads' stages and spurts in one table, the other component as before
    assert "refined λ̂ of each head: stages and spurts" in out and "refined λ̂ of L0H0" not in out
    assert "refined λ̂ of emb" in out
    refined = store.Refined.read(run / "h.h5")
    names = ["L0H0", "L0H1", "L1H0", "L1H1"]
    assert list(refined.params) == [*names, "emb"]
    assert refined.params["L1H0"] == "head 0 of layer 1 (blocks.1)"
    assert refined.where["L1H0"] == {"layer": 1, "head": 0} and refined.where["emb"] == {"layer": None, "head": None}
    # d_model 16, 2 heads of 8: 3 × 8 rows of qkv [48, 16] and 8 columns of out [16, 16]
    assert all(refined.num_params[n] == 3 * 8 * 16 + 16 * 8 for n in names)
    heads = refined.heads(STEPS)
    assert heads["llc_mean"].shape == (len(STEPS), 2, 2) and np.isfinite(heads["llc_mean"]).all()
    # the walk's numbers are each head's own run's (estimate_llc at its coordinates), bit for bit
    model = load_model_file("attn_only").attn_only(**json.loads((run / "model.json").read_text()))
    model.load_state_dict(torch.load(run / "ckpts" / "step_20.pt", weights_only=True))
    cfg = slt_probe.load_results(run / "h.h5").config
    layer1 = components(model, "heads")[3]
    alone = slt_probe.estimate_llc(model, torch.as_tensor(np.load(run / "data.npy")),
                                   config=slt_probe.SGLDConfig(**{**cfg, "params": layer1.params}))  # the walk's loop
    assert refined.values["L1H1"][20]["llc_mean"] == alone.llc_mean
    for name in names:
        assert store.read_transitions(run / "h.h5", refined=name) is not None
    with h5py.File(run / "h.h5") as f:
        sub = f["refined/L0H1"]
        assert (sub.attrs["layer"], sub.attrs["head"], sub.attrs["num_params"]) == (0, 1, 512)
        assert f["refined/emb"].attrs["head"] == -1
        assert "--refine heads --refine 'emb=^embed\\.'" in f.attrs["command"]
    # the heatmap: one row per head, below the λ̂ and loss panels, the other component in its own panel
    fig = results_figure(run / "h.h5")
    by_label = {a.get_ylabel(): a for a in fig.axes}
    assert list(by_label)[:4] == [r"$\hat{\lambda}$ (LLC)", "loss $L_n(w^*)$", "refined λ̂", "heads"]
    mesh = by_label["heads"].collections[0]
    assert mesh.get_array().shape == (4, len(STEPS))
    assert [t.get_text() for t in by_label["heads"].get_yticklabels()] == names
