"""A tiny training run to walk, and the command line to walk it: shared by tests/runs/test_walker.py,
tests/runs/test_calibrate.py and tests/test_cli.py; a plain module, not a test file.

make_run(folder) trains a tiny attention-only transformer for 30 steps on learnable token ids and leaves
ckpts/ (4 checkpoints), data.npy and model.json; walk_args builds the `slt-probe walk` command line for it, with
a small SGLD budget (the estimator's accuracy is tested elsewhere); invoke runs a command in-process.
"""

import json
from pathlib import Path

import numpy as np
import torch
from modelfiles import MODELS_DIR, load_model_file
from typer.testing import CliRunner

import slt_probe
from slt_probe.cli import app

MODEL_KW = dict(vocab_size=32, n_ctx=8, d_model=16, n_heads=2)
STEPS = [0, 10, 20, 30]
SGLD = ["--chains", "2", "--draws", "24", "--burnin", "8", "--batch-size", "16", "--lr", "1e-4", "--nbeta", "30",
        "--localization", "100", "--seed", "3", "--method", "loop"]
runner = CliRunner()


def train_checkpoints(folder: Path, tokens: np.ndarray, steps=STEPS, name="step_{}.pt") -> None:
    torch.manual_seed(0)
    model = load_model_file("attn_only").attn_only(**MODEL_KW)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.from_numpy(tokens).long()
    folder.mkdir(parents=True, exist_ok=True)
    for step in range(max(steps) + 1):
        if step in steps:
            torch.save(model.state_dict(), folder / name.format(step))
        loss = slt_probe.engine.data.lm_cross_entropy(model, ids[torch.randint(0, len(ids), (32,))])
        opt.zero_grad()
        loss.backward()
        opt.step()


def make_run(folder: Path) -> Path:
    """A run folder: ckpts/ with 4 checkpoints, data.npy token ids [256, 9], model.json. Returns `folder`."""
    rng = np.random.default_rng(0)
    tokens = (np.arange(256 * 9).reshape(256, 9) * 7 + rng.integers(0, 3, (256, 9))) % 32  # learnable
    np.save(folder / "data.npy", tokens.astype(np.int64))
    (folder / "model.json").write_text(json.dumps(MODEL_KW))
    train_checkpoints(folder / "ckpts", tokens)
    return folder


def walk_args(run: Path, out="results.h5", *extra, quiet=True):
    return ["walk", str(run / "ckpts"), "--out", str(run / out), "--model", f"{MODELS_DIR / 'attn_only.py'}:attn_only",
            "--model-config", str(run / "model.json"), "--data", str(run / "data.npy"), *SGLD,
            *(["--quiet"] if quiet else []), *extra]


def invoke(*args):
    """Run `slt-probe ARGS` in-process: (exit code, stdout and stderr together)."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(output: str) -> str:
    """The command's only line, an error: no traceback, one line starting 'error: '. Returns that line."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    return lines[0]
